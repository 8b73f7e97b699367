"""`quantize --precision int4|int8 --low-memory`: the backbone's two deployments streamed from the checkpoint.

For a model too big for memory (Large: 14.8 B backbone parameters, 28 GB in bf16). The backbone is traced twice on
the meta device (``export/metatrace.py``) -- in fp32 for ONNX Runtime, in bf16 for TensorRT -- and never
materialized. Each linear the keep-list leaves (``Transpose(W)`` or ``Transpose(Concat(W_q, W_k, W_v))`` feeding a
MatMul: its initializers are checkpoint tensors, named by key) is read from the shards one linear at a time,
quantized by ``blockquant.quantize`` (the codes the in-memory path makes from the same weights) and appended to
each deployment's data file: MatMulNBits B and scales for ONNX Runtime; INT4/INT8 codes ``[K,N]`` and bf16 scales
of a blocked ``DequantizeLinear -> MatMul`` for TensorRT (opset 21). The other weights are converted (ONNX
Runtime: fp32) or copied (TensorRT: the checkpoint's bf16) into each graph's own ``.data``, so a deployment is
self-contained: it neither links the 28 GB of shards nor needs them at run time. Peak memory: one linear.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx

from nextstep_trt.export.external import ALIGN, StoredTensor, checkpoint_key, read_tensor

from .blockquant import Quantized, dq_tensor, nbits, quantize
from .naming import matches
from .weightonly import MS_DOMAIN, TRT_OPSET, Site, WeightOnlyConfig, site_record

GRAPH = "backbone"


@dataclass(frozen=True)
class StreamLinear:
    """One MatMul whose weight is ``Transpose`` of one checkpoint tensor or of a ``Concat`` of several (fused)."""

    matmul: object                # ir.Node
    parts: tuple                  # ir.Values: initializers [N_i,K], side by side along N
    keys: tuple[str, ...]         # their checkpoint keys

    @property
    def k(self) -> int:
        return int(self.parts[0].shape[1])

    @property
    def n(self) -> int:
        return sum(int(p.shape[0]) for p in self.parts)


def _transposed_source(node):
    """The Transpose(perm [1,0]) feeding a MatMul's weight and the value it transposes, or (None, None)."""
    w = node.inputs[1] if len(node.inputs) == 2 else None
    t = w.producer() if w is not None else None
    if t is None or t.op_type != "Transpose" or len(w.uses()) != 1:
        return None, None
    perm = t.attributes.get("perm")
    if perm is not None and list(perm.as_ints()) != [1, 0]:
        return None, None
    return t, t.inputs[0]


def _parts(src) -> tuple | None:
    """The initializers a weight is made of: itself, or the inputs of a Concat(axis 0) of initializers."""
    if src.is_initializer():
        return (src,)
    c = src.producer()
    if c is None or c.op_type != "Concat" or c.attributes.get("axis").as_int() != 0:
        return None
    return tuple(c.inputs) if all(i is not None and i.is_initializer() for i in c.inputs) else None


def stream_linears(model) -> dict[tuple[str, ...], StreamLinear]:
    """Every linear of a meta-traced backbone (an onnx_ir model) by the checkpoint keys of its weight."""
    out = {}
    for node in model.graph:
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
            continue
        _, src = _transposed_source(node)
        parts = _parts(src) if src is not None else None
        keys = tuple(checkpoint_key(GRAPH, p.name) for p in parts) if parts else ()
        if keys and None not in keys:
            out[keys] = StreamLinear(node, parts, keys)
    return out


def choose_stream_sites(linears: dict[tuple[str, ...], StreamLinear], exclude: list[str],
                        block: int) -> tuple[list[Site], list[dict]]:
    """The linears to quantize (``Site.params``: the checkpoint keys; ``Site.node``: the MatMul's name, which both
    deployments give the node that replaces it) and, for the others, why they stay as they are."""
    sites, kept = [], []
    for keys, lin in linears.items():
        pattern = matches(list(keys), exclude)
        reason = (f"excluded by {pattern!r}" if pattern else
                  f"input dimension {lin.k} is not a multiple of the block size {block}" if lin.k % block else None)
        if reason:
            kept.append({"node": lin.matmul.name, "params": list(keys), "reason": reason})
        else:
            sites.append(Site(lin.matmul.name, lin.parts[0].name, False, keys))
    return sites, kept


def site_weight(stored: dict[str, StoredTensor], keys: tuple[str, ...]) -> np.ndarray:
    """A linear's weight in the MatMul layout [K,N], float32, read from the shards (the parts side by side)."""
    parts = [read_tensor(stored[k]).float().numpy() for k in keys]                       # each [N_i,K]
    return np.ascontiguousarray(np.concatenate(parts, axis=0).T)                          # [K,N]


class DataFile:
    """An external-data file written tensor by tensor at page-aligned offsets; each tensor an onnx_ir initializer."""

    def __init__(self, path: Path):
        self.path, self.bytes = Path(path), 0
        self._f = open(self.path, "wb")

    def add(self, graph, name: str, raw: bytes, dtype, shape: tuple[int, ...]):
        """Append ``raw`` and register an initializer ``name`` of ``dtype``/``shape`` pointing at it."""
        import onnx_ir as ir

        self._f.write(b"\0" * (-self._f.tell() % ALIGN))
        offset = self._f.tell()
        self._f.write(raw)
        self.bytes += len(raw)
        tensor = ir.ExternalTensor(self.path.name, offset, len(raw), dtype, shape=ir.Shape(shape), name=name,
                                   base_dir=str(self.path.parent))
        value = ir.Value(name=name, shape=ir.Shape(shape), type=ir.TensorType(dtype), const_value=tensor)
        graph.register_initializer(value)
        return value

    def close(self) -> None:
        self._f.close()


def _replace_output(graph, old_node, new_node) -> None:
    """Route every use of ``old_node``'s output to ``new_node``'s, which takes its name; drop ``old_node``."""
    old, new = old_node.outputs[0], new_node.outputs[0]
    name, new.type, new.shape = old.name, old.type, old.shape
    old.replace_all_uses_with(new)
    graph.remove(old_node, safe=True)
    new.name = name


def write_nbits(model, lin: StreamLinear, site: Site, qw: Quantized, data: DataFile, level: int) -> None:
    """Replace one linear of the fp32 trace by MatMulNBits reading codes and scales appended to ``data``."""
    import onnx_ir as ir

    b, s = nbits(qw)                                                    # [N,K/bs,bs*bits/8] uint8, [N,K/bs] fp32
    bv = data.add(model.graph, f"{site.weight}/q{qw.bits}", b.tobytes(), ir.DataType.UINT8, b.shape)
    sv = data.add(model.graph, f"{site.weight}/scales", s.tobytes(), ir.DataType.FLOAT, s.shape)
    k, n = qw.shape
    node = ir.node("MatMulNBits", [lin.matmul.inputs[0], bv, sv],
                   {"K": k, "N": n, "bits": qw.bits, "block_size": qw.block, "accuracy_level": level},
                   domain=MS_DOMAIN, name=site.node, metadata_props=dict(lin.matmul.metadata_props))
    model.graph.insert_before(lin.matmul, node)
    _replace_output(model.graph, lin.matmul, node)


def write_dq(model, lin: StreamLinear, site: Site, qw: Quantized, data: DataFile) -> None:
    """Feed one linear of the bf16 trace from a blocked DequantizeLinear of codes and bf16 scales in ``data``."""
    import onnx_ir as ir

    codes = dq_tensor(qw, "codes")                                      # INT4/INT8 [K,N], packed as ONNX stores it
    qv = data.add(model.graph, f"{site.weight}/int{qw.bits}", codes.raw_data,
                  ir.DataType.INT4 if qw.bits == 4 else ir.DataType.INT8, qw.shape)
    scale = qw.scale.astype(ml_dtypes.bfloat16)                         # [K/bs,N], exact (blockquant.ceil_bits)
    sv = data.add(model.graph, f"{site.weight}/scale_bf16", scale.tobytes(), ir.DataType.BFLOAT16, scale.shape)
    dq = ir.node("DequantizeLinear", [qv, sv], {"axis": 0, "block_size": qw.block},
                 name=f"{site.node}/DequantizeLinear", metadata_props=dict(lin.matmul.metadata_props))
    dq.outputs[0].name, dq.outputs[0].dtype = f"{site.node}/dequantized_weight", ir.DataType.BFLOAT16
    dq.outputs[0].shape = ir.Shape(qw.shape)
    model.graph.insert_before(lin.matmul, dq)
    lin.matmul.replace_input_with(1, dq.outputs[0])
    lin.matmul.name = site.node


def quantize_stream(ort_ir, trt_ir, sites: list[Site], stored: dict[str, StoredTensor], cfg: WeightOnlyConfig,
                    ort_data: Path, trt_data: Path, log=print) -> list[dict]:
    """Quantize every site from the shards, one linear at a time, into both traces (onnx_ir models, in place);
    returns the sites' records for the recipe."""
    ort_lin, trt_lin = stream_linears(ort_ir), stream_linears(trt_ir)
    missing = [s.params for s in sites if s.params not in trt_lin]
    if missing:
        raise RuntimeError(f"the bf16 trace has no linear of {', '.join(missing[0])}")
    ort_file, trt_file, records = DataFile(ort_data), DataFile(trt_data), []
    try:
        for i, site in enumerate(sites):
            qw = quantize(site_weight(stored, site.params), cfg.bits, cfg.block)
            write_nbits(ort_ir, ort_lin[site.params], site, qw, ort_file, cfg.accuracy_level)
            write_dq(trt_ir, trt_lin[site.params], site, qw, trt_file)
            records.append(site_record(site, qw))
            if (i + 1) % 16 == 0 or i + 1 == len(sites):
                written = (ort_file.bytes + trt_file.bytes) / 1e9
                log(f"  {GRAPH}: {i + 1}/{len(sites)} linears int{cfg.bits} ({written:.2f} GB written)")
    finally:
        ort_file.close()
        trt_file.close()
    ort_ir.opset_imports[MS_DOMAIN] = 1
    return records


def raise_opset(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The TensorRT graph at opset 21 (blocked DequantizeLinear); external data is referenced, not read. The
    converter drops node metadata: the module scopes (which the layer spot check cuts by) are copied back by name."""
    if next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= TRT_OPSET:
        return proto
    out = onnx.version_converter.convert_version(proto, TRT_OPSET)
    out.ir_version = max(out.ir_version, 10)
    meta = {n.name: n.metadata_props for n in proto.graph.node if n.name}
    for node in out.graph.node:
        if node.name in meta and not node.metadata_props:
            node.metadata_props.extend(meta[node.name])
    return out
