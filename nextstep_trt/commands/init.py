"""init-tiny: write a random-weight model folder in the official checkpoint layout."""
from __future__ import annotations

HELP = {"init-tiny": "write a random-weight model folder (official layout); --preset tiny | bench"}


def add_arguments(name: str, p) -> None:
    p.add_argument("out_dir", help="folder to create (replaced atomically if it exists)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="tiny", choices=["tiny", "bench"])


def run(args) -> int:
    from nextstep_ref.checkpoint import init_random, save_model_folder
    from nextstep_ref.config import preset

    cfg = preset(args.preset)
    model, vae = init_random(cfg, args.seed)
    shard = 2**17 if args.preset == "tiny" else 2**28  # several shards even for tiny, like the real checkpoint
    save_model_folder(args.out_dir, cfg, model, vae, max_shard_bytes=shard)
    print(f"wrote a random-weight {args.preset} model (seed {args.seed}) to {args.out_dir}")
    return 0
