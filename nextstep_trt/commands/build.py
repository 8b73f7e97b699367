"""build: TensorRT / TensorRT-RTX engines of one precision, cached by content under ART/engines."""
from __future__ import annotations

import json
from pathlib import Path

from nextstep_trt.core.errors import UserError

HELP = {"build": "build TensorRT or TensorRT-RTX engines of one precision into ART/engines (cached by content)"}
COLUMNS = (("graph", 18, "{}"), ("precision", 9, "{}"), ("flavor", 12, "{}"), ("cc", 5, "{}"),
           ("seconds", 8, "{:.2f}"), ("plan_mib", 9, "{:.2f}"), ("cached", 6, "{}"), ("key", 16, "{}"))


def add_arguments(name: str, p) -> None:
    from .flags import comma_list


    p.add_argument("--artifacts", required=True, metavar="ART", help="artifacts folder written by export/quantize")
    p.add_argument("--precision", required=True, choices=["fp32", "fp16", "bf16", "fp8", "int8", "int4"],
                   help="which precision's graphs to build (precision lives in the ONNX graph; int8/int4: the "
                        "blocked-DequantizeLinear bf16 graphs quantize made for TensorRT)")
    p.add_argument("--graphs", type=comma_list, metavar="A,B", help="a subset of the graphs (default: all of them)")
    p.add_argument("--flavor", choices=["tensorrt", "tensorrt-rtx"],
                   help="default: tensorrt when it is installed and a GPU is present, else tensorrt-rtx")
    p.add_argument("--compute-capability", metavar="X.Y",
                   help="target GPU (TensorRT-RTX builds ahead of time for it without a GPU); default: this GPU's")
    p.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0..5")
    p.add_argument("--workspace-gib", type=float, help="workspace memory pool limit in GiB (default: TensorRT's)")
    p.add_argument("--force", action="store_true", help="rebuild even when a matching engine is cached")
    p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def _graphs(manifest, precision: str, requested: list[str] | None) -> list[str]:
    """The graphs to build; every one must have an ONNX file of this precision (checked before any build)."""
    have = [g for g in manifest.graphs if precision in manifest.data["graphs"][g]["precisions"]]
    graphs = list(requested) if requested else have
    if not graphs:
        make = "export" if precision == "fp32" else f"quantize --precision {precision}"
        raise UserError(f"{manifest.root} has no {precision} graphs: make them with `nextstep-trt {make}`")
    for g in graphs:
        manifest.path(g, precision)   # a UserError names a missing graph or file
    return graphs


def _line(row: dict) -> str:
    cells = [("yes" if row[k] else "no") if k == "cached" else fmt.format(row[k]) for k, _, fmt in COLUMNS]
    return "  ".join(f"{c:<{w}}" for c, (_, w, _) in zip(cells, COLUMNS)).rstrip()


def run(args) -> int:
    from nextstep_trt.core.gpu import probe_gpu
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.engines.builder import BuildOptions, check_precision, default_flavor, resolve_target
    from nextstep_trt.engines.cache import build_engine
    from nextstep_trt.export.manifest import Manifest

    probe = probe_gpu()
    workspace = None if args.workspace_gib is None else int(args.workspace_gib * 2**30)
    opts = BuildOptions(args.flavor or default_flavor(probe), args.compute_capability, args.opt_level, workspace)
    target = resolve_target(opts, probe)
    precision = Precision.parse(args.precision)
    check_precision(precision, target.compute_capability)
    manifest = Manifest.load(args.artifacts)
    graphs = _graphs(manifest, precision.value, args.graphs)
    rows = []
    for graph in graphs:
        record = build_engine(Path(args.artifacts), graph, precision, opts, target, args.force, probe)
        rows.append(record.row())
        if not args.json:   # rows appear as each graph finishes; the header with the first one
            header = "  ".join(f"{k:<{w}}" for k, w, _ in COLUMNS).rstrip() + "\n" if len(rows) == 1 else ""
            print(header + _line(rows[-1]), flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0
