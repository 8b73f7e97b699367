"""FP8 graphs: per-tensor E4M3 Q/DQ on the linear layers of the backbone and the head (torch-free).

Our own pass on onnx-graphsurgeon rather than ModelOpt's ONNX quantizer: ModelOpt 0.47's FP8 path quantizes
weights per channel (``per_channel=True`` is hard-coded in ``modelopt.onnx.quantization.fp8``) where design.md
asks for per tensor, calibrates through a reader of fixed-shape batches where ours come from the loop at every
prompt length, cache length and timestep, and picks MatMuls by TensorRT speed heuristics (GEMV, K/N < 16) and
attention BMMs too. Here a linear layer is a MatMul/Gemm whose weight equals a model parameter; its activation
gets Q->DQ with scale amax/448 (amax = max |x| of the fp32 graph's tensor over the calibration inputs), its
weight is stored as FLOAT8E4M3FN with scale max|W|/448 and a DequantizeLinear. Everything else stays fp32.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx

from nextstep_trt.export.profile import SAMPLERS

from .naming import linear_nodes, matches, node_parameters

E4M3_MAX = 448.0
FP8_OPSET = 19            # the first opset whose QuantizeLinear/DequantizeLinear take FLOAT8E4M3FN
FP8_GRAPHS = ("backbone", "head_step", *SAMPLERS)

# Parameters (state-dict key globs) whose linear layers stay high precision; ``--exclude`` replaces this list.
FP8_EXCLUDE = [
    "embed_tokens.*",                  # token embeddings
    "lm_head.*",
    "image_in_projector.*",            # image tokens -> hidden
    "image_out_projector.*",           # hidden -> the head's condition
    "image_head.net.time_embed.*",     # the head's timestep embedding MLP
    "image_head.net.cond_embed.*",     # the head's condition embedding
    "*.adaLN_modulation.*",            # shift/scale/gate of every res block and the final layer
    "image_head.net.final_layer.*",    # the velocity output layer
]


@dataclass(frozen=True)
class LinearChoice:
    """One MatMul/Gemm with a constant weight: its tensors, its parameter, and whether it stays high precision."""

    node: str
    activation: str
    weight: str
    params: tuple[str, ...]
    reason: str | None = None      # why it stays high precision; None: quantized

    def to_dict(self) -> dict:
        return asdict(self)


def choose_linears(model: onnx.ModelProto, params: dict[str, np.ndarray], exclude: list[str]) -> list[LinearChoice]:
    """Every linear node with its parameter and, when it stays high precision, the reason."""
    names = node_parameters(model, params)
    out = []
    for node, activation, weight in linear_nodes(model):
        found = tuple(names.get(node.name, []))
        pattern = matches(list(found), exclude)
        reason = "no model parameter matched its weight" if not found else \
            (f"excluded by {pattern!r}" if pattern else None)
        out.append(LinearChoice(node.name, activation, weight, found, reason))
    return out


def _fp8(array: np.ndarray) -> np.ndarray:
    import ml_dtypes

    return np.asarray(np.clip(array, -E4M3_MAX, E4M3_MAX)).astype(ml_dtypes.float8_e4m3fn)


def insert_qdq(model: onnx.ModelProto, choices: list[LinearChoice],
               amax: dict[str, float]) -> tuple[onnx.ModelProto, list[dict]]:
    """Q/DQ the chosen linears' activations and weights; returns the graph and one record per quantized node."""
    import onnx_graphsurgeon as gs

    model = onnx.version_converter.convert_version(model, max(FP8_OPSET, _opset(model)))
    graph = gs.import_onnx(model)
    tensors, nodes = graph.tensors(), {n.name: n for n in graph.nodes}
    zero = gs.Constant("fp8_zero_point", _fp8(np.zeros((), np.float32)))
    dq_of: dict[str, gs.Variable] = {}
    records = []
    for c in choices:
        if c.reason is not None or amax.get(c.activation, 0.0) <= 0.0:
            continue
        node = nodes[c.node]
        if c.activation not in dq_of:
            dq_of[c.activation] = _qdq(graph, tensors[c.activation], amax[c.activation] / E4M3_MAX, zero)
        if c.weight not in dq_of:
            dq_of[c.weight] = _weight_dq(graph, tensors[c.weight], c.params[0], zero)
        node.inputs[0], node.inputs[1] = dq_of[c.activation], dq_of[c.weight]
        records.append({"node": c.node, "param": c.params[0], "activation": c.activation,
                        "amax": amax[c.activation], "weight_amax": float(np.abs(tensors[c.weight].values).max())})
    graph.cleanup().toposort()
    return gs.export_onnx(graph), records


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _qdq(graph, x, scale: float, zero):
    """x -> QuantizeLinear -> DequantizeLinear (per-tensor E4M3); returns the dequantized tensor."""
    import onnx_graphsurgeon as gs

    s = gs.Constant(f"{x.name}/fp8_scale", np.array(scale, np.float32))
    q = gs.Variable(f"{x.name}/fp8", zero.values.dtype, x.shape)
    dq = gs.Variable(f"{x.name}/fp8_dequantized", np.float32, x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", f"{x.name}/QuantizeLinear", inputs=[x, s, zero], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{x.name}/DequantizeLinear", inputs=[q, s, zero], outputs=[dq]))
    return dq


def _weight_dq(graph, w, param: str, zero):
    """An fp32 weight -> its E4M3 values (scale max|W|/448) and a DequantizeLinear."""
    import onnx_graphsurgeon as gs

    values = np.asarray(w.values, np.float32)
    scale = np.float32(max(float(np.abs(values).max()), 1e-12) / E4M3_MAX)
    q = gs.Constant(f"{param}/fp8", _fp8(values / scale))
    s = gs.Constant(f"{param}/fp8_scale", np.array(scale, np.float32))
    dq = gs.Variable(f"{param}/fp8_dequantized", np.float32, w.shape)
    graph.nodes.append(gs.Node("DequantizeLinear", f"{param}/DequantizeLinear", inputs=[q, s, zero], outputs=[dq]))
    return dq
