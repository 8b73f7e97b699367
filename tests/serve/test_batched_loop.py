"""Per-image seed, cfg and negative prompt inside one batched loop: the batch equals separate runs."""
import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.prompt import text_to_image_prompt
from nextstep_trt.runtime.loop import Request, run_request
from nextstep_trt.runtime.ort_backend import OrtBackend

OPTS = GenerationOptions(height=48, width=32, steps=3)


def test_batch_with_per_image_guidance_equals_separate_runs(tiny_artifacts, tiny_bundle):
    art, _ = tiny_artifacts
    tok = tiny_bundle.tokenizer
    prompts, negatives = ["a cat", "a dog", "a cat"], ["", "blurry", "ugly and dark"]
    seeds, cfgs = [5, 9, 5], [7.5, 3.0, 1.5]
    with OrtBackend(art) as backend:
        batch = run_request(backend, tok, Request(prompts, OPTS, seeds=seeds, negatives=negatives, cfgs=cfgs))
        alone = [run_request(backend, tok, Request([p], OPTS.replace(cfg=c, negative_prompt=n), seeds=[s]))[0]
                 for p, n, s, c in zip(prompts, negatives, seeds, cfgs)]
    assert batch.shape == (3, 48, 32, 3)
    for got, want in zip(batch, alone):
        # left padding shifts RoPE positions as in the official pipeline: rounding may move a pixel by 1
        assert np.abs(got.astype(int) - want).max() <= 1
    # row 0 and row 2 share prompt and seed; their cfg and negative differ, and so must the images
    assert np.abs(batch[0].astype(int) - batch[2]).max() > 10


def test_single_string_negative_unchanged(tiny_bundle):
    """A single negative still builds the same rows as before; a list gives one uncond row per prompt."""
    tok, tokens = tiny_bundle.tokenizer, tiny_bundle.config.tokens
    one = text_to_image_prompt(tok, tokens, ["a cat", "a dog"], (3, 2), negative="blurry", images_per_prompt=2)
    listed = text_to_image_prompt(tok, tokens, ["a cat", "a dog"], (3, 2), negative=["blurry", "blurry"],
                                  images_per_prompt=2)
    assert np.array_equal(one.input_ids, listed.input_ids)
    mixed = text_to_image_prompt(tok, tokens, ["a cat", "a dog"], (3, 2), negative=["", "blurry"],
                                 images_per_prompt=2)
    assert mixed.input_ids.shape[0] == 8
    assert np.array_equal(mixed.input_ids[4], mixed.input_ids[5]) and not np.array_equal(mixed.input_ids[5],
                                                                                         mixed.input_ids[6])
    with pytest.raises(UserError, match="negative prompts for 2 prompts"):
        text_to_image_prompt(tok, tokens, ["a cat", "a dog"], (3, 2), negative=["x"])


def test_per_prompt_edit_images_and_cfg_img(tiny_artifacts, tiny_bundle):
    """Editing: each prompt its own input image and image guidance, equal to separate runs."""
    from nextstep_trt.runtime.cases import source_image

    art, _ = tiny_artifacts
    tok = tiny_bundle.tokenizer
    opts = OPTS.replace(height=32, width=32, shift=3.2, negative_prompt="Copy original image.")
    images = np.stack([source_image(32, 32), source_image(32, 32)[::-1].copy()])
    with OrtBackend(art) as backend:
        batch = run_request(backend, tok, Request(["make it blue", "make it blue"], opts, images, seeds=[1, 1],
                                                  cfg_imgs=[1.5, 3.0]))
        alone = [run_request(backend, tok, Request(["make it blue"], opts.replace(cfg_img=c), images[i], seeds=[1]))[0]
                 for i, c in enumerate([1.5, 3.0])]
    for got, want in zip(batch, alone):
        assert np.abs(got.astype(int) - want).max() <= 1
    assert np.abs(batch[0].astype(int) - batch[1]).max() > 10
