"""KV-cached decoding equals one full forward over the whole sequence (prompt + 20 image tokens), <= 1e-5."""
from __future__ import annotations

import pytest
import torch

from nextstep_trt.ref.backbone import KVCache

TOL = 1e-5
STEPS = 20


def prompt(cfg):
    """Two left-padded rows (lengths 9 and 5) ending in <boi>, position ids arange(L) on both rows."""
    gen = torch.Generator().manual_seed(4)
    lengths, length = (9, 5), 9
    ids = torch.full((2, length), cfg.tokens.pad, dtype=torch.int64)
    mask = torch.zeros((2, length), dtype=torch.int64)
    for row, n in enumerate(lengths):
        ids[row, length - n:-1] = torch.randint(0, 299, (n - 1,), generator=gen)
        ids[row, -1] = cfg.tokens.boi
        mask[row, length - n:] = 1
    return ids, mask, torch.arange(length).expand(2, -1).clone()


def test_cached_decode_equals_full_forward(tiny_random, assert_close):
    cfg, model, _ = tiny_random
    b = cfg.backbone
    ids, mask, positions = prompt(cfg)
    rows, length = ids.shape
    d = cfg.token_dim
    image = torch.randn(rows, STEPS, d, generator=torch.Generator().manual_seed(5))

    with torch.no_grad():
        # Cached: prefill, then one token per step. Capacity larger than needed: unused slots must stay masked.
        cache = KVCache(b, rows, length + STEPS + 3)
        cond, new_kv = model(ids, torch.zeros(rows, length, d), torch.zeros(rows, length, dtype=torch.bool),
                             positions, mask, cache.valid, cache.past())
        cache.write(new_kv, mask)
        cached = [cond]
        ones = torch.ones(rows, 1, dtype=torch.int64)
        for k in range(STEPS):
            cond, new_kv = model(torch.full((rows, 1), cfg.tokens.placeholder), image[:, k:k + 1], ones.bool(),
                                 torch.full((rows, 1), length + k), ones, cache.valid, cache.past())
            cache.write(new_kv, ones)
            cached.append(cond)
        assert cache.length == length + STEPS

        # Full: the whole sequence at once, empty past.
        full_ids = torch.cat([ids, torch.full((rows, STEPS), cfg.tokens.placeholder)], dim=1)
        full_image = torch.cat([torch.zeros(rows, length, d), image], dim=1)
        image_mask = torch.cat([torch.zeros(rows, length, dtype=torch.bool),
                                torch.ones(rows, STEPS, dtype=torch.bool)], dim=1)
        full_mask = torch.cat([mask, torch.ones(rows, STEPS, dtype=torch.int64)], dim=1)
        full_pos = torch.arange(length + STEPS).expand(rows, -1)
        past = [(torch.zeros(rows, b.num_kv_heads, 0, b.head_dim),) * 2 for _ in range(b.num_layers)]
        h, _ = model.run_layers(model.embed(full_ids, full_image, image_mask), full_pos, full_mask,
                                torch.zeros(rows, 0, dtype=torch.int64), past)
        full_cond = model.image_out_projector(h)                                   # [R,L+S,H]

    for k, got in enumerate(cached):
        pos = length - 1 + k
        name = "prefill cond" if k == 0 else f"decode step {k - 1} cond"
        assert_close(f"{name} (sequence position {pos})", got, full_cond[:, pos], TOL, dims=("row", "feature"))
    # The steps really differ from each other (the fed tokens matter).
    assert (cached[1] - cached[2]).abs().max() > 1e-3


def test_cache_write_and_overflow(tiny_random):
    cfg, _, _ = tiny_random
    cache = KVCache(cfg.backbone, 2, 4)
    kv = [(torch.full((2, cfg.backbone.num_kv_heads, 3, cfg.backbone.head_dim), float(i)),) * 2
          for i in range(cfg.backbone.num_layers)]
    cache.write(kv, torch.tensor([[0, 1, 1], [1, 1, 1]]))
    assert cache.valid.tolist() == [[0, 1, 1, 0], [1, 1, 1, 0]]
    assert torch.all(cache.keys[1][:, :, :3] == 1.0) and torch.all(cache.keys[1][:, :, 3] == 0.0)
    one = [(k[:, :, :1], v[:, :, :1]) for k, v in kv]
    cache.write(one, torch.ones(2, 1, dtype=torch.int64))
    try:
        cache.write(one, torch.ones(2, 1, dtype=torch.int64))
    except ValueError as err:
        assert "overflow" in str(err)
    else:
        raise AssertionError("writing past the capacity must fail")


@pytest.mark.parametrize("edit", [False, True], ids=["t2i", "edit"])
def test_pipeline_equals_uncached_recomputation(tiny_bundle, edit, assert_close):
    """generate_tokens (KV cache, decode positions L+k, tokens fed to every branch) equals recomputing every
    condition from scratch over prompt + tokens so far; for editing also with the input image in the prompt."""
    import numpy as np

    from nextstep_trt.ref.noise import NoiseSource
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.ref.pipeline import generate_tokens
    from nextstep_trt.ref.prompt import edit_prompt, scatter_image_tokens, text_to_image_prompt
    from nextstep_trt.ref.sampler import sample_token

    cfg, model = tiny_bundle.config, tiny_bundle.model
    opts = GenerationOptions(height=32, width=48, steps=2, cfg=3.0, cfg_img=1.5, use_norm=True)
    make = edit_prompt if edit else text_to_image_prompt
    batch = make(tiny_bundle.tokenizer, cfg.tokens, ["a cat", "a red sofa in the room"], (2, 3))
    rows, length, d, r = batch.input_ids.shape[0], batch.length, cfg.token_dim, batch.cfg_rows
    prefill = np.zeros((rows, length, d), dtype=np.float32)
    if edit:
        source = np.random.default_rng(3).standard_normal((2, 6, d)).astype(np.float32)
        prefill = scatter_image_tokens(batch, source)
        assert np.abs(prefill).sum() > 0
    got = generate_tokens(tiny_bundle, batch, opts, NoiseSource([1, 2], opts.steps, cfg.token_dim), prefill)

    noise = NoiseSource([1, 2], opts.steps, cfg.token_dim)
    b = cfg.backbone
    tokens = []
    with torch.no_grad():
        for k in range(6):
            ids = torch.cat([torch.from_numpy(batch.input_ids), torch.full((rows, k), cfg.tokens.placeholder)], 1)
            fed = torch.stack(tokens, 1).repeat(r, 1, 1) if tokens else torch.zeros(rows, 0, d)
            image = torch.cat([torch.from_numpy(prefill), fed], 1)
            image_mask = torch.cat([torch.from_numpy(batch.image_mask), torch.ones(rows, k, dtype=torch.bool)], 1)
            mask = torch.cat([torch.from_numpy(batch.token_mask), torch.ones(rows, k, dtype=torch.int64)], 1)
            past = [(torch.zeros(rows, b.num_kv_heads, 0, b.head_dim),) * 2 for _ in range(b.num_layers)]
            h, _ = model.run_layers(model.embed(ids, image, image_mask), torch.arange(length + k).expand(rows, -1),
                                    mask, torch.zeros(rows, 0, dtype=torch.int64), past)
            cond = model.image_out_projector(h[:, -1])
            tokens.append(sample_token(model.image_head, cond, torch.from_numpy(noise.next()), opts.sampler_config(),
                                       batch.guidance, torch.full((2,), 3.0), torch.full((2,), 1.5) if edit else None))
    want = torch.stack(tokens, 1)
    assert got.shape == (2, 6, d)
    assert_close("pipeline tokens (cached vs recomputed)", torch.from_numpy(np.asarray(got)), want, TOL,
                 dims=("image", "token", "feature"))
