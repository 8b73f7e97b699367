"""Latents <-> tokens <-> pixels. Torch-free: every function works on numpy arrays and on torch tensors alike."""
from __future__ import annotations

import numpy as np

from nextstep_trt.core.errors import UserError

from .config import VAEConfig


def _permute(x, axes):
    return x.permute(*axes) if hasattr(x, "permute") else x.transpose(axes)


def patchify_latents(z, p: int):
    """latents [B,C,h,w] -> tokens [B,(h/p)*(w/p),C*p*p], raster order, feature index c*p*p + dy*p + dx."""
    b, c, h, w = z.shape
    z = z.reshape(b, c, h // p, p, w // p, p)
    z = _permute(z, (0, 2, 4, 1, 3, 5))                                          # [B,h/p,w/p,C,p,p]
    return z.reshape(b, (h // p) * (w // p), c * p * p)


def unpatchify_latents(tokens, h: int, w: int, p: int):
    """tokens [B,N,C*p*p] -> latents [B,C,h,w]; h, w are the latent sizes (non-square allowed)."""
    b, _, d = tokens.shape
    c = d // (p * p)
    z = tokens.reshape(b, h // p, w // p, c, p, p)
    z = _permute(z, (0, 3, 1, 4, 2, 5))                                          # [B,C,h/p,p,w/p,p]
    return z.reshape(b, c, h, w)


def to_model_space(z, vae: VAEConfig):
    """VAE latents -> the AR model's token space: (z - shift) * scale."""
    return (z - vae.shift_factor) * vae.scaling_factor


def from_model_space(z, vae: VAEConfig):
    """The AR model's token space -> VAE latents: z / scale + shift."""
    return z / vae.scaling_factor + vae.shift_factor


def token_grid(height: int, width: int, pixels_per_token: int) -> tuple[int, int]:
    """Image size -> token grid (rows, cols); sizes must be positive multiples of pixels_per_token."""
    for name, size in (("height", height), ("width", width)):
        if size <= 0 or size % pixels_per_token:
            raise UserError(f"{name} {size} is not a positive multiple of {pixels_per_token}")
    return height // pixels_per_token, width // pixels_per_token


def image_to_uint8(image: np.ndarray) -> np.ndarray:
    """VAE output [B,3,H,W] in about [-1,1] -> uint8 [B,H,W,3]: ((x/2 + 0.5).clamp(0,1) * 255).round()."""
    x = np.clip(np.asarray(image, dtype=np.float32) / 2 + 0.5, 0.0, 1.0)
    return np.round(x * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def uint8_to_image(pixels: np.ndarray) -> np.ndarray:
    """uint8 [B,H,W,3] -> float32 [B,3,H,W] in [-1, 1], the VAE encoder's input range."""
    return (np.asarray(pixels, dtype=np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0).astype(np.float32)


def load_image(path, height: int, width: int) -> np.ndarray:
    """Read an image file as uint8 [H,W,3], resized (bicubic) to height x width when it differs."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.BICUBIC)
            return np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read image {path}: {err}") from None
