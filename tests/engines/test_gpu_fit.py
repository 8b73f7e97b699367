"""`doctor --model`'s GPU section: int8/int4 weight bytes, which data-sheet GPUs each precision fits, HBM floors."""
from __future__ import annotations

import math

import pytest

from nextstep_trt.engines.estimate import gpu_sections, kv_cache_bytes
from nextstep_trt.engines.gpus import DATASHEET
from nextstep_trt.ref.config import large
from nextstep_trt.ref.weights import model_shapes


@pytest.fixture(scope="module")
def rows():
    (section,) = gpu_sections(large())
    assert "one fp16 scale per 32 weights" in section.title
    return dict(section.rows)


def _fits(text: str) -> set[str]:
    fit = text.split(": fits ", 1)[1].split("; not ")[0]
    return {name.split(" (")[0] for name in fit.split(", ")}


def test_large_int4_fits_a_12_gb_card_only_with_the_edge_profile(rows):
    edge = "fits, edge profile (--max-batch 1 --no-edit)"
    assert {"RTX 4070", "RTX 4080", "L4", "RTX 4090"} <= _fits(rows[f"int4 {edge}"])
    assert "RTX 4070" not in _fits(rows["int4 fits, default profile"])       # the 4-image, edit KV cache is 10 GB
    assert not {"RTX 4090", "L4", "RTX 4080", "RTX 4070"} & _fits(rows[f"bf16 {edge}"])   # 28 GB of bf16 weights
    assert "A100 80GB SXM" not in _fits(rows[f"fp8 {edge}"]) and "A100 80GB SXM (no fp8)" in rows[f"fp8 {edge}"]
    assert "RTX 4090" in _fits(rows[f"fp8 {edge}"]) and "RTX 4080" not in _fits(rows[f"int8 {edge}"])


def test_large_weight_bytes_and_floor(rows):
    shapes = model_shapes(large())
    quantized = sum(math.prod(s) for k, s in shapes.items() if k.startswith("layers.") and k.endswith("proj.weight"))
    graph = sum(math.prod(s) for k, s in shapes.items() if not k.startswith(("image_head.", "lm_head.")))
    backbone_int4 = quantized * (0.5 + 2 / 32) + (graph - quantized) * 2
    assert f"backbone {backbone_int4 / 1e9:.3g} GB" in rows["int4 weights"]
    assert 8e9 < backbone_int4 < 10e9                                      # the issue's ~7.5 GB + bf16 embeddings
    floor = rows["bf16 HBM floor, decode step (batch 1, bf16 KV)"]
    assert all(g.name in floor for g in DATASHEET) and "H100 SXM 8.0" in floor     # README's 8.0 ms
    assert kv_cache_bytes(large()) > 10e9
