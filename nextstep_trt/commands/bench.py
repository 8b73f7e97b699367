"""bench: where the time goes per stage and backend, against the reference and the machine's memory bandwidth."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"bench": "time every stage on torch / torch.compile / onnxruntime / tensorrt: ratios, roofline, memory, "
                 "parity",
        "floor": "the memory-bandwidth floor (weights / bandwidth) of a model's decode and sampler steps on GPUs"}


def add_arguments(name: str, p) -> None:
    if name == "floor":
        return _floor_arguments(p)
    p.add_argument("--model", required=True, help="model folder (e.g. from `init-tiny --preset bench`)")
    p.add_argument("--artifacts", help="exported artifacts folder (onnxruntime and tensorrt backends)")
    p.add_argument("--backends", default="torch,torch-compile,onnxruntime",
                   help="comma-separated subset of torch,torch-compile,onnxruntime,tensorrt (torch always runs: "
                        "it is the parity and ratio reference)")
    p.add_argument("--precision", default="fp32", help="graph precision of onnxruntime / tensorrt")
    p.add_argument("--batch", default="1,4", help="comma-separated images per request")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--steps", type=int, default=50, help="sampler steps (the fused graph runs when it matches)")
    p.add_argument("--cfg", type=float, default=7.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", help="the prompt every backend runs (default: a fixed caption)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per backend and batch, after one warm-up")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for torch and every ONNX Runtime graph (0: defaults, per graph for ORT)")
    p.add_argument("--json", help="write every figure and the machine description as JSON")
    p.add_argument("--profile", help="folder for ONNX Runtime per-op profiles and a torch profiler trace")
    p.add_argument("--profile-tokens", type=int, default=8, help="image tokens per profiled run")
    p.add_argument("--bandwidth-mib", type=int, default=512, help="size of the bandwidth copy (>= 512 recommended)")


def _floor_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="large", help="config preset (large, bench, tiny)")
    src.add_argument("--model", help="model folder: its config.json instead of a preset")
    p.add_argument("--bandwidth", help="comma-separated NAME=GB/s (default: data-sheet peaks of H100, A100, "
                                       "RTX 4090, L40S)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--batch", default="1,4")
    p.add_argument("--dtype", default="bf16", choices=["fp32", "fp16", "bf16", "fp8"], help="weight dtype")


def _devices(text: str | None) -> dict[str, float]:
    from nextstep_trt.bench.roofline import DATASHEET_GBPS

    if not text:
        return dict(DATASHEET_GBPS)
    out = {}
    for item in text.split(","):
        name, _, value = item.rpartition("=")
        try:
            gbps = float(value)
        except ValueError:
            gbps = 0.0
        if gbps <= 0:
            raise UserError(f"--bandwidth takes NAME=GB/s items with positive numbers, got {item!r}")
        out[name.strip() or f"{gbps:g} GB/s"] = gbps
    return out


def run_floor(args) -> int:
    from nextstep_trt.bench.floor import FloorOptions, floor_table
    from nextstep_trt.ref.config import load_config, preset

    cfg = load_config(args.model) if args.model else preset(args.preset)
    if min(args.height, args.width, args.steps, args.prompt_tokens) < 1:
        raise UserError("--height, --width, --steps and --prompt-tokens must be >= 1")
    opts = FloorOptions(_devices(args.bandwidth), args.height, args.width, args.steps, args.prompt_tokens,
                        _ints(args.batch, "--batch"), args.dtype)
    print(floor_table(cfg, opts))
    return 0


def _ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise UserError(f"{flag} takes comma-separated positive integers, got {text!r}")
    return values


def options_from_args(args):
    """BenchOptions from parsed flags."""
    from nextstep_trt.bench.run import PROMPT, BenchOptions

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends:
        raise UserError("--backends is empty")
    if args.bandwidth_mib < 1 or args.profile_tokens < 1:
        raise UserError("--bandwidth-mib and --profile-tokens must be >= 1")
    return BenchOptions(model=Path(args.model), artifacts=Path(args.artifacts) if args.artifacts else None,
                        backends=backends, precision=args.precision, batches=_ints(args.batch, "--batch"),
                        height=args.height, width=args.width, steps=args.steps, cfg=args.cfg, seed=args.seed,
                        repeat=args.repeat, threads=args.threads,
                        profile_dir=Path(args.profile) if args.profile else None, profile_tokens=args.profile_tokens,
                        bandwidth_mib=args.bandwidth_mib, prompt=args.prompt or PROMPT)


def run(args) -> int:
    if args.command == "floor":
        return run_floor(args)
    from nextstep_trt.bench.run import backend_order
    from nextstep_trt.bench.session import run_bench
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.core.precision import Precision

    opts = options_from_args(args)
    Precision.parse(opts.precision)
    backend_order(opts.backends)            # unknown names fail before anything is loaded
    if opts.threads < 0:
        raise UserError(f"--threads must be >= 0, got {opts.threads}")
    report = run_bench(opts)
    print()
    print(report.table())
    if args.json:
        write_json(args.json, report.to_json())
        print(f"wrote {args.json}")
    return 0
