"""A left-padded batch generates the same tokens as each prompt alone (per-image seeds, position ids with pads)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextstep_trt.ref.noise import NoiseSource
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.pipeline import generate_tokens
from nextstep_trt.ref.prompt import text_to_image_prompt

TOL = 1e-5
PROMPTS = ["a cat", "a much longer prompt about a dog in the park"]
SEEDS = [11, 22]


def run(bundle, prompts, seeds, opts):
    batch = text_to_image_prompt(bundle.tokenizer, bundle.config.tokens, prompts, (2, 2))
    noise = NoiseSource(seeds, opts.steps, bundle.config.token_dim)
    return batch, generate_tokens(bundle, batch, opts, noise)


@pytest.mark.parametrize("use_norm", [False, True])
def test_batch_equals_single_rows(tiny_bundle, use_norm, assert_close):
    opts = GenerationOptions(height=32, width=32, steps=3, cfg=2.0, use_norm=use_norm)
    batch, together = run(tiny_bundle, PROMPTS, SEEDS, opts)
    assert batch.token_mask[0].sum() < batch.token_mask[1].sum()   # row 0 really is left-padded
    assert batch.token_mask[0, 0] == 0
    assert together.shape == (2, 4, tiny_bundle.config.token_dim)
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS)):
        single_batch, alone = run(tiny_bundle, [prompt], [seed], opts)
        if i == 1:
            assert single_batch.token_mask[0].all()  # alone, the long prompt's cond row has no padding
        assert_close(f"tokens of prompt {i} (batch vs alone)", torch.from_numpy(together[i:i + 1]),
                     torch.from_numpy(alone), TOL, dims=("row", "token", "feature"))
    # The two prompts (same sampler, different seeds and text) give different tokens.
    assert np.abs(together[0] - together[1]).max() > 1e-2


def test_same_seed_different_prompt_differs(tiny_bundle):
    """The prompt reaches the tokens: with equal seeds the two prompts still differ (the condition matters)."""
    opts = GenerationOptions(height=32, width=32, steps=3, cfg=2.0, use_norm=False)
    _, tokens = run(tiny_bundle, PROMPTS, [5, 5], opts)
    assert np.abs(tokens[0] - tokens[1]).max() > 1e-3


def test_noise_depends_only_on_seed():
    """An image's noise comes from its own seed, whatever else shares the batch; prompts share per-image seeds."""
    from nextstep_trt.ref.noise import image_seeds

    assert image_seeds(42, 2, 3) == [42, 43, 44, 42, 43, 44]
    together, alone = NoiseSource([5, 6], 3, 16), NoiseSource([6], 3, 16)
    for _ in range(3):
        a, b = together.next(), alone.next()
        assert a.shape == (4, 2, 16) and a.dtype == np.float32
        assert np.array_equal(a[:, 1], b[:, 0])
        assert not np.array_equal(a[:, 0], a[:, 1])
