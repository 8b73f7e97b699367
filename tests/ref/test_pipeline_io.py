"""The pipeline's ends: tokens -> pixels (decode) and pixels -> tokens (edit encode), and the placeholder scatter.

Expected values use hand-written patch loops and the spec's formulas; only the VAE network (checked against
diffusers in test_vae_diffusers.py) is shared with the code under test.
"""
from __future__ import annotations

import numpy as np
import torch

from nextstep_trt.ref.pipeline import decode_tokens, encode_image
from nextstep_trt.ref.prompt import edit_prompt, scatter_image_tokens


def tokens_to_latents(tokens, rows, cols, c):
    """[B,N,c*4] -> [B,c,2 rows,2 cols] by explicit loops (token k = row * cols + col, feature c*4 + dy*2 + dx)."""
    b = tokens.shape[0]
    out = np.zeros((b, c, 2 * rows, 2 * cols), dtype=np.float32)
    for n in range(b):
        for r in range(rows):
            for q in range(cols):
                for ch in range(c):
                    for dy in range(2):
                        for dx in range(2):
                            out[n, ch, 2 * r + dy, 2 * q + dx] = tokens[n, r * cols + q, ch * 4 + dy * 2 + dx]
    return out


def test_decode_tokens(tiny_bundle):
    cfg = tiny_bundle.config
    tokens = np.random.default_rng(0).standard_normal((2, 6, cfg.token_dim)).astype(np.float32)   # grid 2 x 3
    got = decode_tokens(tiny_bundle, tokens, 32, 48)
    assert got.shape == (2, 32, 48, 3) and got.dtype == np.uint8
    latents = tokens_to_latents(tokens, 2, 3, cfg.latent_channels) / 0.7 + 0.1    # z / scale + shift
    with torch.no_grad():
        img = tiny_bundle.vae.decoder(torch.from_numpy(latents)).numpy()
    want = np.round(np.clip(img / 2 + 0.5, 0, 1) * 255).astype(np.uint8).transpose(0, 2, 3, 1)
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, f"decoded pixels differ: max {diff.max()}"
    assert got.std() > 1


def test_encode_image(tiny_bundle):
    cfg = tiny_bundle.config
    pixels = np.random.default_rng(1).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    got = encode_image(tiny_bundle, pixels)
    assert got.shape == (1, 6, cfg.token_dim)
    image = torch.from_numpy(pixels.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0)
    with torch.no_grad():
        mean = tiny_bundle.vae.encoder(image)[:, :cfg.latent_channels].numpy()          # [1,4,4,6]
    want = np.zeros_like(got)
    for r in range(2):
        for q in range(3):
            patch = mean[0, :, 2 * r:2 * r + 2, 2 * q:2 * q + 2].reshape(-1).astype(np.float64)  # c*4 + dy*2 + dx
            normed = (patch - patch.mean()) / np.sqrt(patch.var() + 1e-6)
            want[0, r * 3 + q] = (normed - 0.1) * 0.7                                      # (z - shift) * scale
    err = np.abs(got - want).max()
    assert err < 1e-5, f"encoded tokens: max abs error {err:.3e}"


def test_edit_image_tokens_scatter(tiny_bundle):
    cfg = tiny_bundle.config
    batch = edit_prompt(tiny_bundle.tokenizer, cfg.tokens, ["Make it winter.", "Add a hat"], (1, 2))
    source = np.arange(2 * 2 * cfg.token_dim, dtype=np.float32).reshape(2, 2, cfg.token_dim) + 1
    out = scatter_image_tokens(batch, source)
    assert out.shape == batch.input_ids.shape + (cfg.token_dim,)
    for row in range(6):
        slots = [i for i, t in enumerate(batch.input_ids[row]) if t == cfg.tokens.placeholder]
        if row < 4:   # cond and uncond1 rows carry the image of their prompt (row % B)
            assert len(slots) == 2
            np.testing.assert_array_equal(out[row, slots], source[row % 2])
        else:
            assert slots == []
        others = [i for i in range(batch.length) if i not in slots]
        assert not out[row, others].any()
