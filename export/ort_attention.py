"""ONNX Runtime's fused attention in the backbone: RoPE + GQA of every layer as two contrib kernels (torch-free).

The exported backbone writes attention the way TensorRT fuses it (design.md §2): RoPE as Split/Neg/Concat/Mul/Add,
then MatMul -> Softmax -> MatMul over concat(past, new), ~30 kernels per layer on ONNX Runtime's CPU provider. A
graph that only ONNX Runtime runs (the int4/int8 ``MatMulNBits`` deployment) can instead use the contrib ops
onnxruntime-genai builds::

    q, k  = RotaryEmbedding(q_lin), RotaryEmbedding(k_lin)            # com.microsoft, rotate-half
    out   = GroupQueryAttention(q, k, v_lin, past_key.i, past_value.i, seqlens_k, total, attention_bias)

with the graph's contract unchanged (same inputs, same ``new_key.i`` / ``new_value.i`` and ``cond`` outputs):

* ``p``, the end of the written slots, is read from ``past_mask`` (one past the last valid slot of any row).
  GroupQueryAttention attends the first ``p`` slots of the cache plus the new tokens; the reference attends all
  ``C`` slots plus the new tokens, but slots past ``p`` are masked there, and softmax over keys does not depend on
  their order, so the two are the same attention. Invalid slots before ``p`` (left pads) and the causal/pad mask of
  the new tokens come from the reference's own additive bias, cut to ``[B,1,S,p+S]``.
* Each layer's ``present_key.i`` / ``present_value.i`` are extra graph outputs of capacity ``C``: a caller that
  binds them to the very buffers it feeds as ``past_key.i`` / ``past_value.i`` (the runtime's cache, with
  ``p + S <= C``) lets GroupQueryAttention write the new K/V into the cache and read it in place; unbound, ONNX
  Runtime allocates them and the kernel copies the ``p`` written slots (as the concat did).
* ONNX Runtime's CPU kernel takes several new tokens after a non-empty cache only for one row at a time ("batch_size
  must be 1 when sequence_length > 1 and past context is given"): ``run_rows`` runs such a call row by row. The
  generation loop never makes one (one prefill on an empty cache, then one token per step).
* RotaryEmbedding reads its cos/sin from a cache indexed by position: the graph's own cos/sin of this call (the
  reference's ``rope_cos_sin``), flattened to ``[B*S, D/2]`` and indexed by ``arange(B*S)``, so no table of every
  position is stored and the angles are the reference's to the bit.

The rewrite works on structure, not names: for layer ``i`` it starts at the ``Concat(past_key.i, new_key.i)`` of
the exported attention and finds q/k/v as the fused QKV ``Split``'s outputs (``fuse.py``), the output projection as
the first weighted MatMul downstream; any mismatch raises ``AttentionPatternError`` naming the layer, so a changed
reference never yields a silently unfused graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph_edit import GraphIndex, PatternError, drop_dead, toposort
from .spec import kv_names

MS_DOMAIN = "com.microsoft"
FUSED_OP = "GroupQueryAttention"
PRESENT = ("present_key", "present_value")     # extra outputs: the cache buffers, updated in place when bound
ROUTE = ("Unsqueeze", "Transpose", "Reshape", "MatMul", "FusedMatMul", "Mul", "Add", "Softmax", "Concat")
LINEAR_OPS = ("MatMul", "MatMulNBits", "Gemm")


class AttentionPatternError(PatternError):
    """The exported attention of a layer is not in the form this rewrite knows."""


@dataclass
class _Layer:
    q: str
    k: str
    v: str
    attn_out: str            # the tensor the output projection reads
    bias: str                # the reference's additive bias [B,1,S,C+S]
    scale: float
    meta: list               # the fused QKV Split's metadata (module scope): the new nodes belong to the layer


def _is_linear(ix: GraphIndex, n: onnx.NodeProto) -> bool:
    """A projection: MatMulNBits, or MatMul/Gemm of a weight (an initializer, or Transpose of one)."""
    if n.op_type not in LINEAR_OPS:
        return False
    if n.domain == MS_DOMAIN:
        return True
    w = ix.producer.get(n.input[1])
    return n.input[1] in ix.inits or (w is not None and w.op_type == "Transpose" and w.input[0] in ix.inits)


def _downstream(ix: GraphIndex, start: str, layer: int) -> tuple[str, str, float]:
    """From concat(past, new) keys: (tensor the output projection reads, the bias, the score scale)."""
    seen, frontier, bias, scale, attn_out = set(), [start], None, None, None
    while frontier:
        t = frontier.pop()
        for n in ix.consumers.get(t, []):
            if n.name in seen:
                continue
            seen.add(n.name)
            if _is_linear(ix, n):
                attn_out = t
                continue
            if n.op_type not in ROUTE:
                raise AttentionPatternError(f"layer {layer}: unexpected {n.op_type} ({n.name}) inside attention")
            consts = [c for c in (ix.const(i) for i in n.input) if c is not None and c.size == 1]
            if n.op_type == "Mul" and consts:
                scale = float(consts[0].reshape(-1)[0])
            u = [ix.producer.get(i) for i in n.input if i != t]
            if n.op_type == "Add" and u and u[0] is not None and u[0].op_type == "Unsqueeze":
                bias = u[0].input[0]
            frontier.extend(o for o in n.output if o)
    if attn_out is None or bias is None or scale is None:
        raise AttentionPatternError(f"layer {layer}: no output projection, bias or scale after {start}")
    return attn_out, bias, scale


def _source(ix: GraphIndex, tensor: str) -> str:
    """Walk back through Reshape/Transpose to the linear output a head tensor was made from."""
    node = ix.producer.get(tensor)
    while node is not None and node.op_type in ("Reshape", "Transpose"):
        tensor = node.input[0]
        node = ix.producer.get(tensor)
    return tensor


def _layer(ix: GraphIndex, i: int, past_key: str, new_key: str, new_value: str) -> _Layer:
    concat = ix.only(past_key, "Concat", i)
    if list(concat.input) != [past_key, new_key]:
        raise AttentionPatternError(f"layer {i}: keys are not concat({past_key}, {new_key})")
    attn_out, bias, scale = _downstream(ix, concat.output[0], i)
    v = _source(ix, new_value)
    split = ix.producer.get(v)
    if split is None or split.op_type != "Split" or len(split.output) != 3 or split.output[2] != v:
        raise AttentionPatternError(f"layer {i}: q/k/v are not the three outputs of one fused Split")
    return _Layer(split.output[0], split.output[1], v, attn_out, bias, scale, list(split.metadata_props))


class _Builder:
    """New nodes and tiny initializers, named under one prefix."""

    def __init__(self, prefix: str = "ort_attention"):
        self.prefix, self.nodes, self.inits, self.k = prefix, [], [], 0

    def const(self, name: str, value) -> str:
        full = f"{self.prefix}/{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def op(self, op: str, inputs: list[str], n_out: int = 1, name: str | None = None, outputs=None, meta=(),
           **attrs):
        self.k += 1
        base = f"{self.prefix}/{name or op.lower()}_{self.k}"
        outs = outputs or ([f"{base}_out{j}" for j in range(n_out)] if n_out > 1 else [f"{base}_out"])
        domain = MS_DOMAIN if op in ("RotaryEmbedding", FUSED_OP) else ""
        node = helper.make_node(op, inputs, outs, name=base, domain=domain, **attrs)
        node.metadata_props.extend(meta)
        self.nodes.append(node)
        return outs if len(outs) > 1 else outs[0]


def _shared(b: _Builder, ix: GraphIndex, bias: str, bb) -> dict[str, str]:
    """Per-call tensors every layer shares: rotary caches and positions, p, seqlens_k, total length, cut bias."""
    cos = [n for n in ix.graph.node if n.op_type == "Cos"]
    sin = [n for n in ix.graph.node if n.op_type == "Sin"]
    if len(cos) != 1 or len(sin) != 1 or cos[0].input != sin[0].input:
        raise AttentionPatternError("expected one Cos and one Sin of the same RoPE angles")
    cat = ix.producer.get(cos[0].input[0])
    if cat is None or cat.op_type != "Concat" or len(cat.input) != 2 or cat.input[0] != cat.input[1]:
        raise AttentionPatternError("the RoPE angles are not concat(freqs, freqs)")
    i64 = lambda name, v: b.const(name, np.array(v, np.int64))          # noqa: E731
    half, zero, one = i64("half", [-1, bb.head_dim // 2]), i64("zero", 0), i64("one", 1)
    ax0, ax1, ax3 = i64("axis0", [0]), i64("axis1", [1]), i64("axis3", [3])
    out = {"cos": b.op("Reshape", [b.op("Cos", [cat.input[0]]), half]),              # [B*S, D/2]
           "sin": b.op("Reshape", [b.op("Sin", [cat.input[0]]), half])}
    pos_shape = b.op("Shape", ["position_ids"])
    out["pos"] = b.op("Reshape", [b.op("Range", [zero, b.op("Size", ["position_ids"]), one]), pos_shape])
    mask = b.op("Cast", ["past_mask"], to=TensorProto.INT64)                         # [B,C]
    c = b.op("Squeeze", [b.op("Gather", [b.op("Shape", ["past_mask"]), ax1])])
    slots = b.op("Range", [one, b.op("Add", [c, one]), one])                         # 1..C
    p = b.op("Max", [b.op("ReduceMax", [b.op("Mul", [mask, slots])], keepdims=0), zero])   # written slots
    s = b.op("Gather", [pos_shape, ax1])                                             # [1] new tokens
    out["start"] = b.op("Unsqueeze", [p, ax0])                                        # [1] p
    out["end"] = total = b.op("Add", [out["start"], s])                              # [1] p + S
    out["total"] = b.op("Cast", [b.op("Squeeze", [total])], to=TensorProto.INT32)
    rows = b.op("Gather", [pos_shape, ax0])
    out["seqlens"] = b.op("Cast", [b.op("Expand", [b.op("Sub", [total, one]), rows])], to=TensorProto.INT32)
    past = b.op("Slice", [bias, i64("start", [0]), out["start"], ax3])                 # [B,1,S,p]
    new = b.op("Slice", [bias, b.op("Neg", [s]), i64("end", [np.iinfo(np.int64).max]), ax3])   # [B,1,S,S]
    out["bias"] = b.op("Concat", [past, new], axis=3)
    return out


def _rename_output(ix: GraphIndex, name: str) -> None:
    """Give the tensor ``name`` (a graph output) another name, so a new node can produce ``name``."""
    moved = f"{name}/unfused"
    node = ix.producer[name]
    node.output[:] = [moved if o == name else o for o in node.output]
    for n in ix.consumers.get(name, []):
        n.input[:] = [moved if x == name else x for x in n.input]


def fuse_attention(model: onnx.ModelProto, bb) -> dict:
    """In place: every layer's RoPE + attention of the backbone graph (``bb`` its BackboneConfig) as
    RotaryEmbedding x2 + GroupQueryAttention, with ``present_*`` outputs for an in-place cache; the manifest's
    record of it."""
    ix, num_layers = GraphIndex(model.graph), bb.num_layers
    names = {k: kv_names(k, num_layers) for k in ("past_key", "past_value", "new_key", "new_value", *PRESENT)}
    layers = [_layer(ix, i, names["past_key"][i], names["new_key"][i], names["new_value"][i])
              for i in range(num_layers)]
    if len({ly.bias for ly in layers}) != 1:
        raise AttentionPatternError("the layers do not share one attention bias")
    b = _Builder()
    shared = _shared(b, ix, layers[0].bias, bb)
    rot = [shared["pos"], shared["cos"], shared["sin"]]
    ax2 = b.const("axis2", np.array([2], np.int64))
    cache = {o.name: o for o in model.graph.input if o.name in names["past_key"] + names["past_value"]}
    for i, ly in enumerate(layers):
        q = b.op("RotaryEmbedding", [ly.q, *rot], name=f"rope_q.{i}", meta=ly.meta, interleaved=0,
                 num_heads=bb.num_heads)
        k = b.op("RotaryEmbedding", [ly.k, *rot], name=f"rope_k.{i}", meta=ly.meta, interleaved=0,
                 num_heads=bb.num_kv_heads)
        present = [names["present_key"][i], names["present_value"][i]]
        out = b.op(FUSED_OP, [q, k, ly.v, names["past_key"][i], names["past_value"][i], shared["seqlens"],
                              shared["total"], "", "", "", shared["bias"]], name=f"gqa.{i}", meta=ly.meta,
                   outputs=[f"{b.prefix}/gqa.{i}_out", *present], num_heads=bb.num_heads,
                   kv_num_heads=bb.num_kv_heads, scale=ly.scale)[0]
        for n in ix.consumers.get(ly.attn_out, []):
            n.input[:] = [out if x == ly.attn_out else x for x in n.input]
        for new, buf in zip((names["new_key"][i], names["new_value"][i]), present):        # slots p..p+S
            _rename_output(ix, new)
            b.op("Slice", [buf, shared["start"], shared["end"], ax2], outputs=[new], name=new, meta=ly.meta)
        for name, past in zip(present, (names["past_key"][i], names["past_value"][i])):
            out_vi = onnx.ValueInfoProto()
            out_vi.CopyFrom(cache[past])
            out_vi.name = name
            model.graph.output.append(out_vi)
    model.graph.node.extend(b.nodes)
    model.graph.initializer.extend(b.inits)
    drop_dead(model.graph)
    toposort(model.graph)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return {"op": f"{MS_DOMAIN}.RotaryEmbedding + {MS_DOMAIN}.{FUSED_OP}", "layers": len(layers),
            "in_place_outputs": f"{PRESENT[0]}.i / {PRESENT[1]}.i (bind to the past_* buffers)",
            "rows_one_at_a_time": "several new tokens after a non-empty cache (ONNX Runtime's CPU kernel)"}


def is_fused(model: onnx.ModelProto | onnx.GraphProto) -> bool:
    """Whether a graph (or a layer cut out of one) runs this rewrite's GroupQueryAttention."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    return any(n.op_type == FUSED_OP and n.domain == MS_DOMAIN for n in graph.node)


def in_place_outputs(outputs) -> dict[str, str]:
    """{present output: the past input whose buffer it may share} for the graph output names ``outputs``."""
    pairs = {}
    for name in outputs:
        kind, _, layer = name.partition(".")
        if kind in PRESENT:
            pairs[name] = f"past_{kind.removeprefix('present_')}.{layer}"
    return pairs


def continues_cache(feeds) -> bool:
    """Several rows, several new tokens and a non-empty cache: what the CPU kernel takes one row at a time."""
    ids, past = feeds["input_ids"], np.asarray(feeds["past_mask"])
    return ids.shape[0] > 1 and ids.shape[1] > 1 and bool(past.any())


def run_rows(run: Callable[[dict], dict], feeds: dict) -> dict:
    """``run(feeds)``, or for a call that ``continues_cache``, one run per row with the outputs stacked back."""
    if not continues_cache(feeds):
        return run(feeds)
    rows = feeds["input_ids"].shape[0]
    parts = [run({k: v[r:r + 1] for k, v in feeds.items()}) for r in range(rows)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
