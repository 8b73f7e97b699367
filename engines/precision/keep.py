"""Which nodes of an fp32 graph stay fp32 in its fp16/bf16 graph, and why (torch-free).

Kept: norms (LayerNormalization/GroupNorm/InstanceNorm ops and ReduceMean-rooted RMSNorm/LayerNorm chains),
Softmax, residual Adds (``x + f(x)``), RoPE and timestep cos/sin with the float math that feeds them, the output
region (everything between the last weighted layer and a graph output: the fused sampler's integrator), and
(fp16) every node whose fp32 activation range measured on the calibration inputs exceeds a safe fp16 magnitude.
"""
from __future__ import annotations

import onnx

from nextstep_trt.export.graph_edit import GraphIndex as Edges

NORM_OPS = ("LayerNormalization", "GroupNormalization", "InstanceNormalization", "RMSNormalization")
KEEP_OPS = {**{op: "norm" for op in NORM_OPS}, "Softmax": "softmax"}
_NORM_CHAIN = ("Add", "Sqrt", "Reciprocal", "Div", "Mul", "Sub")
_SEARCH_LIMIT = 5000          # nodes visited per residual test


class GraphIndex(Edges):
    """Producers, consumers (``graph_edit.GraphIndex``), constants and element types of one graph."""

    def __init__(self, model: onnx.ModelProto):
        super().__init__(model.graph)
        self.nodes = list(model.graph.node)
        self.consts = {i.name for i in model.graph.initializer} | \
            {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        inferred = onnx.shape_inference.infer_shapes(model)
        infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        self.elem = {v.name: v.type.tensor_type.elem_type for v in infos}
        self.elem.update({i.name: i.data_type for i in model.graph.initializer})

    def is_float(self, tensor: str) -> bool:
        return self.elem.get(tensor) == onnx.TensorProto.FLOAT

    def reaches(self, start: str, target: str) -> bool:
        """Whether ``target`` is ``start`` or one of its ancestors (bounded backward search)."""
        stack, seen = [start], set()
        while stack and len(seen) < _SEARCH_LIMIT:
            t = stack.pop()
            if t == target:
                return True
            node = self.producer.get(t)
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            stack.extend(i for i in node.input if i and i not in self.consts)
        return False


def norm_chains(g: GraphIndex) -> set[str]:
    """ReduceMean-rooted norms: the square/centre before it and Add/Sqrt/Reciprocal/Div up to the normalizing Mul."""
    out: set[str] = set()
    for r in (n for n in g.nodes if n.op_type == "ReduceMean"):
        region, sources = {r.name}, {r.input[0]}
        before = g.producer.get(r.input[0])
        if before is not None and before.op_type in ("Pow", "Mul", "Sub"):
            region.add(before.name)
            sources |= set(before.input)
        frontier = [r.output[0]]
        for _ in range(6):
            nxt = []
            for t in frontier:
                for c in g.consumers[t]:
                    others = [i for i in c.input if i != t and i not in g.consts]
                    if c.op_type not in _NORM_CHAIN or (others and not set(others) <= sources):
                        continue
                    region.add(c.name)
                    if not (others and c.op_type in ("Mul", "Div", "Sub")):
                        nxt.extend(c.output)          # still inside the statistic; the normalizing op ends it
            frontier = nxt
        out |= region
    return out


def rope_nodes(g: GraphIndex, depth: int = 8) -> set[str]:
    """Cos/Sin and the float math feeding them (position x inverse frequency), back to inputs or int tensors."""
    out: set[str] = set()
    stack = [(n, 0) for n in g.nodes if n.op_type in ("Cos", "Sin")]
    while stack:
        node, d = stack.pop()
        if node.name in out:
            continue
        out.add(node.name)
        for i in node.input:
            p = g.producer.get(i)
            if p is not None and d < depth and i not in g.consts and g.is_float(i):
                stack.append((p, d + 1))
    return out


def residual_adds(g: GraphIndex) -> set[str]:
    """Adds of two activations where one is an ancestor of the other: ``x + f(x)``."""
    out = set()
    for n in g.nodes:
        if n.op_type != "Add" or len(n.input) != 2 or any(i in g.consts for i in n.input):
            continue
        a, b = n.input
        if g.reaches(b, a) or g.reaches(a, b):
            out.add(n.name)
    return out


WEIGHTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def output_region(g: GraphIndex, outputs: list[str]) -> set[str]:
    """Nodes from which a graph output is reached without passing a weighted op (a MatMul/Gemm/Conv with a
    constant weight): what follows the last layer, e.g. the fused sampler's integrator (CFG combine, Euler
    update, noise) whose state a low-precision type would round at every step."""
    out: set[str] = set()
    stack = list(outputs)
    while stack:
        node = g.producer.get(stack.pop())
        if node is None or node.name in out:
            continue
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in g.consts:
            continue
        if any(g.is_float(o) for o in node.output):
            out.add(node.name)
        stack.extend(i for i in node.input if i and i not in g.consts)
    return out


def range_nodes(g: GraphIndex, amax: dict[str, float], limit: float) -> set[str]:
    """Nodes with a float input or output whose measured fp32 max |x| exceeds ``limit``."""
    return {n.name for n in g.nodes
            if any(amax.get(t, 0.0) > limit for t in list(n.input) + list(n.output))}


def keep_fp32(model: onnx.ModelProto, amax: dict[str, float] | None = None,
              limit: float | None = None) -> dict[str, str]:
    """{node name: reason} for every node that stays fp32 (first reason wins)."""
    g = GraphIndex(model)
    keep: dict[str, str] = {n.name: KEEP_OPS[n.op_type] for n in g.nodes if n.op_type in KEEP_OPS}
    rules = (("norm", norm_chains(g)), ("cos_sin", rope_nodes(g)), ("residual", residual_adds(g)),
             ("output", output_region(g, [o.name for o in model.graph.output])))
    for reason, names in rules:
        for name in names:
            keep.setdefault(name, reason)
    if amax is not None and limit is not None:
        for name in range_nodes(g, amax, limit):
            keep.setdefault(name, "range")
    return keep
