"""Lint an ONNX graph for what TensorRT parsers accept but engines handle badly (torch-free). design.md §2.

Works on the graph's structure: a path is loaded without its external data, so a 30 GB model is linted without
loading its weights. The duplicate-initializer check reads a 4 KiB prefix of each same-shaped candidate and hashes
in full only when prefixes collide.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.core.errors import UserError

from .graph_edit import cast_to
from .ort_attention import in_place_outputs, is_fused
from .spec import GraphSpec

MIN_OPSET = 17
CONTROL_FLOW = ("If", "Loop", "Scan")
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")   # int64 operands have no TensorRT kernels
DUPLICATE_MIN_BYTES = 1024      # smaller constants (shapes, scalars) repeat by coincidence
SAMPLE_BYTES = 4096             # prefix compared before hashing a candidate duplicate in full
SHOWN = 5                       # names quoted in one finding
_SUB_BYTE_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                  TensorProto.INT2: 2, TensorProto.UINT2: 2}


@dataclass(frozen=True)
class Finding:
    severity: str   # "error" | "warning"
    code: str       # short kebab-case rule name
    node: str       # node, tensor or dim name; "" when the finding is about the whole model
    message: str

    def __str__(self) -> str:
        where = f" {self.node}" if self.node else ""
        return f"{self.severity} [{self.code}]{where}: {self.message}"


def load_model(path: str | Path) -> onnx.ModelProto:
    """The graph's structure (no external data read); a UserError for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'a folder, not an ONNX file' if path.is_dir() else 'no such file'}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError) as err:
        raise UserError(f"{path}: not an ONNX model ({type(err).__name__})") from err
    if model.ir_version == 0 or not model.HasField("graph"):
        raise UserError(f"{path}: not an ONNX model (no graph)")
    return model


def dtype_name(elem_type: int) -> str:
    """numpy-style name of an ONNX element type: float32, bfloat16, int64, float8_e4m3fn ..."""
    if elem_type == TensorProto.UNDEFINED:
        return "undefined"
    try:
        return helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def tensor_nbytes(t: TensorProto) -> int:
    """Bytes an initializer holds, from its dims and type (works without loading external data)."""
    count = 1
    for d in t.dims:
        count *= d
    bits = _SUB_BYTE_BITS.get(t.data_type)
    if bits is None:
        bits = 8 * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return (count * bits + 7) // 8


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Real inputs: graph inputs that are not initializers (older exporters list weights as inputs)."""
    weights = {t.name for t in graph.initializer}
    return [vi for vi in graph.input if vi.name not in weights]


def lint_model(model: onnx.ModelProto | str | Path, spec: GraphSpec | None = None,
               export_sizes: dict[str, int] | None = None, hot: bool = True,
               base_dir: str | Path | None = None) -> list[Finding]:
    """Findings for one graph, errors first; ``spec`` and ``export_sizes`` enable the export checks.

    ``base_dir`` (the model's folder, implied by a path) lets the checks read external data files.
    """
    if not isinstance(model, onnx.ModelProto):
        base_dir = Path(model).parent if base_dir is None else base_dir
        model = load_model(model)
    base_dir = None if base_dir is None else Path(base_dir)
    graph = model.graph
    sizes = dict(export_sizes or {})
    if spec is not None:          # a dim whose range is one size is exported static: tracing it at 1 is right
        env = spec.envelope()
        sizes = {n: s for n, s in sizes.items() if n not in env or env[n].min < env[n].max}
    findings = [*_control_flow(graph, hot), *_opset(model), *_io_shapes(graph), *_intermediate_shapes(model),
                *_int64_weight_ops(graph), *_export_sizes(sizes),
                *_duplicate_initializers(graph, base_dir), *_missing_external_files(graph, base_dir)]
    if spec is not None:
        findings += _against_spec(graph, spec)
    return sorted(findings, key=lambda f: f.severity != "error")


def _subgraphs(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _control_flow(graph: onnx.GraphProto, hot: bool) -> list[Finding]:
    out = []
    for i, node in enumerate(graph.node):
        if node.op_type in CONTROL_FLOW and node.domain in ("", "ai.onnx"):
            where = "a hot graph: TensorRT runs it as slow control flow" if hot else "the graph"
            out.append(Finding("error" if hot else "warning", "control-flow", node.name or f"#{i}",
                               f"{node.op_type} node in {where}; unroll it or move it to the runtime"))
        for sub in _subgraphs(node):
            out += _control_flow(sub, hot)
    return out


def _opset(model: onnx.ModelProto) -> list[Finding]:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        return [Finding("error", "opset", "", "no ai.onnx opset import")]
    if versions[0] < MIN_OPSET:
        return [Finding("error", "opset", "", f"opset {versions[0]} < {MIN_OPSET}; export with opset {MIN_OPSET}+")]
    return []


def _io_shapes(graph: onnx.GraphProto) -> list[Finding]:
    out = []
    for kind, values in (("input", graph_inputs(graph)), ("output", graph.output)):
        for vi in values:
            tt = vi.type.tensor_type
            if not vi.type.HasField("tensor_type") or not tt.HasField("shape"):
                out.append(Finding("warning", "io-no-shape", vi.name, f"graph {kind} has no shape information"))
                continue
            unknown = [i for i, d in enumerate(tt.shape.dim) if d.WhichOneof("value") is None]
            if unknown:
                out.append(Finding("warning", "io-unknown-dim", vi.name,
                                   f"graph {kind} axes {unknown} have neither a size nor a name"))
    return out


def _intermediate_shapes(model: onnx.ModelProto) -> list[Finding]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as err:  # noqa: BLE001 - any inference failure is one finding, never a crash
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return [Finding("warning", "shape-inference", "", f"ONNX shape inference failed: {first}")]
    g = inferred.graph
    known = {vi.name for vi in [*g.value_info, *g.input, *g.output] if vi.type.tensor_type.HasField("shape")}
    skip = {vi.name for vi in [*g.input, *g.output]} | {t.name for t in g.initializer}
    missing = [o for n in g.node for o in n.output if o and o not in skip and o not in known]
    if not missing:
        return []
    names = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
    return [Finding("warning", "no-shape", missing[0],
                    f"{len(missing)} intermediate tensor(s) have no shape after shape inference: {names}")]


def _int64_weight_ops(graph: onnx.GraphProto) -> list[Finding]:
    casts = {n.output[0]: n for n in graph.node if n.op_type == "Cast" and cast_to(n) == TensorProto.INT64}
    out = []
    for node in graph.node:
        if node.op_type not in WEIGHT_OPS:
            continue
        for name in node.input:
            if name in casts:
                cast = casts[name]
                out.append(Finding("error", "int64-compute", cast.name or name,
                                   f"Cast to int64 feeds {node.op_type} {node.name or node.output[0]!r}; "
                                   "TensorRT has no int64 kernels for it: compute in float or int32"))
    return out


def _export_sizes(export_sizes: dict[str, int]) -> list[Finding]:
    return [Finding("error", "export-size", name,
                    f"traced with example size {size}; tracers specialize sizes 0 and 1, so the graph may have "
                    "fixed this dim: export with an example size >= 2")
            for name, size in sorted(export_sizes.items()) if size in (0, 1)]


def _external(t: TensorProto, base_dir: Path) -> tuple[Path, int, int]:
    info = {e.key: e.value for e in t.external_data}
    return base_dir / info["location"], int(info.get("offset", 0)), int(info.get("length", tensor_nbytes(t)))


def _digest(t: TensorProto, base_dir: Path | None, limit: int | None = None) -> str | None:
    """sha256 of an initializer's bytes (only the first ``limit``); None when its external file is unreadable."""
    h = hashlib.sha256()
    if t.data_location != TensorProto.EXTERNAL:
        data = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        h.update(data[:limit])
        return h.hexdigest()
    file, offset, length = _external(t, base_dir)
    remaining = length if limit is None else min(limit, length)
    try:
        with open(file, "rb") as f:
            f.seek(offset)
            while remaining > 0:
                chunk = f.read(min(remaining, 1 << 24))
                if not chunk:
                    return None
                h.update(chunk)
                remaining -= len(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _same_bytes(tensors: list[TensorProto], base_dir: Path | None) -> list[list[str]]:
    """Names of tensors with identical bytes: compare a 4 KiB prefix first, hash in full only on collisions."""
    def group(items, limit):
        out = defaultdict(list)
        for t in items:
            key = _digest(t, base_dir, limit)
            if key is not None:
                out[key].append(t)
        return [g for g in out.values() if len(g) > 1]

    return [[t.name for t in same] for cands in group(tensors, SAMPLE_BYTES) for same in group(cands, None)]


def _duplicate_initializers(graph: onnx.GraphProto, base_dir: Path | None) -> list[Finding]:
    groups: dict[tuple, list[TensorProto]] = defaultdict(list)
    for t in graph.initializer:
        readable = t.data_location != TensorProto.EXTERNAL or base_dir is not None
        if readable and tensor_nbytes(t) >= DUPLICATE_MIN_BYTES:
            groups[(t.data_type, tuple(t.dims))].append(t)
    out = []
    for same_shape in groups.values():
        if len(same_shape) < 2:
            continue
        for names in _same_bytes(same_shape, base_dir):
            size = tensor_nbytes(same_shape[0])
            out.append(Finding("warning", "duplicate-initializer", names[0],
                               f"{' and '.join(names)} store the same {size} bytes (tied weights?); "
                               "share one initializer"))
    return out


def _missing_external_files(graph: onnx.GraphProto, base_dir: Path | None) -> list[Finding]:
    if base_dir is None:
        return []
    files = {e.value for t in graph.initializer if t.data_location == TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    return [Finding("error", "external-data", name, "external data file is missing")
            for name in sorted(files) if not (base_dir / name).is_file()]


def _against_spec(graph: onnx.GraphProto, spec: GraphSpec) -> list[Finding]:
    out, env = [], spec.envelope()
    for kind, values, tensors in (("input", graph_inputs(graph), spec.inputs), ("output", graph.output, spec.outputs)):
        onnx_io = {vi.name: vi for vi in values}
        wanted = {t.name for t in tensors}
        if kind == "output":               # ONNX Runtime's fused attention: the in-place cache outputs it adds
            wanted |= in_place_outputs(list(onnx_io)).keys() if is_fused(graph) else set()
        out += [Finding("error", "io-name", t.name, f"spec {kind} is not a graph {kind}")
                for t in tensors if t.name not in onnx_io]
        out += [Finding("error", "io-name", name, f"graph {kind} is not in the {spec.name} spec")
                for name in onnx_io if name not in wanted]
        for t in tensors:
            if t.name in onnx_io:
                out += _tensor_against_spec(onnx_io[t.name], t, kind, env)
    return out


def _tensor_against_spec(vi: onnx.ValueInfoProto, t, kind: str, env: dict) -> list[Finding]:
    tt = vi.type.tensor_type
    out = []
    dtype = dtype_name(tt.elem_type)
    if dtype != t.dtype:
        out.append(Finding("error", "io-dtype", t.name, f"graph {kind} is {dtype}, spec says {t.dtype}"))
    if kind == "input" and t.dtype == "int64":
        out.append(Finding("warning", "int64-input", t.name, "TensorRT casts int64 to int32; values must fit in int32"))
    if not tt.HasField("shape"):
        return out
    dims = tt.shape.dim
    if len(dims) != len(t.axes):
        return out + [Finding("error", "io-rank", t.name, f"rank {len(dims)}, spec says {len(t.axes)} {t.axes}")]
    for axis, (d, want) in enumerate(zip(dims, t.axes)):
        if d.WhichOneof("value") != "dim_value":
            continue
        if isinstance(want, str) and env[want].min == env[want].max == d.dim_value:
            continue  # the profile allows one size only: exported static on purpose
        if isinstance(want, str):
            out.append(Finding("error", "dim-specialized", t.name, f"axis {axis} ({want!r}) fixed to {d.dim_value}; "
                               "the spec declares it dynamic: dim specialized at export"))
        elif d.dim_value != want:
            out.append(Finding("error", "io-shape", t.name, f"axis {axis} is {d.dim_value}, spec says {want}"))
    return out
