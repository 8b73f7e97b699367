"""The ONNX Runtime-only backbone graph (the int4/int8 ``MatMulNBits`` deployment) in the kernels ONNX Runtime's CPU
provider runs best, the rewrites onnxruntime-genai's builder makes (torch-free):

* attention: RotaryEmbedding + GroupQueryAttention per layer (``ort_attention.py``);
* a bias ``Add`` after a ``MatMulNBits`` (the fused q/k/v bias) moves into the node's bias input.

Each pass keeps the graph's inputs and outputs; ``fuse_for_ort`` runs them all and returns the manifest's record.
Not done: residual Add + RMSNorm as ``SkipSimplifiedLayerNormalization`` (the peer has it). It joins one layer's
last residual to the next layer's first norm, so a decoder layer can no longer be cut out alone for the
``--low-memory`` spot check, and it measured within this VM's noise (16 of ~190 kernels per step). Nor RoPE inside
GroupQueryAttention (``do_rotary`` on the packed q/k/v, 24 kernels fewer per step): with ONNX Runtime 1.32's CPU
kernel, a prompt whose rows have different positions (left pads) came back with wrong keys in ``present`` for every
row but the first (its attention output was right), so the cache would be wrong from the first decode step on.
"""
from __future__ import annotations

import onnx

from .graph_edit import GraphIndex
from .ort_attention import fuse_attention


def fold_nbits_bias(model: onnx.ModelProto) -> int:
    """In place: ``MatMulNBits -> Add(bias [N])`` as one MatMulNBits with its bias input; returns how many."""
    ix, gone = GraphIndex(model.graph), set()
    for n in model.graph.node:
        if n.op_type != "MatMulNBits" or len(n.input) > 3:
            continue
        add = ix.single_use(n.output[0], "Add")
        bias = [i for i in add.input if i != n.output[0]] if add is not None else []
        size = {a.name: a.i for a in n.attribute}.get("N")
        if len(bias) != 1 or bias[0] not in ix.inits or list(ix.inits[bias[0]].dims) != [size]:
            continue
        n.input[:] = [*n.input[:3], "", "", bias[0]]
        n.output[0] = add.output[0]
        gone.add(id(add))
    keep = [n for n in model.graph.node if id(n) not in gone]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return len(gone)


def fuse_for_ort(model: onnx.ModelProto, bb) -> dict:
    """In place: every rewrite above on the backbone graph (``bb`` its BackboneConfig); the manifest's record."""
    return {"attention": fuse_attention(model, bb), "biases_in_matmulnbits": fold_nbits_bias(model)}
