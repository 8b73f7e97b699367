"""The reference generation loop, structured like the official pipeline (torch, eager, one head call per step)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

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
from .noise import NoiseSource, image_seeds
from .options import EDIT_DEFAULTS, GenerationOptions
from .prompt import PromptBatch, edit_prompt, scatter_image_tokens, text_to_image_prompt
from .sampler import sample_token
from .sampling import cfg_at

TokenCallback = Callable[[int, np.ndarray], None]  # (token index, tokens [B,D])


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def _progress(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc="tokens", unit="tok", disable=not enabled, leave=False)


@torch.no_grad()
def generate_tokens(bundle: ModelBundle, prompt: PromptBatch, opts: GenerationOptions, noise: NoiseSource,
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
    cfg_img = torch.full((b,), opts.cfg_img) if prompt.cfg_rows == 3 else None
    ones = torch.ones(rows, 1, dtype=torch.int64)
    tokens = []
    for k in _progress(n_tok, progress):
        scale = torch.full((b,), cfg_at(opts.cfg, k, n_tok, opts.cfg_schedule))
        tok = sample_token(model.image_head, cond, _t(noise.next()).to(dtype), sampler, scale, cfg_img)  # [B,D]
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
    return image_to_uint8(bundle.vae.decode(_t(latents.astype(np.float32)).to(dtype)).float().numpy())


@torch.no_grad()
def encode_image(bundle: ModelBundle, pixels: np.ndarray) -> np.ndarray:
    """uint8 [B,H,W,3] -> tokens [B,N,D] in model space (token-normed posterior mean, then scale/shift)."""
    cfg = bundle.config
    dtype = next(bundle.vae.parameters()).dtype
    latents = bundle.vae.encode(_t(uint8_to_image(pixels)).to(dtype)).float().numpy()
    return patchify_latents(to_model_space(latents, cfg.vae), cfg.latent_patch_size)


def _to_pil(pixels: np.ndarray) -> list:
    from PIL import Image

    return [Image.fromarray(p) for p in pixels]


def generate_image(bundle: ModelBundle, prompt: str | Sequence[str], progress: bool = False,
                   **options) -> list:
    """Text to image; returns PIL images, prompt-major. Options are ``GenerationOptions`` fields."""
    opts = GenerationOptions(**options)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    grid = token_grid(opts.height, opts.width, bundle.config.pixels_per_token)
    batch = text_to_image_prompt(bundle.tokenizer, bundle.config.tokens, prompts, grid, opts.positive_prompt,
                                 opts.negative_prompt, opts.images_per_prompt, opts.max_prompt_tokens)
    noise = NoiseSource(image_seeds(opts.seed, len(prompts), opts.images_per_prompt), opts.steps,
                        bundle.config.token_dim)
    tokens = generate_tokens(bundle, batch, opts, noise, progress=progress)
    return _to_pil(decode_tokens(bundle, tokens, opts.height, opts.width))


def edit_image(bundle: ModelBundle, image: np.ndarray, instruction: str | Sequence[str], progress: bool = False,
               **options) -> list:
    """Edit one uint8 [H,W,3] image with each instruction; returns PIL images. Editing defaults apply."""
    opts = GenerationOptions(**(EDIT_DEFAULTS | options))
    instructions = [instruction] if isinstance(instruction, str) else list(instruction)
    grid = token_grid(opts.height, opts.width, bundle.config.pixels_per_token)
    batch = edit_prompt(bundle.tokenizer, bundle.config.tokens, instructions, grid, opts.positive_prompt,
                        opts.negative_prompt, opts.images_per_prompt, opts.max_prompt_tokens)
    source = encode_image(bundle, np.repeat(image[None], batch.batch, axis=0))
    noise = NoiseSource(image_seeds(opts.seed, len(instructions), opts.images_per_prompt), opts.steps,
                        bundle.config.token_dim)
    tokens = generate_tokens(bundle, batch, opts, noise, scatter_image_tokens(batch, source), progress=progress)
    return _to_pil(decode_tokens(bundle, tokens, opts.height, opts.width))
