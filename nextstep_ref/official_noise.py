"""Noise drawn from torch's CPU generator in the official pipeline's order and shapes (torch).

The official ``generate_image`` seeds torch's global generator (``set_seed``), then, when editing, the VAE
encoder's ``posterior.sample()`` draws ``randn(n_images, z, h, w)`` in the VAE's dtype; then per token the head's
``randn_tensor`` draws the initial x and one noise per SDE step, each ``randn(images_per_caption, D)`` in fp32,
tiled over the captions (``.repeat(B // images_per_caption, 1)``). The ``hf`` sampler draws N + 1 times per
token (its last step is an SDE step too), ``gh`` N times (no draw for the deterministic 0.04 step). A private
``torch.Generator`` seeded like the global one yields the same values without touching the caller's RNG state.
"""
from __future__ import annotations

import numpy as np
import torch

from .sampling import SamplerConfig, sampler_steps


class OfficialNoise:
    def __init__(self, seed: int, n_prompts: int, images_per_prompt: int, sampler: SamplerConfig, token_dim: int):
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.repeat, self.per_caption, self.dim = n_prompts, images_per_prompt, token_dim
        self.stochastic = [s.stochastic for s in sampler_steps(sampler)]

    def _draw(self) -> torch.Tensor:
        """One ``randn_tensor`` call: [nipc, D] drawn, tiled to [B, D]."""
        x = torch.randn((self.per_caption, self.dim), generator=self.generator, dtype=torch.float32)
        return x.repeat(self.repeat, 1)

    def posterior(self, shape: tuple[int, ...], dtype: str = "float32") -> None:
        """The encoder's posterior draw (its value is scaled by a zero std in deterministic VAEs)."""
        torch.randn(shape, generator=self.generator, dtype=getattr(torch, dtype))

    def next(self) -> np.ndarray:
        """[steps+1, B, D]: x0, then the noise of every SDE step (zeros for a deterministic last step)."""
        slots = [self._draw()] + [self._draw() if s else None for s in self.stochastic]
        zeros = torch.zeros(self.repeat * self.per_caption, self.dim)
        return torch.stack([zeros if s is None else s for s in slots]).numpy()
