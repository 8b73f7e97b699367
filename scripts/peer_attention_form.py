"""A timing-only variant of our int4/int8 ONNX Runtime backbone in onnxruntime-genai's attention form.

    python scripts/peer_attention_form.py MODEL ART/int4/backbone.onnx OUT.onnx [--full]

Every layer's GroupQueryAttention gets the packed q/k/v (the fused QKV MatMulNBits' output, no Split), rotates q
and k itself (``do_rotary`` with a cos/sin table of MAX_POSITIONS positions) and drops the attention bias; the
separate RotaryEmbeddings, the Split and the mask prologue then fall away as dead. The kernel then takes a row's
positions and valid slots from ``seqlens_k`` alone, so the result is right only where every row's cache is a
contiguous prefix and its positions equal its slot indices: true for the bench's decode step, false for the
left-padded CFG rows of a real prompt (why the product graph keeps the bias). Made to measure how much of the gap
to the peer is the attention form (docs/weight-only-speed-log.md); time it with ``scripts/session_copies.py``.

``--full`` goes the rest of the way to the peer's graph: the ``new_key``/``new_value`` outputs (and their slices)
are dropped, as the peer's graph has only the in-place ``present`` buffers, and after ONNX Runtime's own fusions
(OUT is then its optimized model, level "extended": for this machine only) every residual ``Add`` feeding
an RMSNorm becomes one ``SkipSimplifiedLayerNormalization``. What then still differs from the peer's graph is what
our model computes and a text-only Qwen2 does not: the image-token input projection and its select, and ``cond``.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from nextstep_trt.export.graph_edit import GraphIndex, drop_dead, toposort
from nextstep_trt.ref.backbone import rope_cos_sin
from nextstep_trt.ref.config import load_config

MAX_POSITIONS = 4096


def rotary_tables(head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [MAX_POSITIONS, head_dim/2]: the reference's own RoPE angles (``rope_cos_sin``), first half."""
    import torch

    cos, sin = rope_cos_sin(torch.arange(MAX_POSITIONS)[None], head_dim, theta)     # [1,1,P,D] each
    return tuple(np.ascontiguousarray(t[0, 0, :, :head_dim // 2].numpy()) for t in (cos, sin))


def peer_form(model: onnx.ModelProto, head_dim: int, theta: float) -> None:
    """In place: every GroupQueryAttention reads the packed q/k/v and rotates it; no attention bias."""
    graph, ix = model.graph, GraphIndex(model.graph)
    cos, sin = rotary_tables(head_dim, theta)
    graph.initializer.extend([numpy_helper.from_array(cos, "peer_form/cos"),
                              numpy_helper.from_array(sin, "peer_form/sin")])
    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            continue
        rope_q = ix.producer[node.input[0]]
        split = ix.producer[rope_q.input[0]]
        assert rope_q.op_type == "RotaryEmbedding" and split.op_type == "Split", node.name
        past_key, past_value, seqlens, total = node.input[3:7]
        node.input[:] = [split.input[0], "", "", past_key, past_value, seqlens, total,
                         "peer_form/cos", "peer_form/sin"]
        node.attribute.extend([helper.make_attribute("do_rotary", 1),
                               helper.make_attribute("rotary_interleaved", 0)])
    drop_dead(graph)
    toposort(graph)


def drop_new_outputs(model: onnx.ModelProto) -> None:
    """In place: no ``new_*`` graph outputs (nor the slices that made them); the ``present_*`` buffers stay."""
    keep = [o for o in model.graph.output if not o.name.startswith("new_")]
    del model.graph.output[:]
    model.graph.output.extend(keep)
    drop_dead(model.graph)


def ort_optimized(src: Path, dst: Path) -> onnx.ModelProto:
    """``src`` after ONNX Runtime's level-"extended" fusions (RMSNorm, QuickGelu), saved at ``dst`` and loaded."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(dst)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", f"{dst.name}.data")
    so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(dst))


def skip_norms(model: onnx.ModelProto) -> int:
    """In place: ``Add(a, b) -> SimplifiedLayerNormalization`` as one SkipSimplifiedLayerNormalization whose fourth
    output (a + b) feeds the Add's other readers; returns how many."""
    ix, fused = GraphIndex(model.graph), 0
    for norm in [n for n in model.graph.node if n.op_type == "SimplifiedLayerNormalization"]:
        add = ix.producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or any(i in ix.inits for i in add.input):
            continue
        eps = [a.f for a in norm.attribute if a.name == "epsilon"]
        model.graph.node.append(helper.make_node(
            "SkipSimplifiedLayerNormalization", [*add.input, norm.input[1]], [norm.output[0], "", "", add.output[0]],
            name=f"{norm.name}/skip", domain="com.microsoft", epsilon=eps[0] if eps else 1e-6))
        model.graph.node.remove(norm)
        model.graph.node.remove(add)
        fused += 1
    toposort(model.graph)
    return fused


def save(model: onnx.ModelProto, dst: Path) -> None:
    onnx.save(model, str(dst), save_as_external_data=True, location=f"{dst.name}.data")
    print(f"{dst}: {len(model.graph.node)} nodes")


def main(argv: list[str]) -> None:
    full = "--full" in argv
    model_dir, src, dst = [Path(a) for a in argv if a != "--full"]
    bb = load_config(model_dir).backbone
    model = onnx.load(src)
    peer_form(model, bb.head_dim, bb.rope_theta)
    if not full:
        return save(model, dst)
    drop_new_outputs(model)
    with tempfile.TemporaryDirectory() as tmp:
        save(model, Path(tmp) / "stage.onnx")
        model = ort_optimized(Path(tmp) / "stage.onnx", Path(tmp) / "optimized.onnx")
    print(f"{skip_norms(model)} residual Add + RMSNorm pairs fused")
    save(model, dst)


if __name__ == "__main__":
    main(sys.argv[1:])
