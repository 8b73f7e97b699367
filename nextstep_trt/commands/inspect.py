"""inspect: an ONNX file's I/O, ops, parameters and lint findings; optionally a TensorRT(-RTX) parse."""
from __future__ import annotations

import json
from pathlib import Path

from nextstep_trt.core.errors import CheckFailed, UserError

HELP = {"inspect": "show an ONNX graph's I/O, ops and parameters, lint it, optionally parse it with TensorRT"}


def add_arguments(name: str, p) -> None:
    p.add_argument("file", metavar="FILE.onnx", help="ONNX graph (external data is not read)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--trt-parse", action="store_true", help="also parse with the TensorRT ONNX parser (no GPU needed)")
    p.add_argument("--flavor", default="tensorrt-rtx", choices=["tensorrt-rtx", "tensorrt"],
                   help="TensorRT flavor for --trt-parse")
    p.add_argument("--manifest", help="ART/manifest.json: lint against the graph's spec and export sizes")
    p.add_argument("--graph", help="graph name in the manifest (needed with --manifest)")


def _read_manifest(path: str, graph: str | None, onnx_file: str) -> tuple[object, dict | None]:
    """(GraphSpec, export sizes) of one graph in an artifacts manifest.

    When ``onnx_file`` is one of the graph's precision files, the spec takes that file's I/O dtypes.
    """
    from nextstep_trt.export.spec import GraphSpec

    try:
        manifest = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not a JSON manifest ({err})") from None
    graphs = manifest.get("graphs") if isinstance(manifest, dict) else None
    if not isinstance(graphs, dict):
        raise UserError(f"{path}: no 'graphs' section")
    if graph is None:
        raise UserError(f"--manifest needs --graph: one of {', '.join(graphs) or '(none)'}")
    if graph not in graphs:
        raise UserError(f"{path}: no graph {graph!r}; it has {', '.join(graphs) or '(none)'}")
    entry = graphs[graph]
    if "spec" not in entry:
        raise UserError(f"{path}: graph {graph!r} has no spec")
    try:
        spec = GraphSpec.from_dict(entry["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path}: graph {graph!r} has a malformed spec ({type(err).__name__}: {err})") from None
    return spec.with_dtypes(_io_dtypes(Path(path).parent, entry, Path(onnx_file))), entry.get("export_sizes")


def _io_dtypes(root: Path, entry: dict, onnx_file: Path) -> dict:
    """The I/O dtypes the manifest gives the file being inspected: its precision entry's ``io_dtypes``, and for one
    of an int4/int8 entry's two deployment files that file's own (an int8 KV cache); {} when it is not listed."""
    from nextstep_trt.export.manifest import deployment_io_dtypes

    def same(rel) -> bool:
        return isinstance(rel, str) and (root / rel).resolve() == onnx_file.resolve()

    for record in (entry.get("precisions") or {}).values():
        if not isinstance(record, dict):
            continue
        files = {name: d.get("file") for name, d in (record.get("deployments") or {}).items() if isinstance(d, dict)}
        which = next((name for name, rel in files.items() if same(rel)), None)
        if which or same(record.get("file")):
            return (record.get("io_dtypes") or {}) | deployment_io_dtypes(record, which)
    return {}


def run(args) -> int:
    from nextstep_trt.export.inspect import format_text, inspect_dict

    if args.graph and not args.manifest:
        raise UserError("--graph needs --manifest")
    spec, sizes = _read_manifest(args.manifest, args.graph, args.file) if args.manifest else (None, None)
    info = inspect_dict(args.file, spec, sizes)
    parsed = _parse(args) if args.trt_parse else None
    if args.json:
        print(json.dumps(info | ({"trt_parse": parsed.to_dict()} if parsed else {}), indent=2))
    else:
        print(format_text(info) + (f"\n\n{parsed.table(args.flavor)}" if parsed else ""))
    _verdict(info, parsed)
    return 0


def _parse(args):
    from nextstep_trt.export.trt_check import trt_parse

    return trt_parse(args.file, args.flavor)


def _verdict(info: dict, parsed) -> None:
    """Raise CheckFailed (exit 1) on lint errors or a failed parse."""
    errors = [f for f in info["findings"] if f["severity"] == "error"]
    problems = []
    if errors:
        problems.append(f"{len(errors)} lint error(s) (first: {errors[0]['code']} {errors[0]['node']})")
    if parsed is not None and not parsed.ok:
        node = parsed.errors[0][0] if parsed.errors else ""
        problems.append(f"TensorRT parse failed ({len(parsed.errors)} error(s), first at node {node or '<model>'})")
    if problems:
        raise CheckFailed(f"{info['path']}: " + "; ".join(problems))
