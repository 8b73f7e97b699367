"""INT4 / INT8 weight-only graphs: one set of block-quantized weights, two deployments (torch-free).

The linear layers the keep-list does not exclude (``fp8.choose_linears``: each MatMul/Gemm named by the model
parameter its weight equals, fused q/k/v and gate/up included) are quantized once (``blockquant``) and written
twice from the same codes and scales:

* ONNX Runtime (CPU): the fp32 graph with each linear replaced by com.microsoft ``MatMulNBits`` (fp32 activations,
  ``accuracy_level`` an attribute: 4 quantizes the activations to int8 per block and runs integer dot products).
  ``ART/<p>/<graph>.onnx``, the manifest entry's ``file``: what the ONNX Runtime backend and bench load.
* TensorRT / TensorRT-RTX: the bf16 graph of ``quantize --precision bf16`` (same AutoCast policy: norms, softmax,
  residual adds, RoPE and the sampler's integrator stay fp32) with each linear's weight replaced by standard ONNX
  ``DequantizeLinear(INT4|INT8, bf16 scale, axis, block_size)`` (opset >= 21), strongly typed: the scale is in
  the weight's dtype, so the DQ output feeds the MatMul as it was. ``ART/<p>/<graph>.trt.onnx``, the entry's
  ``deployments.tensorrt``: what ``nextstep-trt build --precision int4`` builds.

Weights whose input dimension K is not a multiple of the block size stay as they are (recorded with the reason).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision, check_block_size

from .blockquant import Quantized, dq_tensor, nbits, quantize
from .fp8 import FP8_EXCLUDE, FP8_GRAPHS, choose_linears

WEIGHT_ONLY = {Precision.INT4: 4, Precision.INT8: 8}
WEIGHT_ONLY_GRAPHS = FP8_GRAPHS                   # backbone, head_step and every fused sampler; the VAE stays fp32
WEIGHT_ONLY_EXCLUDE = FP8_EXCLUDE                 # the keep-list is fp8's
TRT_OPSET = 21                                    # the first opset whose DequantizeLinear takes block_size
TENSORRT_SUFFIX = ".trt.onnx"
MS_DOMAIN = "com.microsoft"
# CPU flags of an int8 dot-product path in ONNX Runtime's MLAS (x86: AVX2 vpmaddubsw, AVX-VNNI, AVX512-VNNI, AMX;
# Arm: SDOT, I8MM): there accuracy level 4 (int8 activations) is the fast path.
INT8_DOT_FLAGS = ("avx2", "avx_vnni", "avx512_vnni", "amx_int8", "asimddp", "i8mm")


class Method(str, enum.Enum):
    RTN = "rtn"          # scales from each block's max |w|
    AWQ = "awq"          # per-block clip ratios searched on the calibration activations (awq.py)


@dataclass(frozen=True)
class WeightOnlyConfig:
    """How the weights are quantized and the ONNX Runtime graph computes."""

    bits: int
    block: int = 128
    method: Method = Method.RTN
    accuracy_level: int = 4

    def __post_init__(self):
        check_block_size(self.block)
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise UserError(f"--accuracy-level {self.accuracy_level} is not one of 0..4")


def cpu_accuracy_level(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[int, str]:
    """4 when the CPU has an int8 dot-product path ONNX Runtime uses, else 1 (fp32 compute); and why."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return 1, f"{cpuinfo} unreadable: fp32 compute (accuracy level 1)"
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags |= set(value.split())
    found = [f for f in INT8_DOT_FLAGS if f in flags]
    if found:
        return 4, f"CPU flags {', '.join(found)}: int8 dot products (accuracy level 4)"
    return 1, "no int8 dot-product flag among " + ", ".join(INT8_DOT_FLAGS) + ": fp32 compute (accuracy level 1)"


@dataclass(frozen=True)
class Site:
    """One linear to quantize: its node, weight initializer, layout and parameters."""

    node: str
    weight: str
    gemm: bool            # Gemm(transB=1): the initializer is [N,K]; MatMul: [K,N]
    params: tuple[str, ...]


def choose_sites(model: onnx.ModelProto, params: dict[str, np.ndarray], exclude: list[str],
                 block: int) -> tuple[list[Site], list[dict]]:
    """The linears to quantize and, for the others, why they stay as they are."""
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    sites, kept = [], []
    for c in choose_linears(model, params, exclude):
        node, dims = nodes[c.node], tuple(inits[c.weight].dims)
        reason = c.reason or _layout_problem(node, dims, block)
        if reason:
            width = {"K": _input_width(node, dims)} if len(dims) == 2 and not c.reason else {}
            kept.append(c.to_dict() | {"reason": reason} | width)           # K: kept for its layout (block_note)
        else:
            sites.append(Site(c.node, c.weight, node.op_type == "Gemm", c.params))
    return sites, kept


def _input_width(node: onnx.NodeProto, dims: tuple) -> int:
    """K of a 2-D linear weight: Gemm keeps W [N,K] (transB), MatMul W.T [K,N]."""
    return dims[1] if node.op_type == "Gemm" else dims[0]


def _layout_problem(node: onnx.NodeProto, dims: tuple, block: int) -> str | None:
    if len(dims) != 2:
        return f"weight of rank {len(dims)}"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or not attrs.get("transB", 0)
                                   or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0):
        return "a Gemm other than x @ W.T + b"
    k = _input_width(node, dims)
    if k % block:
        return f"input dimension {k} is not a multiple of the block size {block}"
    return None


def matmul_weight(model: onnx.ModelProto, site: Site) -> np.ndarray:
    """The site's weight in the MatMul layout [K,N], fp32."""
    init = next(i for i in model.graph.initializer if i.name == site.weight)
    w = numpy_helper.to_array(init).astype(np.float32)
    return w.T if site.gemm else w


def quantize_sites(model: onnx.ModelProto, sites: list[Site], cfg: WeightOnlyConfig,
                   clips: dict[str, np.ndarray] | None = None) -> dict[str, Quantized]:
    """{weight initializer: its codes and scales}; a weight shared by several nodes is quantized once."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for s in sites:
        if s.weight not in out:
            w = numpy_helper.to_array(inits[s.weight]).astype(np.float32)
            out[s.weight] = quantize(w.T if s.gemm else w, cfg.bits, cfg.block, (clips or {}).get(s.weight))
    return out


def _bias(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict) -> str | None:
    """A Gemm's bias as a 1-D initializer name (reshaped in place when stored [1,N])."""
    if len(node.input) < 3 or not node.input[2]:
        return None
    b = inits[node.input[2]]
    if len(b.dims) != 1:
        flat = numpy_helper.from_array(numpy_helper.to_array(b).reshape(-1), f"{b.name}/flat")
        model.graph.initializer.append(flat)
        inits[flat.name] = flat
        return flat.name
    return b.name


def nbits_graph(model: onnx.ModelProto, sites: list[Site], quantized: dict[str, Quantized],
                accuracy_level: int) -> onnx.ModelProto:
    """The fp32 graph with every site a MatMulNBits node (same node and output names)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    by_node = {s.node: s for s in sites}
    added: set[str] = set()
    for k, node in enumerate(out.graph.node):
        site = by_node.get(node.name)
        if site is None:
            continue
        qw = quantized[site.weight]
        b_name, s_name = f"{site.weight}/q{qw.bits}", f"{site.weight}/scales"
        if site.weight not in added:
            b, s = nbits(qw)
            out.graph.initializer.extend([numpy_helper.from_array(b, b_name), numpy_helper.from_array(s, s_name)])
            added.add(site.weight)
        bias = _bias(out, node, inits) if site.gemm else None
        inputs = [node.input[0], b_name, s_name] + (["", "", bias] if bias else [])
        kq, nq = qw.shape
        new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name, domain=MS_DOMAIN, K=kq,
                               N=nq, bits=qw.bits, block_size=qw.block, accuracy_level=accuracy_level)
        new.metadata_props.extend(node.metadata_props)
        out.graph.node[k].CopyFrom(new)
    _drop_unused(out)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out


def dq_graph(low: onnx.ModelProto, sites: list[Site], quantized: dict[str, Quantized]) -> onnx.ModelProto:
    """The bf16 (AutoCast) graph with every site's weight a blocked DequantizeLinear, the scale in the weight's
    dtype (bf16, or fp32 where the node stayed fp32); opset raised to 21 when lower."""
    if _opset(low) < TRT_OPSET:
        low = onnx.version_converter.convert_version(low, TRT_OPSET)
    inits = {i.name: i for i in low.graph.initializer}
    nodes = {n.name: n for n in low.graph.node}
    made: dict[tuple[str, int], tuple[str, str]] = {}
    dqs = []
    for site in sites:
        node = nodes.get(site.node)
        if node is None or node.input[1] not in inits:
            raise UserError(f"the bf16 graph has no linear {site.node} with a constant weight (AutoCast changed it)")
        dtype = inits[node.input[1]].data_type
        qw = quantized[site.weight]
        key = (site.weight, dtype)
        if key not in made:
            q_name, s_name = f"{site.weight}/int{qw.bits}", f"{site.weight}/scale_{dtype}"
            scale = qw.scale.T if site.gemm else qw.scale                                  # [N,K/bs] or [K/bs,N]
            np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
            scale = np.ascontiguousarray(scale).astype(np_dtype)
            low.graph.initializer.extend([dq_tensor(qw, q_name, site.gemm), numpy_helper.from_array(scale, s_name)])
            made[key] = (q_name, s_name)
        q_name, s_name = made[key]
        w = f"{node.name}/dequantized_weight"
        dqs.append(helper.make_node("DequantizeLinear", [q_name, s_name], [w], name=f"{node.name}/DequantizeLinear",
                                    axis=1 if site.gemm else 0, block_size=qw.block))
        node.input[1] = w
    nodes_in_order = dqs + list(low.graph.node)             # a DQ reads only initializers: first is topological
    del low.graph.node[:]
    low.graph.node.extend(nodes_in_order)
    _drop_unused(low)
    low.ir_version = max(low.ir_version, 10)
    return low


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove initializers no node reads any more (the replaced float weights)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def site_record(site: Site, qw: Quantized) -> dict:
    """What the manifest records about one quantized linear."""
    k, n = qw.shape
    return {"node": site.node, "params": list(site.params), "weight": site.weight, "K": k, "N": n,
            "layout": "Gemm [N,K], DequantizeLinear axis 1" if site.gemm else "MatMul [K,N], DequantizeLinear axis 0"}
