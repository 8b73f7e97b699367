"""The generation loop, written once against the backend protocol (torch-free).

prompt -> prefill (every CFG row in one batch) -> per token: sampler call, decode step -> unpatchify -> VAE decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from nextstep_trt.core.errors import UserError, check_finite
from nextstep_trt.ref.latents import (
    from_model_space,
    image_to_uint8,
    patchify_latents,
    to_model_space,
    token_grid,
    uint8_to_image,
    unpatchify_latents,
)
from nextstep_trt.ref.noise import Noise, make_noise
from nextstep_trt.ref.options import GenerationOptions, check_scale
from nextstep_trt.ref.prompt import PromptBatch, edit_prompt, scatter_image_tokens, text_to_image_prompt
from nextstep_trt.ref.sampling import Guidance, guidance_for, token_scales

from .backend import Backend

# callback(token index, tokens [B,D], cond [R*B,H] the sampler used)
TokenCallback = Callable[[int, np.ndarray, np.ndarray], None]


def _progress(n: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(range(n), desc="tokens", unit="tok", disable=not enabled, leave=False)


def _per_image(values: Sequence[float] | None, default: float, b: int, what: str) -> list[float]:
    """One guidance scale per image (Python floats, so a schedule computes as before), each checked."""
    if values is None:
        return [default] * b
    if len(values) != b:
        raise UserError(f"{len(values)} {what} values for {b} images")
    return [check_scale(what, v) for v in values]


def _scale(values: list[float] | None) -> np.ndarray | None:
    return None if values is None else np.array(values, np.float32)


def generate_tokens(backend: Backend, prompt: PromptBatch, opts: GenerationOptions, noise: Noise,
                    image_tokens: np.ndarray | None = None, progress: bool = False,
                    callback: TokenCallback | None = None, forced: np.ndarray | None = None,
                    cfgs: Sequence[float] | None = None, cfg_imgs: Sequence[float] | None = None) -> np.ndarray:
    """Tokens [B,N,D] in model space. ``forced`` [B,N,D] teacher-forces the tokens fed back (parity level 2);
    ``cfgs`` / ``cfg_imgs`` give each image its own guidance (default: opts.cfg / opts.cfg_img for all)."""
    cfg = backend.config
    rows, b, length = prompt.input_ids.shape[0], prompt.batch, prompt.length
    grid = token_grid(opts.height, opts.width, cfg.pixels_per_token)
    n_tok = grid[0] * grid[1]
    sampler = opts.sampler_config()
    backend.start(rows, length + n_tok)
    if image_tokens is None:
        image_tokens = np.zeros((rows, length, cfg.token_dim), np.float32)
    cond = backend.backbone(prompt.input_ids, image_tokens, prompt.image_mask, prompt.position_ids,
                            prompt.token_mask)
    cfgs = _per_image(cfgs, opts.cfg, b, "cfg")
    cfg_imgs = _per_image(cfg_imgs, opts.cfg_img, b, "cfg_img")
    step_ids = np.full((rows, 1), cfg.tokens.placeholder, np.int64)
    ones = np.ones((rows, 1), np.int64)
    tokens = []
    for k in _progress(n_tok, progress):
        check_finite(cond, "backbone.cond", k)
        scale, scale_img = token_scales(prompt.guidance, cfgs, cfg_imgs, k, n_tok, opts.cfg_schedule)
        token = backend.sample(cond, noise.next(), prompt.guidance, _scale(scale), _scale(scale_img), sampler)
        check_finite(token, "sampler.token", k)                                                  # [B,D]
        tokens.append(token)
        if callback is not None:
            callback(k, token, cond)
        if k == n_tok - 1:
            break
        fed = token if forced is None else forced[:, k]
        cond = backend.backbone(step_ids, np.tile(fed, (prompt.cfg_rows, 1))[:, None], ones.astype(bool),
                                np.full((rows, 1), length + k, np.int64), ones)
    return np.stack(tokens, axis=1)


def decode_images(backend: Backend, tokens: np.ndarray, height: int, width: int) -> np.ndarray:
    """Tokens [B,N,D] in model space -> uint8 images [B,H,W,3]."""
    cfg = backend.config
    f = cfg.vae.downsample
    latents = from_model_space(unpatchify_latents(tokens, height // f, width // f, cfg.latent_patch_size), cfg.vae)
    image = backend.decode(np.ascontiguousarray(latents, dtype=np.float32))
    check_finite(image, "vae_decoder.image")
    return image_to_uint8(image)


def encode_images(backend: Backend, pixels: np.ndarray) -> np.ndarray:
    """uint8 [B,H,W,3] -> tokens [B,N,D] in model space."""
    cfg = backend.config
    latents = backend.encode(uint8_to_image(pixels))
    check_finite(latents, "vae_encoder.latents")
    return patchify_latents(to_model_space(latents, cfg.vae), cfg.latent_patch_size).astype(np.float32)


@dataclass
class Request:
    """What one generate/edit call needs besides the backend."""

    prompts: list[str]
    opts: GenerationOptions
    image: np.ndarray | None = None        # uint8 [H,W,3] for editing, or [P,H,W,3]: one per prompt
    seeds: list[int] | None = None         # one per image; default: opts.seed + image index, shared by prompts
    negatives: list[str] | None = None     # one per prompt; default: opts.negative_prompt for all
    cfgs: list[float] | None = None        # one per image; default: opts.cfg for all
    cfg_imgs: list[float] | None = None    # one per image (editing); default: opts.cfg_img for all


def request_guidance(req: Request) -> Guidance:
    """The one branch layout a batched request runs with; a request whose images need different layouts is
    refused (the server groups requests by layout, so this only fires for a hand-made mixed request)."""
    edit = req.image is not None
    cfgs, cfg_imgs = req.cfgs or [req.opts.cfg], req.cfg_imgs or [req.opts.cfg_img]
    n = max(len(cfgs), len(cfg_imgs))
    pairs = zip(cfgs * n if len(cfgs) == 1 else cfgs, cfg_imgs * n if len(cfg_imgs) == 1 else cfg_imgs)
    layouts = {guidance_for(edit, c, ci) for c, ci in pairs}
    if len(layouts) > 1:
        raise UserError(f"one batch mixes guidance layouts {sorted(g.value for g in layouts)}; run them apart")
    return layouts.pop()


def build_prompt(tokenizer, backend: Backend, req: Request, max_tokens: int) -> PromptBatch:
    cfg, opts = backend.config, req.opts
    grid = token_grid(opts.height, opts.width, cfg.pixels_per_token)
    make = text_to_image_prompt if req.image is None else edit_prompt
    negative = opts.negative_prompt if req.negatives is None else req.negatives
    return make(tokenizer, cfg.tokens, req.prompts, grid, opts.positive_prompt, negative, opts.images_per_prompt,
                max_tokens, request_guidance(req))


def run_request(backend: Backend, tokenizer, req: Request, progress: bool = False,
                callback: TokenCallback | None = None, max_tokens: int | None = None) -> np.ndarray:
    """Text-to-image or editing for every prompt x image: uint8 [B,H,W,3], prompt-major."""
    opts = req.opts
    prompt = build_prompt(tokenizer, backend, req, max_tokens or opts.max_prompt_tokens)
    noise = make_noise(opts, len(req.prompts), backend.config.token_dim, req.seeds)
    image_tokens = None
    if req.image is not None:
        pixels = req.image[None] if req.image.ndim == 3 else req.image                           # [1 or P,H,W,3]
        source = encode_images(backend, np.repeat(pixels, prompt.batch // len(pixels), axis=0))
        noise.posterior((prompt.batch * (2 if prompt.cfg_rows == 3 else 1),
                         backend.config.latent_channels, *source_latent_hw(backend, pixels)))
        image_tokens = scatter_image_tokens(prompt, source)
    tokens = generate_tokens(backend, prompt, opts, noise, image_tokens, progress, callback,
                             cfgs=req.cfgs, cfg_imgs=req.cfg_imgs)
    return decode_images(backend, tokens, opts.height, opts.width)


def source_latent_hw(backend: Backend, pixels: np.ndarray) -> tuple[int, int]:
    """The encoder's latent height and width for input images [P,H,W,3]."""
    f = backend.config.vae.downsample
    return pixels.shape[1] // f, pixels.shape[2] // f
