"""Seeded noise drawn on the host, one generator per image, so every backend and batch layout sees the same noise."""
from __future__ import annotations

from typing import Sequence

import numpy as np


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


def image_seeds(seed: int, n_prompts: int, images_per_prompt: int) -> list[int]:
    """Seed of each image, prompt-major. Like the official pipeline, every prompt shares the same per-image noise."""
    return [seed + i for _ in range(n_prompts) for i in range(images_per_prompt)]
