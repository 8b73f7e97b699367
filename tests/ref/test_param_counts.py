"""Parameter counts of NextStep-1-Large (built on the meta device) and the explicit key -> shape maps."""
from __future__ import annotations

import pytest
import torch

from nextstep_trt.ref.config import bench, large, tiny
from nextstep_trt.ref.model import NextStep
from nextstep_trt.ref.vae import AutoEncoder
from nextstep_trt.ref.weights import model_shapes, vae_shapes

HEAD = 157_228_096
PER_LAYER = 275_268_608
BACKBONE = 14_770_033_664
TOTAL = 14_953_814_080


@pytest.fixture(scope="module")
def large_meta():
    with torch.device("meta"):
        model, vae = NextStep(large()), AutoEncoder(large().vae)
    assert next(model.parameters()).is_meta and next(vae.parameters()).is_meta
    return model, vae


def count(params) -> int:
    return sum(p.numel() for p in params)


def test_expected_numbers_are_consistent():
    """The spec's numbers, re-derived by hand from the Large dimensions."""
    h, q, kv, ff, v = 5120, 40 * 128, 8 * 128, 13824, 152064
    layer = 2 * h + (h * q + q) + 2 * (h * kv + kv) + q * h + 3 * h * ff
    assert layer == PER_LAYER
    assert BACKBONE == PER_LAYER * 48 + 2 * v * h + h
    d, t, c = 1536, 64, 5120
    head = (t * d + d) + (c * d + d) + (256 * d + d) + (d * d + d)
    head += 12 * (2 * d + 2 * (d * d + d) + (d * 3 * d + 3 * d))
    head += (d * 2 * d + 2 * d) + (d * t + t)
    assert head == HEAD
    assert TOTAL == BACKBONE + HEAD + (t * h + h) + (h * h + h)


def test_large_flow_head(large_meta):
    model, _ = large_meta
    assert count(model.image_head.parameters()) == HEAD


def test_large_backbone(large_meta):
    model, _ = large_meta
    per_layer = [count(layer.parameters()) for layer in model.layers]
    assert per_layer == [PER_LAYER] * 48
    backbone = (count(model.embed_tokens.parameters()) + count(model.layers.parameters())
                + count(model.norm.parameters()) + count(model.lm_head.parameters()))
    assert backbone == BACKBONE


def test_large_total(large_meta):
    model, _ = large_meta
    assert count(model.parameters()) == TOTAL
    assert len(list(model.buffers())) == 0  # nothing hidden outside the state dict


def shapes_of(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def diff(found: dict, expected: dict) -> str:
    missing = sorted(set(expected) - set(found))[:5]
    extra = sorted(set(found) - set(expected))[:5]
    shape = [(k, found[k], expected[k]) for k in found if k in expected and found[k] != expected[k]][:5]
    return f"in weights.py only: {missing}; in the module only: {extra}; shape differs: {shape}"


@pytest.mark.parametrize("preset", [large, tiny, bench], ids=["large", "tiny", "bench"])
def test_shape_maps_match_modules(preset):
    cfg = preset()
    with torch.device("meta"):
        model, vae = NextStep(cfg), AutoEncoder(cfg.vae)
    got_model, got_vae = shapes_of(model), shapes_of(vae)
    assert model_shapes(cfg) == got_model, diff(got_model, model_shapes(cfg))
    assert vae_shapes(cfg.vae) == got_vae, diff(got_vae, vae_shapes(cfg.vae))


def test_large_vae_layout(large_meta):
    """Spot checks of the Flux layout of the real VAE: 3 decoder blocks per level, no quant convs, f8 ch16."""
    _, vae = large_meta
    shapes = shapes_of(vae)
    assert shapes["encoder.conv_out.weight"] == (32, 512, 3, 3)
    assert shapes["decoder.conv_in.weight"] == (512, 16, 3, 3)
    assert shapes["decoder.up.0.block.0.nin_shortcut.weight"] == (128, 256, 1, 1)
    assert "decoder.up.0.block.2.conv2.weight" in shapes and "decoder.up.0.block.3.conv2.weight" not in shapes
    assert "decoder.up.0.upsample.conv.weight" not in shapes and "decoder.up.3.upsample.conv.weight" in shapes
    assert "encoder.down.3.downsample.conv.weight" not in shapes
    assert not any("quant" in k for k in shapes)
    assert large().vae.downsample == 8 and large().token_dim == 64
