"""quantize: fp16 / bf16 / fp8 graphs from the exported fp32 graphs, calibrated on the reference."""
from __future__ import annotations

from pathlib import Path

HELP = {"quantize": "make fp16/bf16 (ModelOpt AutoCast) or fp8 (E4M3 Q/DQ) graphs from the fp32 graphs"}


def add_arguments(name: str, p) -> None:
    p.add_argument("--model", required=True, help="model folder (the reference for calibration and validation)")
    p.add_argument("--artifacts", required=True, help="artifacts folder from `nextstep-trt export`")
    p.add_argument("--precision", required=True, help="fp16, bf16 or fp8")
    p.add_argument("--graphs", help="comma-separated graph names (default: every exported graph it applies to)")
    p.add_argument("--calib", help="extra calibration prompts, one per line (added to the built-in list)")
    p.add_argument("--exclude", nargs="+", metavar="PATTERN",
                   help="fp8: parameter-name globs kept high precision, replacing the built-in list")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="install without the level-1 check against the reference")
    p.add_argument("--overflow-report", action="store_true",
                   help="fp16: print where fp32 activations exceed fp16's range (FP16-vs-BF16), write it as JSON")


def run(args) -> int:
    from nextstep_trt.core.errors import UserError
    from nextstep_trt.core.fileio import write_json
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.core.report import CPU_BF16_NOTE, CPU_FP16_NOTE
    from nextstep_trt.engines.precision.run import QuantizeOptions, overflow_reports, quantize_all

    precision = Precision.parse(args.precision)
    if args.overflow_report and precision is not Precision.FP16:
        raise UserError("--overflow-report goes with --precision fp16")
    if args.exclude and precision is not Precision.FP8:
        raise UserError("--exclude applies to --precision fp8 only")
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip()) if args.graphs else None
    opts = QuantizeOptions(Path(args.model), Path(args.artifacts), precision, graphs,
                           Path(args.calib) if args.calib else None, tuple(args.exclude) if args.exclude else None,
                           args.validate)
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
