"""Latents <-> tokens <-> pixels: patch order, round trips, scale/shift and the uint8 conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.config import tiny
from nextstep_trt.ref.latents import (
    from_model_space,
    image_to_uint8,
    patchify_latents,
    to_model_space,
    token_grid,
    uint8_to_image,
    unpatchify_latents,
)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("h,w", [(8, 6), (4, 10), (2, 2), (6, 8)])
def test_round_trip_non_square(kind, h, w):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 4, h, w)).astype(np.float32)
    if kind == "torch":
        z = torch.from_numpy(z)
    tokens = patchify_latents(z, 2)
    assert tuple(tokens.shape) == (2, (h // 2) * (w // 2), 16)
    assert type(tokens) is type(z)
    back = unpatchify_latents(tokens, h, w, 2)
    assert tuple(back.shape) == (2, 4, h, w)
    assert (back == z).all()


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_token_order(kind):
    """token k = row * cols + col, feature c*4 + dy*2 + dx = latent[c, 2 row + dy, 2 col + dx]."""
    b, c, h, w = 2, 3, 6, 10
    z = np.arange(b * c * h * w, dtype=np.float32).reshape(b, c, h, w) * 0.5 - 7.0
    rows, cols = h // 2, w // 2
    expected = np.zeros((b, rows * cols, c * 4), dtype=np.float32)
    for n in range(b):
        for row in range(rows):
            for col in range(cols):
                for ch in range(c):
                    for dy in range(2):
                        for dx in range(2):
                            expected[n, row * cols + col, ch * 4 + dy * 2 + dx] = z[n, ch, 2 * row + dy, 2 * col + dx]
    got = patchify_latents(torch.from_numpy(z) if kind == "torch" else z, 2)
    got = got.numpy() if kind == "torch" else got
    np.testing.assert_array_equal(got, expected)
    # and unpatchify puts every feature back where it came from
    np.testing.assert_array_equal(unpatchify_latents(expected, h, w, 2), z)


def test_scale_shift_inverse_and_values():
    vae = tiny().vae
    assert (vae.scaling_factor, vae.shift_factor) == (0.7, 0.1)
    z = np.array([-1.0, 0.0, 0.1, 2.5], dtype=np.float64)
    model_space = to_model_space(z, vae)
    np.testing.assert_allclose(model_space, [(-1.1) * 0.7, -0.07, 0.0, 2.4 * 0.7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_model_space(model_space, vae), z, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_model_space(np.array([0.7, 0.0]), vae), [1.1, 0.1], rtol=0, atol=1e-12)
    t = torch.tensor([0.3, -0.2], dtype=torch.float64)
    assert torch.allclose(from_model_space(to_model_space(t, vae), vae), t, atol=1e-12)


def test_image_to_uint8_hand_values():
    # x -> clamp(x/2 + 0.5, 0, 1) * 255, rounded
    values = [-2.0, -1.0, -0.5, 0.0, 0.001, 0.5, 1.0, 1.7]
    want = [0, 0, 64, 128, 128, 191, 255, 255]  # 63.75->64, 127.5->128 (round half to even), 127.6->128, 191.25->191
    image = np.zeros((1, 3, 1, len(values)), dtype=np.float32)
    image[0, 0, 0] = values
    image[0, 1, 0] = -1.0
    image[0, 2, 0] = 1.0
    out = image_to_uint8(image)
    assert out.dtype == np.uint8 and out.shape == (1, 1, len(values), 3)  # [B,H,W,3]
    assert out[0, 0, :, 0].tolist() == want
    assert out[0, 0, :, 1].tolist() == [0] * len(values)
    assert out[0, 0, :, 2].tolist() == [255] * len(values)


def test_uint8_to_image_range():
    pixels = np.array([[[[0, 255, 128]]]], dtype=np.uint8)  # [1,1,1,3]
    img = uint8_to_image(pixels)
    assert img.shape == (1, 3, 1, 1) and img.dtype == np.float32
    np.testing.assert_allclose(img[0, :, 0, 0], [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-7)
    np.testing.assert_array_equal(image_to_uint8(img), pixels)


def test_token_grid():
    assert token_grid(32, 48, 16) == (2, 3)
    assert token_grid(512, 512, 16) == (32, 32)
    for bad in [(40, 32), (32, 0), (-16, 32)]:
        with pytest.raises(UserError):
            token_grid(*bad, 16)
