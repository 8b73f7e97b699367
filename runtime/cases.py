"""The level-2/3 scenarios verify runs, derived from the exported profile (torch-free)."""
from __future__ import annotations

import numpy as np

from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.latents import token_grid
from nextstep_trt.ref.noise import NoiseSource, image_seeds
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
    src = NoiseSource(image_seeds(opts.seed, n_prompts, opts.images_per_prompt), opts.steps, cfg.token_dim)
    return np.stack([src.next() for _ in range(n_tok)])


def loop_cases(tokenizer, cfg: NextStepConfig, profile: DeploymentProfile, cfg_scale: float = 2.0,
               edit: bool = True) -> list[LoopCase]:
    """Text-to-image at up to two profile resolutions (two prompts at the first) and one editing case; sampler
    settings are the exported ones, so the fused graphs run. Edit cases carry the source image only: the
    reference fills in its encoder's tokens."""
    out = []
    t2i = profile.t2i_sampler
    for i, (h, w) in enumerate(_resolutions(profile)):
        prompts = PROMPTS if i == 0 and profile.max_batch >= 2 else PROMPTS[:1]
        opts = GenerationOptions(height=h, width=w, cfg=cfg_scale, steps=t2i.steps, shift=t2i.shift,
                                 sampler=t2i.variant, use_norm=t2i.use_norm, seed=7)
        grid = token_grid(h, w, cfg.pixels_per_token)
        prompt = text_to_image_prompt(tokenizer, cfg.tokens, prompts, grid)
        out.append(LoopCase(f"t2i {h}x{w} b{len(prompts)}", opts, prompt,
                            _noise(cfg, opts, len(prompts), grid[0] * grid[1])))
    if edit and profile.edit:
        h, w = _resolutions(profile)[0]
        s = profile.edit_sampler
        opts = GenerationOptions(**{**EDIT_DEFAULTS, "shift": s.shift}, height=h, width=w, cfg=cfg_scale,
                                 cfg_img=1.5, steps=s.steps, sampler=s.variant, use_norm=s.use_norm, seed=11)
        grid = token_grid(h, w, cfg.pixels_per_token)
        prompt = edit_prompt(tokenizer, cfg.tokens, [INSTRUCTION], grid, negative=opts.negative_prompt)
        out.append(LoopCase(f"edit {h}x{w}", opts, prompt, _noise(cfg, opts, 1, grid[0] * grid[1]),
                            source_image=source_image(h, w)[None]))
    for i, case in enumerate(out):
        case.index = i
    return out
