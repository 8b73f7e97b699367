"""What an ONNX file holds: I/O, opset, ops, parameters, external data and lint findings (torch-free).

Reads the structure only (no external data), so it is fast on multi-GB graphs.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import onnx

from .lint import dtype_name, graph_inputs, lint_model, load_model, tensor_nbytes
from .spec import GraphSpec


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _shape(vi: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Dims as sizes or names (None for an unknown axis); None for an unknown rank."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def _io(values) -> list[dict]:
    return [{"name": vi.name, "dtype": dtype_name(vi.type.tensor_type.elem_type), "shape": _shape(vi)}
            for vi in values]


def _parameters(graph: onnx.GraphProto) -> tuple[int, int]:
    """(element count, bytes) over all initializers."""
    count = total = 0
    for t in graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        count += n
        total += tensor_nbytes(t)
    return count, total


def _external_files(graph: onnx.GraphProto) -> list[str]:
    files = {e.value for t in graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return sorted(files)


def inspect_model(model: onnx.ModelProto, spec: GraphSpec | None = None, export_sizes: dict[str, int] | None = None,
                  hot: bool = True, base_dir: str | Path | None = None) -> dict:
    """inspect_dict for a loaded ModelProto (structure only)."""
    g = model.graph
    ops = Counter(f"{n.domain}.{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type for n in g.node)
    count, nbytes = _parameters(g)
    return {
        "graph": g.name,
        "ir_version": model.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": _io(graph_inputs(g)),
        "outputs": _io(g.output),
        "nodes": len(g.node),
        "ops": sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])),
        "initializers": len(g.initializer),
        "parameters": count,
        "parameter_bytes": nbytes,
        "parameter_size": human_bytes(nbytes),
        "external_data": _external_files(g),
        "findings": [dataclasses.asdict(f) for f in lint_model(model, spec, export_sizes, hot, base_dir)],
    }


def inspect_dict(path: str | Path, spec: GraphSpec | None = None, export_sizes: dict[str, int] | None = None,
                 hot: bool = True) -> dict:
    """Everything ``inspect`` reports about one ONNX file, JSON-ready."""
    return {"path": str(path)} | inspect_model(load_model(path), spec, export_sizes, hot, Path(path).parent)


def inspect_text(path: str | Path, spec: GraphSpec | None = None, export_sizes: dict[str, int] | None = None,
                 hot: bool = True) -> str:
    """inspect_dict as readable tables."""
    return format_text(inspect_dict(path, spec, export_sizes, hot))


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    cells = [tuple(str(c) for c in header)] + [tuple(str(c) for c in r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _shape_text(shape) -> str:
    return "?" if shape is None else "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def format_text(info: dict) -> str:
    """The readable report for an inspect_dict result."""
    opset = info["opsets"].get("ai.onnx", "?")
    lines = [f"{info.get('path', info['graph'])}: opset {opset}, ir {info['ir_version']}, "
             f"producer {info['producer'] or '?'}",
             f"nodes {info['nodes']}, initializers {info['initializers']}, parameters {info['parameters']:,} "
             f"({info['parameter_size']}), external data: {', '.join(info['external_data']) or 'none'}", ""]
    io_rows = [(kind, t["name"], t["dtype"], _shape_text(t["shape"]))
               for kind in ("input", "output") for t in info[kind + "s"]]
    lines += _table(("", "name", "dtype", "shape"), io_rows) + [""]
    lines += _table(("op", "count"), info["ops"]) + [""]
    findings = info["findings"]
    if not findings:
        lines.append("lint: no findings")
    else:
        errors = sum(f["severity"] == "error" for f in findings)
        lines.append(f"lint: {errors} error(s), {len(findings) - errors} warning(s)")
        lines += _table(("severity", "code", "node", "message"),
                        [(f["severity"], f["code"], f["node"] or "-", f["message"]) for f in findings])
    return "\n".join(lines)
