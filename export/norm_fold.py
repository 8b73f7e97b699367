"""Modulated norms as one LayerNormalization: ``LayerNorm(x) * scale + shift`` with per-row ``scale``/``shift``.

An ONNX IR pass (``onnx_ir``) run on a traced model, like ``fuse.py``. The head's adaLN blocks compute
``in_ln(x) * (1 + scale) + shift``; the fused sampler folds the norm's own weight and bias into the step's
modulation once per call (``graphs.HeadSamplerGraph``), which leaves ``LayerNormalization(x, ones) -> Mul(s) ->
Add(t)`` in every step. ONNX defines LayerNormalization's second stage as ``Add(Mul(Normalized, Scale), B)``,
broadcasting like any Mul/Add, so the three nodes become ``LayerNormalization(x, s, t)``: one kernel instead of
three, 10 of a step's 39 nodes on a 4-block head. ONNX Runtime's CPU kernel computes the per-row form
(``tests/export/test_norm_fold.py`` compares it with the three nodes) and TensorRT-RTX parses and builds it (the
fp32 to int4 sampler builds for 8.9 and 12.0 in the tests).
"""
from __future__ import annotations

import numpy as np


def _const(value, fill: float) -> bool:
    """Whether ``value`` is an initializer holding ``fill`` everywhere (absent counts as 0 for a bias)."""
    if value is None:
        return fill == 0.0
    if not value.is_initializer() or value.const_value is None:
        return False
    return bool(np.all(value.const_value.numpy() == fill))


def _only_use(value, op: str):
    """(consumer node, the other operand) when ``value``'s one use is a binary ``op`` whose other operand is a
    computed tensor of ``value``'s shape; else None."""
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    node, idx = uses[0].node, uses[0].idx
    if node.op_type != op or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    other = node.inputs[1 - idx]
    if other is None or other.is_initializer() or other.shape is None or value.shape is None \
            or tuple(other.shape) != tuple(value.shape):
        return None
    return node, other


def _fold(graph, norm) -> bool:
    import onnx_ir as ir

    x, scale, *bias = norm.inputs
    if not (_const(scale, 1.0) and _const(bias[0] if bias else None, 0.0)) \
            or any(o.uses() for o in norm.outputs[1:]):
        return False
    mul = _only_use(norm.outputs[0], "Mul")
    add = mul and _only_use(mul[0].outputs[0], "Add")
    if not add or add[0].outputs[0].is_graph_output():
        return False
    fused = ir.node("LayerNormalization", [x, mul[1], add[1]], dict(norm.attributes), name=f"{norm.name}/modulated",
                    metadata_props=dict(norm.metadata_props))
    graph.insert_before(add[0], fused)
    out = add[0].outputs[0]
    fused.outputs[0].name, fused.outputs[0].dtype, fused.outputs[0].shape = f"{out.name}/ln", out.dtype, out.shape
    out.replace_all_uses_with(fused.outputs[0])
    graph.remove([add[0], mul[0], norm], safe=True)
    return True


def fold_modulated_norms(model) -> int:
    """In place on an ``onnx_ir`` model: every ``LayerNorm(x) * s + t`` with computed ``s``, ``t`` of x's shape
    becomes one LayerNormalization; returns how many."""
    norms = [n for n in model.graph if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")]
    return sum(_fold(model.graph, n) for n in norms)
