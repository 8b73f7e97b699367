"""quantize: fp16 / bf16 / fp8 / int8 / int4 graphs from the exported fp32 graphs, calibrated on the reference."""
from __future__ import annotations

from pathlib import Path

HELP = {"quantize": "make fp16/bf16 (ModelOpt AutoCast), fp8 (E4M3 Q/DQ) or weight-only int8/int4 graphs from the "
                    "fp32 graphs"}
WEIGHT_ONLY_FLAGS = ("block_size", "method", "accuracy_level", "sensitivity", "low_memory", "kv_cache")


def add_arguments(name: str, p) -> None:
    from .flags import comma_list

    p.add_argument("--model", required=True, help="model folder (the reference for calibration and validation)")
    p.add_argument("--artifacts", required=True, help="artifacts folder from `nextstep-trt export`")
    p.add_argument("--precision", required=True, help="fp16, bf16, fp8, int8 or int4")
    p.add_argument("--graphs", help="comma-separated graph names (default: every exported graph it applies to)")
    p.add_argument("--calib", help="extra calibration prompts, one per line (added to the built-in list)")
    p.add_argument("--exclude", type=comma_list, metavar="GLOB,GLOB",
                   help="fp8/int8/int4: parameter-name globs kept high precision, replacing the built-in list "
                        "(embeddings, image projectors, the head's time/condition embeddings, adaLN, final layer)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="install without the level-1 check against the reference")
    p.add_argument("--overflow-report", action="store_true",
                   help="fp16: print where fp32 activations exceed fp16's range (FP16-vs-BF16), write it as JSON")
    p.add_argument("--block-size", type=int, default=None,
                   help="int8/int4: weights per scale along the input dimension: 16, 32, 64, 128 or 256 (default 128)")
    p.add_argument("--method", choices=["rtn", "awq"], default=None,
                   help="int8/int4: rtn (scales from each block's max |w|) or awq (per-block clip ratios searched on "
                        "the calibration activations) (default rtn)")
    p.add_argument("--accuracy-level", type=int, choices=range(5), default=None,
                   help="int8/int4 ONNX Runtime graph: MatMulNBits accuracy_level; 4 = int8 activations and integer "
                        "dot products (default: 4 when /proc/cpuinfo shows an int8 dot-product path, else 1)")
    p.add_argument("--low-memory", action="store_true",
                   help="int8/int4: quantize the backbone straight from the checkpoint's shards, one linear at a time "
                        "(a model too big for memory; the head graphs need their fp32 export), checked tensor by "
                        "tensor and by one decoder layer; rtn only")
    p.add_argument("--kv-cache", choices=["fp32", "int8"], default=None,
                   help="int8/int4 ONNX Runtime backbone: keep the KV cache in int8 with static per-channel scales "
                        "calibrated on the reference (4x smaller cache, faster long decode steps; not weight-only: "
                        "the cache is an activation; the TensorRT file keeps its float cache) (default fp32)")
    p.add_argument("--sensitivity", action="store_true",
                   help="int8/int4: install nothing; quantize one layer type at a time and print the level-1 error "
                        "each one causes (to choose --exclude); JSON into ART/<precision>/sensitivity.json")


def _check_flags(args, precision) -> None:
    from nextstep_trt.core.errors import UserError
    from nextstep_trt.core.precision import Precision

    if args.overflow_report and precision is not Precision.FP16:
        raise UserError("--overflow-report goes with --precision fp16")
    if args.exclude and precision not in (Precision.FP8, Precision.INT8, Precision.INT4):
        raise UserError("--exclude applies to --precision fp8, int8 or int4 only")
    given = [f for f in WEIGHT_ONLY_FLAGS if getattr(args, f) not in (None, False)]
    if given and not precision.weight_only:
        raise UserError(f"--{given[0].replace('_', '-')} applies to --precision int8 or int4 only")
    if args.kv_cache == "int8" and (args.low_memory or args.sensitivity):
        raise UserError(f"--kv-cache int8 does not go with {'--low-memory' if args.low_memory else '--sensitivity'}: "
                        "its scales come from a calibration run of the reference backbone in memory")
    if args.low_memory and (args.sensitivity or args.method == "awq"):
        raise UserError(f"--low-memory does not go with {'--sensitivity' if args.sensitivity else '--method awq'}: "
                        "both run the reference model in memory")


def options(args):
    """The QuantizeOptions the flags ask for."""
    from nextstep_trt.core.precision import KVCache, Precision
    from nextstep_trt.engines.precision.options import QuantizeOptions
    from nextstep_trt.engines.precision.weightonly import Method

    precision = Precision.parse(args.precision)
    _check_flags(args, precision)
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip()) if args.graphs else None
    block = 128 if args.block_size is None else args.block_size          # 0 is refused, not the default
    return QuantizeOptions(Path(args.model), Path(args.artifacts), precision, graphs,
                           Path(args.calib) if args.calib else None, args.exclude, args.validate,
                           block, Method(args.method or "rtn"), args.accuracy_level, args.low_memory,
                           KVCache(args.kv_cache or "fp32"))


def run(args) -> int:
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.core.report import CPU_BF16_NOTE, CPU_FP16_NOTE

    opts = options(args)
    precision = opts.precision
    if args.sensitivity:
        from nextstep_trt.engines.precision.sensitivity import sensitivity_report

        report = sensitivity_report(opts)
        print(report.table())
        out = Path(args.artifacts) / precision.value / "sensitivity.json"
        write_json(out, report.to_json())
        print(f"wrote {out}")
        return 0
    from nextstep_trt.engines.precision.run import overflow_reports, quantize_all

    if opts.low_memory:
        from nextstep_trt.engines.precision.weightonly_lowmem import quantize_low_memory

        quantize_low_memory(opts)
        return 0
    quantize_all(opts)
    if args.overflow_report:
        reports = overflow_reports(opts)
        for r in reports:
            print(r.table())
        out = Path(args.artifacts) / precision.value / "overflow_report.json"
        write_json(out, {"reports": [r.to_json() for r in reports], "note": CPU_FP16_NOTE})
        print(f"wrote {out}")
    if precision in (Precision.FP16, Precision.BF16):
        print(CPU_BF16_NOTE if precision is Precision.BF16 else CPU_FP16_NOTE)
    return 0
