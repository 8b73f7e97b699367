"""Seeded noise drawn on the host. Two modes (``options.NoiseMode``), one interface: ``next()`` gives a token's
noise [steps+1, B, D] (slot 0 the initial x, slot k+1 the noise of step k), ``posterior(shape)`` the editing
encoder's draw. Torch-free; the official mode imports torch when it is made."""
from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from nextstep_trt.core.errors import UserError

from .options import GenerationOptions, NoiseMode


class Noise(Protocol):
    def next(self) -> np.ndarray:
        """Noise for the next token of every image: [steps+1, B, D] float32."""

    def posterior(self, shape: tuple[int, ...], dtype: str = "float32") -> None:
        """The draw the official VAE encoder's ``posterior.sample()`` makes before any token draw (editing)."""


class NoiseSource:
    """Each image row has its own generator; a token's noise is [steps+1, B, D]: the initial x, then one per step.

    An image's noise depends only on its seed, never on which other images share the batch.
    """

    def __init__(self, seeds: Sequence[int], steps: int, token_dim: int):
        self.generators = [np.random.Generator(np.random.PCG64(int(s))) for s in seeds]
        self.shape = (steps + 1, token_dim)

    def next(self) -> np.ndarray:
        """Noise for the next token of every image: [steps+1, B, D] float32."""
        return np.stack([g.standard_normal(self.shape, dtype=np.float32) for g in self.generators], axis=1)

    def posterior(self, shape: tuple[int, ...], dtype: str = "float32") -> None:
        """Nothing: the encoder uses the posterior mean and this mode has no official draw order to keep."""


def image_seeds(seed: int, n_prompts: int, images_per_prompt: int) -> list[int]:
    """Seed of each image, prompt-major. Like the official pipeline, every prompt shares the same per-image noise."""
    return [seed + i for _ in range(n_prompts) for i in range(images_per_prompt)]


def make_noise(opts: GenerationOptions, n_prompts: int, token_dim: int, seeds: Sequence[int] | None = None) -> Noise:
    """The noise of one generate/edit call in the mode ``opts.noise`` asks for."""
    if opts.noise is NoiseMode.PER_IMAGE:
        seeds = seeds or image_seeds(opts.seed, n_prompts, opts.images_per_prompt)
        return NoiseSource(seeds, opts.steps, token_dim)
    if seeds is not None:
        raise UserError("noise 'official' draws from one generator per call: per-image seeds do not apply")
    try:
        from .official_noise import OfficialNoise
    except ModuleNotFoundError as err:
        if err.name != "torch":
            raise
        raise UserError("--noise official draws from torch's generator and needs torch: "
                        "pip install -e \".[torch]\" -c constraints.txt") from None
    return OfficialNoise(opts.seed, n_prompts, opts.images_per_prompt, opts.sampler_config(), token_dim)
