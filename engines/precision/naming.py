"""Which model parameter each linear node of an exported graph applies (torch-free).

The exporter folds transposed weights into anonymous initializers (``val_59``) and names nodes by op
(``node_linear_4``), so a node's module is recovered from its weight's VALUES: an initializer equal to a
parameter ``W`` (Gemm) or to ``W.T`` (MatMul) is that parameter. A fused MatMul weight (the backbone's q/k/v and
gate/up, nextstep_trt.export.fuse) is the parameters' ``W.T`` side by side: its columns are walked, each run of
columns matched to the parameter whose first row equals its first column. Names are the model's own state-dict
keys (``layers.0.self_attn.q_proj.weight``, ``image_head.net.final_layer.linear.weight``), the same for every graph.
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


def row_index(params: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """{digest of a 2-D parameter's first row: parameter names}: where a run of a fused weight's columns starts."""
    index: dict[str, list[str]] = {}
    for name, value in params.items():
        if value.ndim == 2:
            index.setdefault(_digest(value[0]), []).append(name)
    return index


def column_parts(weight: np.ndarray, params: dict[str, np.ndarray], rows: dict[str, list[str]],
                 full: dict[str, list[str]]) -> list[tuple[str, int, int]]:
    """A MatMul weight [K,N] as runs of columns, each one parameter's ``W.T``: [(name, start, stop)], or [] when
    some column run matches no parameter."""
    parts, start = [], 0
    while start < weight.shape[1]:
        found = None
        for name in rows.get(_digest(weight[:, start]), []):
            stop = start + params[name].shape[0]
            if stop <= weight.shape[1] and name in full.get(_digest(weight[:, start:stop]), []):
                found = (name, start, stop)
                break
        if found is None:
            return []
        parts.append(found)
        start = found[2]
    return parts


def linear_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, str, str]]:
    """(node, activation input, weight initializer) for each MatMul/Gemm whose second input is a constant."""
    inits = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS and len(node.input) >= 2 and node.input[1] in inits \
                and node.input[0] not in inits:
            out.append((node, node.input[0], node.input[1]))
    return out


def weight_parts(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> dict[str, list[tuple[str, int, int]]]:
    """{linear node name: [(parameter, first column, end column)]}: one entry per parameter a whole weight equals
    (columns 0..N each), the column runs of a fused MatMul weight, or [] when nothing matched."""
    index, rows = parameter_index(params), None
    inits = {i.name: i for i in model.graph.initializer}
    cache: dict[str, list[tuple[str, int, int]]] = {}
    out = {}
    for node, _, weight in linear_nodes(model):
        if weight not in cache:
            value = numpy_helper.to_array(inits[weight])
            whole = sorted(set(index.get(_digest(value), [])))
            width = value.shape[-1] if node.op_type == "MatMul" else value.shape[0]
            cache[weight] = [(n, 0, width) for n in whole]
            if not whole and node.op_type == "MatMul" and value.ndim == 2:
                rows = rows if rows is not None else row_index(params)
                cache[weight] = column_parts(value, params, rows, index)
        out[node.name] = cache[weight]
    return out


def node_parameters(model: onnx.ModelProto, params: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """{linear node name: the parameter names its weight equals or, fused, is made of} (empty: none matched)."""
    return {node: [name for name, _, _ in parts] for node, parts in weight_parts(model, params).items()}


def check_globs(patterns: list[str] | tuple[str, ...] | None, names) -> None:
    """A UserError naming every ``--exclude`` glob that matches none of ``names`` (the model's parameter names):
    a typo there would otherwise quantize what the user meant to keep, silently."""
    from nextstep_trt.core.errors import UserError

    names = sorted(names)
    unused = [p for p in patterns or () if matches(names, [p]) is None]
    if unused:
        weights = [n for n in names if n.endswith(".weight")]
        picks = [n for n in weights if n.startswith("layers.0.")][:3] + \
            [n for n in weights if "res_blocks.0" in n][:1]
        examples = ", ".join(picks or names[:4])
        raise UserError(f"--exclude {', '.join(repr(p) for p in unused)} match(es) no parameter of the model: "
                        "globs must match a whole name of the checkpoint (fnmatch, case-sensitive: '*.q_proj.*' for "
                        f"every layer's q_proj), e.g. {examples}")


def matches(names: list[str], patterns: list[str]) -> str | None:
    """The first glob pattern (fnmatch) that any of ``names`` matches, else None."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(n, pattern) for n in names):
            return pattern
    return None
