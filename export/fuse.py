"""Sibling linears as one MatMul: projections that read the same tensor (q/k/v, gate/up) fused after tracing.

An ONNX IR pass (``onnx_ir``, run on the traced model before it is serialized) so the reference modules and the
checkpoint keys stay as they are. A linear is ``MatMul(x, W)`` with a constant weight (``W`` an initializer
``[K,N]`` after the ordinary export's folding, or ``Transpose(W [N,K])`` in the meta-device trace, whose
initializers are the checkpoint tensors), optionally followed by ``Add(bias [N])``. Two or more linears reading
the same ``x`` become::

    MatMul(x, Concat(W_i)) -> Add(Concat(b_i)) -> Split([N_i], axis=-1)

Where the weights hold values (the ordinary export) the Concats are computed here: one new initializer each.
On the meta device (the low-memory export) they stay Concat nodes of the original initializers, so every
initializer is still one checkpoint tensor whose external data points into the shards (integrity checks
unchanged), and ONNX Runtime / TensorRT fold each Concat once at load, as they already fold the Transposes there. Each new node carries the module scope the linears share (spot
checks cut one decoder layer out by scope).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCOPE_KEYS = ("pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy")


@dataclass(frozen=True)
class Linear:
    """One MatMul with a constant weight and its optional bias Add."""

    matmul: object               # ir.Node
    weight: object               # ir.Value: the initializer ([K,N], or [N,K] when transposed)
    transposed: bool             # the weight reaches the MatMul through Transpose(perm=[1,0])
    bias: object | None          # ir.Value: a 1-D initializer [N]
    nodes: tuple                 # the nodes the fusion replaces
    out: object                  # ir.Value: the linear's result (the Add's output when there is a bias)
    n: int


def _initializer(value) -> bool:
    return value is not None and value.is_initializer() and value.const_value is not None


def _dims(value) -> tuple | None:
    dims = tuple(value.shape) if value.shape is not None else ()
    return dims if all(isinstance(d, int) for d in dims) else None


def as_linear(node) -> Linear | None:
    """The linear a MatMul node computes, or None when its weight is not a constant 2-D tensor."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    w, nodes, transposed = node.inputs[1], [node], False
    if w is not None and not _initializer(w):
        t = w.producer()
        perm = t.attributes.get("perm") if t is not None else None
        if t is None or t.op_type != "Transpose" or not _initializer(t.inputs[0]) or len(w.uses()) != 1 \
                or (perm is not None and list(perm.as_ints()) != [1, 0]):
            return None
        w, transposed, nodes = t.inputs[0], True, [t, node]
    dims = _dims(w) if w is not None else None
    if dims is None or len(dims) != 2:
        return None
    n = dims[0] if transposed else dims[1]
    out, bias = node.outputs[0], None
    uses = list(out.uses())
    if len(uses) == 1 and uses[0].node.op_type == "Add" and not out.is_graph_output():
        add = uses[0].node
        other = add.inputs[1 - uses[0].idx]
        if _initializer(other) and _dims(other) == (n,):
            bias, out = other, add.outputs[0]
            nodes.append(add)
    return Linear(node, w, transposed, bias, tuple(nodes), out, n)


def sibling_groups(graph) -> list[list[Linear]]:
    """Linears reading the same tensor with the same weight layout, dtype, K and bias presence, in graph order."""
    groups: dict[tuple, list[Linear]] = {}
    for node in graph:
        lin = as_linear(node)
        if lin is None or lin.out.is_graph_output():
            continue
        k = _dims(lin.weight)[1 if lin.transposed else 0]
        key = (id(node.inputs[0]), lin.transposed, lin.weight.dtype, k, lin.bias is None)
        groups.setdefault(key, []).append(lin)
    return [g for g in groups.values() if len(g) > 1]


def _scope(group: list[Linear]) -> dict[str, str]:
    """The metadata the group's MatMuls agree on: the common prefix of their module scopes."""
    import ast

    out = {}
    for key in SCOPE_KEYS:
        lists = [ast.literal_eval(lin.matmul.metadata_props[key]) for lin in group
                 if key in lin.matmul.metadata_props]
        if len(lists) == len(group):
            common = []
            for items in zip(*lists):
                if any(i != items[0] for i in items):
                    break
                common.append(items[0])
            out[key] = repr(common)
    return out


def _values(values: list):
    """The initializers' arrays, or None when one is on the meta device (no data)."""
    if any(getattr(getattr(v.const_value, "raw", None), "is_meta", False) for v in values):
        return None
    return [v.const_value.numpy() for v in values]


def _concat(graph, values: list, axis: int, suffix: str, add, prefix: str):
    """One tensor of ``values`` side by side: a new initializer when they hold data, else a Concat node."""
    import onnx_ir as ir

    arrays = _values(values)
    if arrays is None:
        return add("Concat", values, suffix, axis=axis).outputs[0]
    out = ir.Value(name=f"{prefix}/fused_{suffix}", const_value=ir.tensor(np.concatenate(arrays, axis=axis)))
    graph.register_initializer(out)
    return out


def _fuse(graph, group: list[Linear]) -> None:
    """Replace one group by Concat -> MatMul -> Add -> Split."""
    import onnx_ir as ir

    first = group[0]
    name, meta = first.matmul.name or first.out.name, _scope(group)

    def add(op: str, inputs: list, suffix: str, **attrs):
        node = ir.node(op, inputs, attrs or None, name=f"{name}/fused_{suffix}", metadata_props=dict(meta))
        node.outputs[0].name = f"{name}/fused_{suffix}_out"
        graph.insert_before(first.matmul, node)
        return node

    weight = _concat(graph, [g.weight for g in group], 0 if first.transposed else 1, "weight", add, name)
    if first.transposed:
        weight = add("Transpose", [weight], "weight_t", perm=[1, 0]).outputs[0]
    y = add("MatMul", [first.matmul.inputs[0], weight], "matmul").outputs[0]
    if first.bias is not None:
        y = add("Add", [y, _concat(graph, [g.bias for g in group], 0, "bias", add, name)], "add").outputs[0]
    sizes = ir.Value(name=f"{name}/fused_split_sizes", const_value=ir.tensor(np.array([g.n for g in group], np.int64)))
    graph.register_initializer(sizes)
    split = ir.node("Split", [y, sizes], {"axis": -1}, num_outputs=len(group), name=f"{name}/fused_split",
                    metadata_props=dict(meta))
    graph.insert_before(first.matmul, split)
    for lin, part in zip(group, split.outputs):
        part.name, part.dtype, part.shape = f"{lin.out.name}/fused", lin.out.dtype, lin.out.shape
        lin.out.replace_all_uses_with(part)
    graph.remove([n for lin in group for n in reversed(lin.nodes)], safe=True)


def fuse_sibling_linears(model) -> int:
    """In place on an ``onnx_ir`` model: every group of sibling linears becomes one MatMul; returns the groups."""
    groups = sibling_groups(model.graph)
    for group in groups:
        _fuse(model.graph, group)
    return len(groups)
