"""The runtime loop: same result as the reference pipeline, batches, seeds, callbacks, fallback sampler."""
import numpy as np

from nextstep_trt.ref.noise import NoiseSource
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.pipeline import generate_tokens as reference_tokens
from nextstep_trt.ref.prompt import text_to_image_prompt
from nextstep_trt.runtime.loop import Request, generate_tokens, run_request
from nextstep_trt.runtime.ort_backend import OrtBackend
from nextstep_trt.runtime.torch_backend import TorchBackend

OPTS = GenerationOptions(height=48, width=32, cfg=2.0, steps=3, seed=3)


def test_runtime_loop_on_torch_equals_reference_pipeline(tiny_bundle):
    """Two separate loops (runtime over the torch backend, nextstep_ref's official-style loop) agree."""
    prompt = text_to_image_prompt(tiny_bundle.tokenizer, tiny_bundle.config.tokens, ["a cat", "a dog on a hill"],
                                  (3, 2), images_per_prompt=2)
    seeds = [1, 2, 3, 4]
    got = generate_tokens(TorchBackend(tiny_bundle), prompt, OPTS, NoiseSource(seeds, 3, 16))
    ref = reference_tokens(tiny_bundle, prompt, OPTS, NoiseSource(seeds, 3, 16))
    assert np.abs(got - ref).max() < 1e-6


def test_batch_equals_single_and_seeds_are_per_image(tiny_artifacts, tiny_bundle):
    art, _ = tiny_artifacts
    tok = tiny_bundle.tokenizer
    with OrtBackend(art) as backend:
        both = run_request(backend, tok, Request(["a cat", "a long prompt about a dog"], OPTS, seeds=[5, 9]))
        one = run_request(backend, tok, Request(["a long prompt about a dog"], OPTS, seeds=[9]))
        other_seed = run_request(backend, tok, Request(["a long prompt about a dog"], OPTS, seeds=[10]))
    assert both.shape == (2, 48, 32, 3) and both.dtype == np.uint8
    assert np.abs(both[1].astype(int) - one[0]).max() <= 1
    assert np.abs(one[0].astype(int) - other_seed[0]).max() > 10


def test_callback_sees_every_token_in_order(tiny_artifacts, tiny_bundle):
    art, _ = tiny_artifacts
    seen = []
    with OrtBackend(art) as backend:
        run_request(backend, tiny_bundle.tokenizer, Request(["x"], OPTS.replace(images_per_prompt=2)),
                    callback=lambda k, token, cond: seen.append((k, token.shape, cond.shape)))
    assert seen == [(k, (2, 16), (4, 64)) for k in range(6)]


def test_fallback_sampler_matches_fused(tiny_artifacts, tiny_bundle):
    """Steps the fused graph was not exported for run through head_step; with matching steps both paths agree."""
    art, _ = tiny_artifacts
    with OrtBackend(art) as backend:
        fused = run_request(backend, tiny_bundle.tokenizer, Request(["x"], OPTS))
        backend.specs.pop("head_sampler")
        fallback = run_request(backend, tiny_bundle.tokenizer, Request(["x"], OPTS))
        assert any("head_step" in n for n in backend.notices)
    assert np.abs(fused.astype(int) - fallback).max() <= 1


def test_editing_on_onnxruntime_matches_reference(tiny_artifacts, tiny_bundle):
    from nextstep_trt.ref.pipeline import edit_image
    from nextstep_trt.runtime.cases import source_image

    art, _ = tiny_artifacts
    src = source_image(32, 32)
    opts = OPTS.replace(height=32, width=32, shift=3.2, negative_prompt="Copy original image.", cfg_img=1.5)
    with OrtBackend(art) as backend:
        got = run_request(backend, tiny_bundle.tokenizer, Request(["make it blue"], opts, src))
    ref = np.asarray(edit_image(tiny_bundle, src, "make it blue", **vars(opts))[0])
    assert np.abs(got[0].astype(int) - ref).max() <= 1
