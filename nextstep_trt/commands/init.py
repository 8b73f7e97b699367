"""init-tiny / init-model: write a random-weight model folder in the official checkpoint layout."""
from __future__ import annotations

HELP = {"init-tiny": "write a random-weight model folder (official layout); --preset tiny | bench",
        "init-model": "write a random-weight model of any preset (large included), streamed tensor by tensor"}


def add_arguments(name: str, p) -> None:
    p.add_argument("out_dir", help="folder to create (replaced atomically if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    if name == "init-model":
        p.add_argument("--preset", default="large", choices=["large", "bench", "tiny"], help="architecture preset")
        p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="storage dtype of the weights")
        p.add_argument("--shard-gb", type=float, default=5.0, help="safetensors shard size in GB")
    else:
        p.add_argument("--preset", default="tiny", choices=["tiny", "bench"], help="architecture preset")


def run(args) -> int:
    from nextstep_trt.ref.config import preset

    cfg = preset(args.preset)
    if args.command == "init-model":
        from nextstep_trt.ref.streaming import init_model_folder

        init_model_folder(args.out_dir, cfg, args.dtype, args.seed, max_shard_bytes=int(args.shard_gb * 1e9))
        print(f"wrote a random-weight {args.preset} model ({args.dtype}, seed {args.seed}) to {args.out_dir}")
        return 0
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder

    model, vae = init_random(cfg, args.seed)
    shard = 2**17 if args.preset == "tiny" else 2**28  # several shards even for tiny, like the real checkpoint
    save_model_folder(args.out_dir, cfg, model, vae, max_shard_bytes=shard)
    print(f"wrote a random-weight {args.preset} model (seed {args.seed}) to {args.out_dir}")
    return 0
