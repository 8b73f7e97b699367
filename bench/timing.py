"""Stage timing from the real loop: a call log, a timing wrapper around a Backend, and their summary (torch-free)."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.latents import token_grid
from nextstep_trt.ref.noise import NoiseSource, image_seeds
from nextstep_trt.ref.options import GenerationOptions

WINDOW = 5   # decode calls pooled for "token 1", "middle" and "last" (medians resist one slow call)


@dataclass
class CallLog:
    """Wall seconds of every stage call of one generation run, in call order."""

    prefill: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)       # one per decode step, token order
    sampler: list[float] = field(default_factory=list)      # one per image token
    head_calls: int = 0                                      # reference only: head forward calls
    vae: list[float] = field(default_factory=list)
    e2e: float = 0.0

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Append the block's wall time to ``stage``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            getattr(self, stage).append(time.perf_counter() - start)


class TimedBackend:
    """Delegates everything to ``inner`` and times each backbone, sampler and VAE call into ``log``.

    The first backbone call after ``start`` is the prefill, the others are decode steps."""

    def __init__(self, inner):
        self.inner = inner
        self.log = CallLog()
        self._prefilled = False

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def start(self, rows: int, needed: int) -> None:
        self._prefilled = False
        self.inner.start(rows, needed)

    def backbone(self, *args) -> np.ndarray:
        stage = "decode" if self._prefilled else "prefill"
        self._prefilled = True
        with self.log.timed(stage):
            return self.inner.backbone(*args)

    def sample(self, *args) -> np.ndarray:
        with self.log.timed("sampler"):
            return self.inner.sample(*args)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        with self.log.timed("vae"):
            return self.inner.decode(latents)


def grid_tokens(opts: GenerationOptions, cfg: NextStepConfig) -> int:
    """Image tokens of one image at the options' size."""
    h, w = token_grid(opts.height, opts.width, cfg.pixels_per_token)
    return h * w


def zero_tokens(opts: GenerationOptions, cfg: NextStepConfig) -> np.ndarray:
    """[images, tokens, token_dim] zeros: what the warm-up decodes to touch the VAE at this size."""
    return np.zeros((opts.images_per_prompt, grid_tokens(opts, cfg), cfg.token_dim), np.float32)


def noise_source(opts: GenerationOptions, cfg: NextStepConfig) -> NoiseSource:
    """The request's seeded noise (the first draw feeds the sampler micro-benchmarks)."""
    return NoiseSource(image_seeds(opts.seed, 1, opts.images_per_prompt), opts.steps, cfg.token_dim)


def median_ms(values: list[float]) -> float | None:
    """Median in milliseconds (None for no values)."""
    return statistics.median(values) * 1e3 if values else None


def decode_windows(logs: list[CallLog], window: int = WINDOW) -> tuple[float | None, ...]:
    """Median ms of the first, middle and last ``window`` decode steps, pooled over runs."""
    first, mid, last = [], [], []
    for log in logs:
        d, w = log.decode, min(window, len(log.decode))
        if not d:
            continue
        m = max(0, len(d) // 2 - w // 2)
        first += d[:w]
        mid += d[m:m + w]
        last += d[-w:]
    return median_ms(first), median_ms(mid), median_ms(last)


def time_calls(fn: Callable[[], object], calls: int) -> float:
    """Median wall ms of ``calls`` calls of ``fn`` (after one untimed call)."""
    fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3
