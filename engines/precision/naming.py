"""Which model parameter each linear node of an exported graph applies (torch-free).

The exporter folds transposed weights into anonymous initializers (``val_59``) and names nodes by op
(``node_linear_4``), so a node's module is recovered from its weight's VALUES: an initializer equal to a
parameter ``W`` (Gemm) or to ``W.T`` (MatMul) is that parameter. Names are the model's own state-dict keys
(``layers.0.self_attn.q_proj.weight``, ``image_head.net.final_layer.linear.weight``), the same for every graph.
"""
from __future__ import annotations

import fnmatch
import hashlib

import numpy as np
import onnx
from onnx import numpy_helper

LINEAR_OPS = ("MatMul", "Gemm")


def _digest(array: np.ndarray) -> str:
    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def parameter_index(params: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """{digest of W and of W.T: parameter names} for every 2-D parameter."""
    index: dict[str, list[str]] = {}
    for name, value in params.items():
        if value.ndim == 2:
            for form in (value, value.T):
                index.setdefault(_digest(form), []).append(name)
    return index


def linear_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """(node, activation input, weight initializer) for each MatMul/Gemm whose second input is a constant."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS and len(node.input) >= 2 and node.input[1] in inits \
                and node.input[0] not in inits:
            out.append((node, node.input[0], node.input[1]))
    return out


def node_parameters(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """{linear node name: the parameter names its weight equals} (empty list: no parameter matched)."""
    index = parameter_index(params)
    inits = {i.name: i for i in model.graph.initializer}
    cache: dict[str, list[str]] = {}
    out = {}
    for node, _, weight in linear_nodes(model):
        if weight not in cache:
            cache[weight] = sorted(set(index.get(_digest(numpy_helper.to_array(inits[weight])), [])))
        out[node.name] = cache[weight]
    return out


def matches(names: list[str], patterns: list[str]) -> str | None:
    """The first glob pattern (fnmatch) that any of ``names`` matches, else None."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return pattern
    return None
