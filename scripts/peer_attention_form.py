"""A timing-only variant of our int4/int8 ONNX Runtime backbone in onnxruntime-genai's attention form.

    python scripts/peer_attention_form.py MODEL ART/int4/backbone.onnx OUT.onnx

Every layer's GroupQueryAttention gets the packed q/k/v (the fused QKV MatMulNBits' output, no Split), rotates q
and k itself (``do_rotary`` with a cos/sin table of MAX_POSITIONS positions) and drops the attention bias; the
separate RotaryEmbeddings, the Split and the mask prologue then fall away as dead. The kernel then takes a row's
positions and valid slots from ``seqlens_k`` alone, so the result is right only where every row's cache is a
contiguous prefix and its positions equal its slot indices: true for the bench's decode step, false for the
left-padded CFG rows of a real prompt (why the product graph keeps the bias). Made to measure how much of the gap
to the peer is the attention form (docs/weight-only-speed-log.md); time it with ``scripts/session_copies.py``.
"""
from __future__ import annotations

import sys
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


def main(argv: list[str]) -> None:
    model_dir, src, dst = argv
    bb = load_config(Path(model_dir)).backbone
    model = onnx.load(src)
    peer_form(model, bb.head_dim, bb.rope_theta)
    onnx.save(model, dst, save_as_external_data=True, location=f"{Path(dst).name}.data")
    print(f"{dst}: {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main(sys.argv[1:])
