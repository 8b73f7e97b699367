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
    p.add_argument("--precision", default="fp32",
                   help="comma-separated graph precisions of onnxruntime / tensorrt, run in one process; ratios are "
                        "against the first (e.g. fp32,int8,int4; default fp32)")
    p.add_argument("--batch", default="1,4", help="comma-separated images per request")
    p.add_argument("--height", type=int, default=256, help="image height in pixels (inside the exported profile)")
    p.add_argument("--width", type=int, default=256, help="image width in pixels (inside the exported profile)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (the fused graph runs when it matches)")
    p.add_argument("--cfg", type=float, default=7.5, help="text guidance scale (> 1: two CFG rows per image)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise every backend shares")
    p.add_argument("--prompt", help="the prompt every backend runs (default: a fixed caption)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per backend and batch, after one warm-up")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads for torch and every ONNX Runtime graph (0: defaults, per graph for ORT)")
    p.add_argument("--json", help="write every figure and the machine description as JSON")
    p.add_argument("--profile", help="folder for ONNX Runtime per-op profiles and a torch profiler trace")
    p.add_argument("--profile-tokens", type=int, default=8, help="image tokens per profiled run")
    p.add_argument("--bandwidth-mib", type=int, default=512, help="size of the bandwidth copy (>= 512 recommended)")
    p.add_argument("--decode-past", default="300,1000",
                   help="cache lengths of the decode-step micro-benchmark at batch 2 (our graph per precision and "
                        "the peer's, interleaved; 'none' skips it)")
    p.add_argument("--decode-rounds", type=int, default=5, help="interleaved rounds of that benchmark")
    p.add_argument("--decode-steps", type=int, default=6, help="timed steps per graph per round")
    p.add_argument("--peer", choices=["auto", "on", "off"], default="auto",
                   help="onnxruntime-genai's fp32/int4 builds of our backbone in the decode-step benchmark (built "
                        "once, cached under ARTIFACTS/peer/); auto: when onnxruntime-genai is installed")
    p.add_argument("--peer-accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="the peer's MatMulNBits accuracy level (4: int8 activations) (default: our graph's of the "
                        "same precision, else 4)")
    p.add_argument("--peer-block-size", type=int, default=None, choices=[16, 32, 64, 128, 256],
                   help="the peer's quantization block (weights per scale along the input dimension) (default: our "
                        "graph's of the same precision, else 32)")
    p.add_argument("--max-spread", type=float, default=1.25,
                   help="a cell whose timed repeats spread more than this (max/min) is run again")
    p.add_argument("--reruns", type=int, default=2, help="re-runs of a cell with a wide spread")


def _floor_arguments(p) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="large", help="config preset (large, bench, tiny; default large)")
    src.add_argument("--model", help="model folder: its config.json instead of a preset")
    p.add_argument("--bandwidth", help="comma-separated NAME=GB/s or NAME=GB/s@MEMORY_GB, memory as the data sheet "
                                       "says it (12 = a '12 GB' card: 12 GiB); default: data-sheet H100 SXM, A100 "
                                       "80GB, L40S, RTX 4090, L4, RTX 4080, RTX 4070")
    p.add_argument("--height", type=int, default=512, help="image height")
    p.add_argument("--width", type=int, default=512, help="image width")
    p.add_argument("--steps", type=int, default=50, help="sampler steps")
    p.add_argument("--prompt-tokens", type=int, default=64, help="prompt tokens per row")
    p.add_argument("--batch", default="1,4", help="comma-separated images per request")
    p.add_argument("--precision", "--dtype", dest="precision", default="bf16,fp8,int8,int4",
                   help="comma-separated weight precisions of fp32,fp16,bf16,fp8,int8,int4 (int8/int4: "
                        "block-wise weights + one fp16 scale per block)")
    p.add_argument("--block-size", type=int, default=32, help="int8/int4 weights per scale")


def _devices(text: str | None):
    from nextstep_trt.engines.gpus import DATASHEET, GiB, Gpu

    if not text:
        return DATASHEET
    out = []
    for item in text.split(","):
        name, _, value = item.rpartition("=")
        rate, _, memory = value.partition("@")
        try:
            gbps, mem = float(rate), float(memory or 0)
        except ValueError:
            gbps = mem = -1.0
        if gbps <= 0 or mem < 0:
            raise UserError(f"--bandwidth takes NAME=GB/s[@MEMORY_GB] items with positive numbers, got {item!r}")
        out.append(Gpu(name.strip() or f"{gbps:g} GB/s", gbps, int(mem * GiB), True))
    return tuple(out)


def run_floor(args) -> int:
    from nextstep_trt.bench.floor import FloorOptions, floor_table
    from nextstep_trt.engines.footprint import PRECISIONS
    from nextstep_trt.ref.config import load_config, preset

    cfg = load_config(args.model) if args.model else preset(args.preset)
    if min(args.height, args.width, args.steps, args.prompt_tokens, args.block_size) < 1:
        raise UserError("--height, --width, --steps, --prompt-tokens and --block-size must be >= 1")
    precisions = tuple(v.strip() for v in args.precision.split(",") if v.strip())
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise UserError(f"--precision takes comma-separated {', '.join(PRECISIONS)}; got {args.precision!r}")
    opts = FloorOptions(_devices(args.bandwidth), args.height, args.width, args.steps, args.prompt_tokens,
                        _ints(args.batch, "--batch"), precisions, args.block_size)
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


def _precisions(text: str) -> tuple[str, ...]:
    from nextstep_trt.core.precision import Precision

    values = tuple(Precision.parse(v.strip()).value for v in text.split(",") if v.strip())
    if not values or len(set(values)) != len(values):
        raise UserError(f"--precision takes distinct comma-separated precisions, e.g. fp32,int8,int4; got {text!r}")
    return values


def options_from_args(args):
    """BenchOptions from parsed flags."""
    from nextstep_trt.bench.peer import PeerOptions
    from nextstep_trt.bench.run import PROMPT, BenchOptions
    from nextstep_trt.bench.stability import SpreadRule

    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if not backends:
        raise UserError("--backends is empty")
    if args.bandwidth_mib < 1 or args.profile_tokens < 1:
        raise UserError("--bandwidth-mib and --profile-tokens must be >= 1")
    pasts = () if args.decode_past.strip().lower() == "none" else _ints(args.decode_past, "--decode-past")
    return BenchOptions(model=Path(args.model), artifacts=Path(args.artifacts) if args.artifacts else None,
                        backends=backends, precisions=_precisions(args.precision), batches=_ints(args.batch, "--batch"),
                        height=args.height, width=args.width, steps=args.steps, cfg=args.cfg, seed=args.seed,
                        repeat=args.repeat, threads=args.threads,
                        profile_dir=Path(args.profile) if args.profile else None, profile_tokens=args.profile_tokens,
                        bandwidth_mib=args.bandwidth_mib, prompt=args.prompt or PROMPT, decode_pasts=pasts,
                        decode_rounds=args.decode_rounds, decode_steps=args.decode_steps,
                        peer={"auto": None, "on": True, "off": False}[args.peer],
                        peer_options=PeerOptions(accuracy_level=args.peer_accuracy_level,
                                                 block_size=args.peer_block_size),
                        spread=SpreadRule(args.max_spread, args.reruns))


def run(args) -> int:
    if args.command == "floor":
        return run_floor(args)
    from nextstep_trt.bench.run import backend_order
    from nextstep_trt.bench.session import run_bench
    from nextstep_trt.bench.tables import report_table
    from nextstep_trt.core.fileio import write_json

    opts = options_from_args(args)
    backend_order(opts.backends)            # unknown names fail before anything is loaded
    if opts.threads < 0:
        raise UserError(f"--threads must be >= 0, got {opts.threads}")
    report = run_bench(opts)
    print()
    print(report_table(report))
    if args.json:
        write_json(args.json, report.to_json())
        print(f"wrote {args.json}")
    return 0
