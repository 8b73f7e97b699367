"""The level-2/3 scenarios verify runs, derived from the exported profile (torch-free)."""
from __future__ import annotations

import numpy as np

from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.latents import token_grid
from nextstep_trt.ref.noise import make_noise
from nextstep_trt.ref.options import EDIT_DEFAULTS, GenerationOptions
from nextstep_trt.ref.prompt import edit_prompt, text_to_image_prompt

from .parity import LoopCase

PROMPTS = ["a red cube on a wooden table", "two cats"]
INSTRUCTION = "make the sky green"
PREFERRED = [(32, 32), (48, 32)]   # the tiny-model sizes, when the profile has them


def source_image(height: int, width: int) -> np.ndarray:
    """A deterministic test picture (gradients and a square) to edit: uint8 [H,W,3]."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([255 * x / max(width - 1, 1), 255 * y / max(height - 1, 1), 128 + 0 * x], axis=-1)
    img[height // 4: height // 2, width // 4: width // 2] = (250, 40, 40)
    return img.astype(np.uint8)


def _resolutions(profile: DeploymentProfile) -> list[tuple[int, int]]:
    chosen = [r for r in PREFERRED if r in profile.resolutions]
    return chosen or list(profile.resolutions[:2])


def _noise(cfg: NextStepConfig, opts: GenerationOptions, n_prompts: int, n_tok: int) -> np.ndarray:
    src = make_noise(opts, n_prompts, cfg.token_dim)
    return np.stack([src.next() for _ in range(n_tok)])


# (cfg, cfg_img) of the editing cases: every branch layout the official pipeline builds (sampling.Guidance)
EDIT_GUIDANCE = ((2.0, 1.5), (2.0, 1.0), (1.0, 1.0))


def loop_cases(tokenizer, cfg: NextStepConfig, profile: DeploymentProfile, cfg_scale: float = 2.0,
               edit: bool = True) -> list[LoopCase]:
    """Text-to-image at up to two profile resolutions (two prompts at the first), once more without guidance
    (cfg = 1), and an editing case per guidance layout; sampler settings are the exported ones, so the fused
    graphs run. Edit cases carry the source image only: the reference fills in its encoder's tokens."""
    out = []
    t2i = profile.t2i_sampler
    sizes = _resolutions(profile)
    t2i_cases = [(f"t2i {h}x{w}", (h, w), cfg_scale, 2 if i == 0 else 1) for i, (h, w) in enumerate(sizes)]
    t2i_cases.append((f"t2i {sizes[0][0]}x{sizes[0][1]} cfg=1", sizes[0], 1.0, 1))
    for label, (h, w), scale, n in t2i_cases:
        prompts = PROMPTS[:n if profile.max_batch >= n else 1]
        opts = GenerationOptions(height=h, width=w, cfg=scale, steps=t2i.steps, shift=t2i.shift,
                                 sampler=t2i.variant, use_norm=t2i.use_norm, seed=7)
        grid = token_grid(h, w, cfg.pixels_per_token)
        prompt = text_to_image_prompt(tokenizer, cfg.tokens, prompts, grid, guidance=opts.guidance(edit=False))
        out.append(LoopCase(f"{label} b{len(prompts)}", opts, prompt,
                            _noise(cfg, opts, len(prompts), grid[0] * grid[1])))
    if edit and profile.edit:
        h, w = sizes[0]
        s = profile.edit_sampler
        for scale, scale_img in EDIT_GUIDANCE:
            opts = GenerationOptions(**{**EDIT_DEFAULTS, "shift": s.shift}, height=h, width=w, cfg=scale,
                                     cfg_img=scale_img, steps=s.steps, sampler=s.variant, use_norm=s.use_norm,
                                     seed=11)
            grid = token_grid(h, w, cfg.pixels_per_token)
            prompt = edit_prompt(tokenizer, cfg.tokens, [INSTRUCTION], grid, negative=opts.negative_prompt,
                                 guidance=opts.guidance(edit=True))
            out.append(LoopCase(f"edit {h}x{w} cfg={scale:g} cfg_img={scale_img:g}", opts, prompt,
                                _noise(cfg, opts, 1, grid[0] * grid[1]), source_image=source_image(h, w)[None]))
    for i, case in enumerate(out):
        case.index = i
    return out
