"""The reference generation loop, structured like the official pipeline (torch, eager, one head call per step)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from nextstep_trt.core.errors import check_finite

from .checkpoint import ModelBundle
from .latents import (
    from_model_space,
    image_to_uint8,
    patchify_latents,
    to_model_space,
    token_grid,
    uint8_to_image,
    unpatchify_latents,
)
from .noise import Noise, make_noise
from .options import EDIT_DEFAULTS, GenerationOptions
from .prompt import PromptBatch, edit_prompt, scatter_image_tokens, text_to_image_prompt
from .sampler import sample_token
from .sampling import token_scales

TokenCallback = Callable[[int, np.ndarray], None]  # (token index, tokens [B,D])


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _scale(values: list[float] | None) -> torch.Tensor | None:
    return None if values is None else torch.tensor(values, dtype=torch.float32)


def _progress(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc="tokens", unit="tok", disable=not enabled, leave=False)


@torch.no_grad()
def generate_tokens(bundle: ModelBundle, prompt: PromptBatch, opts: GenerationOptions, noise: Noise,
                    image_tokens: np.ndarray | None = None, progress: bool = False,
                    callback: TokenCallback | None = None) -> np.ndarray:
    """Prefill every CFG row in one batch, then per token: sample (N head calls), feed back, decode one step.

    image_tokens [R*B,L,D] fills the placeholder slots (editing). Returns tokens [B,N_tok,D] in model space.
    """
    from .backbone import KVCache

    model, cfg = bundle.model, bundle.config
    dtype = next(model.parameters()).dtype
    rows, b, length = prompt.input_ids.shape[0], prompt.batch, prompt.length
    grid = token_grid(opts.height, opts.width, cfg.pixels_per_token)
    n_tok = grid[0] * grid[1]
    cache = KVCache(cfg.backbone, rows, length + n_tok, dtype=dtype)
    if image_tokens is None:
        image_tokens = np.zeros((rows, length, cfg.token_dim), dtype=np.float32)
    cond, new_kv = model(_t(prompt.input_ids), _t(image_tokens).to(dtype), _t(prompt.image_mask),
                         _t(prompt.position_ids), _t(prompt.token_mask), cache.valid, cache.past())
    cache.write(new_kv, _t(prompt.token_mask))
    sampler = opts.sampler_config()
    ones = torch.ones(rows, 1, dtype=torch.int64)
    tokens = []
    for k in _progress(n_tok, progress):
        check_finite(cond.float().numpy(), "backbone.cond", k)
        scale, scale_img = token_scales(prompt.guidance, [opts.cfg] * b, [opts.cfg_img] * b, k, n_tok,
                                        opts.cfg_schedule)
        tok = sample_token(model.image_head, cond, _t(noise.next()), sampler, prompt.guidance,
                           _scale(scale), _scale(scale_img))                                          # [B,D]
        check_finite(tok.float().numpy(), "sampler.token", k)
        tokens.append(tok.float())
        if callback is not None:
            callback(k, tok.float().numpy())
        if k == n_tok - 1:
            break  # the official loop runs one more decode whose output is never used
        step = tok.repeat(prompt.cfg_rows, 1)[:, None]                                             # [R*B,1,D]
        cond, new_kv = model(torch.full((rows, 1), cfg.tokens.placeholder), step, ones.bool(),
                             torch.full((rows, 1), length + k), ones, cache.valid, cache.past())
        cache.write(new_kv, ones)
    return torch.stack(tokens, dim=1).numpy()                                                       # [B,N,D]


@torch.no_grad()
def decode_tokens(bundle: ModelBundle, tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """tokens [B,N,D] in model space -> uint8 images [B,H,W,3]."""
    cfg = bundle.config
    f = cfg.vae.downsample
    latents = unpatchify_latents(tokens, height // f, width // f, cfg.latent_patch_size)
    latents = from_model_space(latents, cfg.vae)
    dtype = next(bundle.vae.parameters()).dtype
    image = bundle.vae.decode(_t(latents.astype(np.float32)).to(dtype)).float().numpy()
    check_finite(image, "vae_decoder.image")
    return image_to_uint8(image)


@torch.no_grad()
def encode_image(bundle: ModelBundle, pixels: np.ndarray, noise: Noise | None = None,
                 posterior_images: int | None = None) -> np.ndarray:
    """uint8 [B,H,W,3] -> tokens [B,N,D] in model space (token-normed posterior mean, then scale/shift).

    ``noise`` gets the posterior draw the official encoder makes for ``posterior_images`` images."""
    cfg = bundle.config
    dtype = next(bundle.vae.parameters()).dtype
    latents = bundle.vae.encode(_t(uint8_to_image(pixels)).to(dtype)).float().numpy()
    check_finite(latents, "vae_encoder.latents")
    if noise is not None:
        noise.posterior((posterior_images or len(pixels), *latents.shape[1:]), str(dtype).removeprefix("torch."))
    return patchify_latents(to_model_space(latents, cfg.vae), cfg.latent_patch_size)


def _to_pil(pixels: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(p) for p in pixels]


def _prompts(prompt: str | Sequence[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def generate_image(bundle: ModelBundle, prompt: str | Sequence[str], progress: bool = False,
                   **options) -> list:
    """Text to image; returns PIL images, prompt-major. Options are ``GenerationOptions`` fields (enum options
    take their string values too: ``cfg_schedule="linear"``, ``sampler="gh"``, ``noise="official"``)."""
    opts = GenerationOptions(**options)
    prompts = _prompts(prompt)
    grid = token_grid(opts.height, opts.width, bundle.config.pixels_per_token)
    batch = text_to_image_prompt(bundle.tokenizer, bundle.config.tokens, prompts, grid, opts.positive_prompt,
                                 opts.negative_prompt, opts.images_per_prompt, opts.max_prompt_tokens,
                                 opts.guidance(edit=False))
    noise = make_noise(opts, len(prompts), bundle.config.token_dim)
    tokens = generate_tokens(bundle, batch, opts, noise, progress=progress)
    return _to_pil(decode_tokens(bundle, tokens, opts.height, opts.width))


def edit_image(bundle: ModelBundle, image: np.ndarray, instruction: str | Sequence[str], progress: bool = False,
               **options) -> list:
    """Edit one uint8 [H,W,3] image with each instruction; returns PIL images. Editing defaults apply."""
    opts = GenerationOptions(**(EDIT_DEFAULTS | options))
    instructions = _prompts(instruction)
    grid = token_grid(opts.height, opts.width, bundle.config.pixels_per_token)
    batch = edit_prompt(bundle.tokenizer, bundle.config.tokens, instructions, grid, opts.positive_prompt,
                        opts.negative_prompt, opts.images_per_prompt, opts.max_prompt_tokens,
                        opts.guidance(edit=True))
    noise = make_noise(opts, len(instructions), bundle.config.token_dim)
    image_rows = 2 * batch.batch if batch.cfg_rows == 3 else batch.batch       # the official `images + images`
    source = encode_image(bundle, np.repeat(image[None], batch.batch, axis=0), noise, image_rows)
    tokens = generate_tokens(bundle, batch, opts, noise, scatter_image_tokens(batch, source), progress=progress)
    return _to_pil(decode_tokens(bundle, tokens, opts.height, opts.width))
