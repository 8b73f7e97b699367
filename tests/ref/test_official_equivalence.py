"""Official-pipeline equivalence, against statements of the official code written out here by hand (not derived
from ours): option spellings, the ``_build_captions`` row layout of every (cfg, cfg_img) case, and the torch RNG
draws of ``--noise official``.

The official facts used (stepfun-ai/NextStep-1, nextstep/models/pipeline_nextstep.py and modeling_fm_head.py at
bfd14b5, run on the CPU with ENABLE_TORCH_COMPILE=false on this tiny model; README "Official pipeline"):
- rows: cfg > 1 and cfg_img > 1: [image + caption] [image + negative] [negative]; cfg > 1, cfg_img = 1:
  [image + caption] [negative]; cfg = 1: [caption] only; cfg = 1 with cfg_img > 1 fails in the official code.
- draws, 32x32 (4 tokens), 3 steps, gh sampler, 1 caption, 1 image: editing first draws the posterior noise
  (2, 4, 4, 4) for 3-way guidance ((1, 4, 4, 4) otherwise), then per token 3 draws of (1, 16) (x0 and the noise
  of its two SDE steps; the 0.04 Euler step draws nothing); all fp32, and their values run on as one
  ``torch.manual_seed(seed); torch.randn(total)`` stream.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.options import GenerationOptions, NoiseMode
from nextstep_trt.ref.pipeline import edit_image, generate_image
from nextstep_trt.ref.prompt import edit_prompt, text_to_image_prompt
from nextstep_trt.ref.sampling import CfgSchedule, Guidance, SamplerVariant, token_scales

SMALL = dict(height=32, width=32, steps=3, seed=0, shift=1.0, use_norm=False)


def _source() -> np.ndarray:
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([8 * x, 8 * y, 0 * x + 128], axis=-1).astype(np.uint8)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(i) for i in images])


@pytest.mark.parametrize("field,string,member", [("cfg_schedule", "linear", CfgSchedule.LINEAR),
                                                 ("sampler", "gh", SamplerVariant.GH),
                                                 ("noise", "official", NoiseMode.OFFICIAL)])
def test_each_option_as_string_or_enum_gives_the_same_image(tiny_bundle, field, string, member):
    a = generate_image(tiny_bundle, "a red fox", cfg=3.0, **SMALL, **{field: string})
    b = generate_image(tiny_bundle, "a red fox", cfg=3.0, **SMALL, **{field: member})
    default = generate_image(tiny_bundle, "a red fox", cfg=3.0, **SMALL)
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(default)), f"{field}={string!r} changed nothing"


@pytest.mark.parametrize("field,value", [("cfg_schedule", "Linear"), ("sampler", "HF"), ("noise", "torch"),
                                         ("cfg_schedule", 1)])
def test_an_unknown_choice_is_refused_naming_the_option(field, value):
    with pytest.raises(UserError, match=field.replace("_", "-")):
        GenerationOptions(**{field: value})


@pytest.mark.parametrize("field,value", [("cfg", float("inf")), ("cfg", float("nan")), ("cfg", 0.5),
                                         ("cfg_img", float("inf")), ("shift", 0.0), ("shift", float("nan")),
                                         ("steps", 0), ("steps", 100_000), ("seed", -1), ("height", 0),
                                         ("cfg", "7"), ("steps", 2.5), ("negative_prompt", "bad \udcff")])
def test_out_of_range_numbers_and_bad_text_are_refused(field, value):
    with pytest.raises(UserError):
        GenerationOptions(**{field: value})


def _rows(tokenizer, batch) -> list[str]:
    """Every row's text, pads dropped, without the image-area suffix that ends every row."""
    out = []
    for ids, mask in zip(batch.input_ids, batch.token_mask):
        text = tokenizer.decode([int(i) for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        out.append(text[:text.rindex("<|image_area|>")])
    return out


IMG = "<|image_area|>2*2<|begin_of_image|>" + "<|image_placeholder|>" * 4 + "<|end_of_image|>"


@pytest.mark.parametrize("edit,cfg,cfg_img,want", [
    (False, 2.0, 1.0, ["a cat", "neg"]),
    (False, 1.0, 1.0, ["a cat"]),
    (True, 2.0, 2.0, [IMG + "a cat", IMG + "neg", "neg"]),
    (True, 2.0, 1.0, [IMG + "a cat", "neg"]),            # the uncond row has no image
    (True, 1.0, 1.0, [IMG + "a cat"]),
])
def test_rows_follow_the_official_build_captions(tiny_bundle, edit, cfg, cfg_img, want):
    opts = GenerationOptions(cfg=cfg, cfg_img=cfg_img, negative_prompt="neg")
    make = edit_prompt if edit else text_to_image_prompt
    batch = make(tiny_bundle.tokenizer, tiny_bundle.config.tokens, ["a cat"], (2, 2), negative="neg",
                 guidance=opts.guidance(edit))
    assert _rows(tiny_bundle.tokenizer, batch) == want
    assert batch.cfg_rows == len(want)
    slots = batch.image_mask.sum(axis=1).tolist()          # the image's tokens go where the image string is
    assert slots == [4 if r.startswith(IMG) else 0 for r in want]


def test_cfg_1_with_image_guidance_is_refused_and_text_to_image_ignores_cfg_img():
    with pytest.raises(UserError, match="cfg-img"):
        GenerationOptions(cfg=1.0, cfg_img=2.0).guidance(edit=True)
    assert GenerationOptions(cfg=1.0, cfg_img=2.0).guidance(edit=False) is Guidance.NONE
    assert GenerationOptions(cfg=3.0, cfg_img=2.0).guidance(edit=False) is Guidance.TEXT


def test_the_image_tag_places_the_image_and_only_one_is_allowed(tiny_bundle):
    tok, tokens = tiny_bundle.tokenizer, tiny_bundle.config.tokens
    batch = edit_prompt(tok, tokens, ["turn <image> blue"], (2, 2), negative="", guidance=Guidance.NONE)
    assert _rows(tok, batch) == ["turn " + IMG + " blue"]
    with pytest.raises(UserError, match="2 <image> tags"):
        edit_prompt(tok, tokens, ["<image> and <image>"], (2, 2), guidance=Guidance.NONE)


def test_the_linear_schedule_decays_cfg_img_too():
    # official decoding(): cfg_iter and cfg_img_iter = 1 + (s - 1) * (N - k) / N
    cfg, cfg_img = token_scales(Guidance.TEXT_IMAGE, [3.0], [2.0], 2, 4, CfgSchedule.LINEAR)
    assert cfg == [2.0] and cfg_img == [1.5]
    assert token_scales(Guidance.NONE, [3.0], [2.0], 2, 4, CfgSchedule.LINEAR) == (None, None)


class DrawLog:
    """Records every torch.randn call: (shape, dtype), and the values it returned."""

    def __init__(self, monkeypatch):
        self.calls, self.values, real = [], [], torch.randn

        def randn(*size, **kw):
            shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else tuple(size)
            out = real(*size, **kw)
            self.calls.append((shape, kw.get("dtype", torch.float32)))
            self.values.append(out.flatten())
            return out
        monkeypatch.setattr(torch, "randn", randn)


@pytest.mark.parametrize("edit,cfg,cfg_img,posterior", [(False, 2.0, 1.0, None), (True, 2.0, 2.0, (2, 4, 4, 4)),
                                                         (True, 2.0, 1.0, (1, 4, 4, 4)), (True, 1.0, 1.0, (1, 4, 4, 4))])
def test_official_noise_draws_in_the_official_order_and_values(tiny_bundle, monkeypatch, edit, cfg, cfg_img,
                                                                posterior):
    log = DrawLog(monkeypatch)
    opts = dict(SMALL, cfg=cfg, cfg_img=cfg_img, sampler="gh", noise="official")
    if edit:
        edit_image(tiny_bundle, _source(), "make it blue", negative_prompt="", **opts)
    else:
        generate_image(tiny_bundle, "a red cube", **opts)
    monkeypatch.undo()
    want = ([(posterior, torch.float32)] if posterior else []) + [((1, 16), torch.float32)] * 12
    assert log.calls == want
    drawn = torch.cat(log.values)
    torch.manual_seed(0)
    assert torch.equal(drawn, torch.randn(drawn.numel()))


def test_official_noise_is_the_global_generator_stream_without_touching_it():
    from nextstep_trt.ref.official_noise import OfficialNoise
    from nextstep_trt.ref.sampling import SamplerConfig

    torch.manual_seed(123)
    want = torch.randn(2 * 64 * 4)                        # HF sampler, 3 steps: 4 draws of (2, 16) per token
    torch.manual_seed(999)
    before = torch.get_rng_state()
    noise = OfficialNoise(123, 3, 2, SamplerConfig(steps=3), 16)   # 3 prompts x 2 images per prompt
    got = np.stack([noise.next() for _ in range(4)])              # [tokens, N+1, B, D]
    assert torch.equal(torch.get_rng_state(), before), "the caller's global RNG state moved"
    draws = want.reshape(4, 4, 2, 16).numpy()
    assert np.array_equal(got, np.tile(draws, (1, 1, 3, 1)))      # tiled over prompts: image j shares draw j


def test_the_two_noise_modes_differ_on_the_same_seed(tiny_bundle):
    a = _pixels(generate_image(tiny_bundle, "a red cube", cfg=2.0, **SMALL, noise="official"))
    b = _pixels(generate_image(tiny_bundle, "a red cube", cfg=2.0, **SMALL))
    assert np.abs(a.astype(int) - b.astype(int)).max() > 20
