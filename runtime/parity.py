"""Three-level parity (torch-free): what a loop run records, and how two records are compared. design.md §4.

The reference side comes either live from torch (``nextstep_trt.runtime.reference``) or from a golden folder
(``nextstep_trt.runtime.golden``), so a GPU machine without torch can verify its engines against goldens made elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nextstep_trt.core.level1 import parity_row
from nextstep_trt.core.metrics import Bound, compare, psnr
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport, ParityRow
from nextstep_trt.core.tolerances import loop_bound, psnr_min
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.prompt import PromptBatch
from nextstep_trt.ref.sampling import sampler_steps

from .backend import Backend
from .loop import decode_images, generate_tokens


class ReplayNoise:
    """Noise from a fixed array [N_tok,N+1,B,D], handed out token by token (a NoiseSource stand-in)."""

    def __init__(self, draws: np.ndarray):
        self.draws, self.k = draws, 0

    def next(self) -> np.ndarray:
        self.k += 1
        return self.draws[self.k - 1]

    def posterior(self, shape, dtype: str = "float32") -> None:
        """Nothing: replayed noise has no generator to advance."""


@dataclass
class LoopCase:
    """One level-2/3 scenario, fully determined by arrays (no tokenizer needed to replay it)."""

    label: str
    opts: GenerationOptions
    prompt: PromptBatch
    noise: np.ndarray                       # [N_tok,N+1,B,D]
    image_tokens: np.ndarray | None = None  # [R*B,L,D] for editing (the reference encoder's tokens)
    source_image: np.ndarray | None = None  # uint8 [B,H,W,3] the edited image (level 3 encodes it itself)
    index: int = 0                          # position in its case list (golden files are numbered by it)


@dataclass
class LoopTrace:
    """Per-token records of one loop run."""

    cond: list[np.ndarray] = field(default_factory=list)       # [R*B,H] the sampler's condition
    velocity: list[np.ndarray] = field(default_factory=list)   # [R*B,D] head at (noise[0], t0, cond)
    tokens: np.ndarray | None = None                           # [B,N_tok,D]
    image: np.ndarray | None = None                            # uint8 [B,H,W,3]


def run_trace(backend: Backend, case: LoopCase, forced: np.ndarray | None = None,
              image_tokens: np.ndarray | None = None, decode: bool = False) -> LoopTrace:
    """Run the loop on ``backend``; record cond and a velocity probe per token (teacher-forced when ``forced``)."""
    trace = LoopTrace()
    t0 = sampler_steps(case.opts.sampler_config())[0].t
    rows = case.prompt.input_ids.shape[0]
    probe = backend.has("head_step")

    def record(k: int, token: np.ndarray, cond: np.ndarray) -> None:
        trace.cond.append(cond.copy())
        if probe:
            x = np.tile(case.noise[k, 0], (case.prompt.cfg_rows, 1))
            trace.velocity.append(backend.velocity(x, np.full(rows, t0, np.float32), cond).copy())

    trace.tokens = generate_tokens(backend, case.prompt, case.opts, ReplayNoise(case.noise),
                                   image_tokens, callback=record, forced=forced)
    if decode:
        trace.image = decode_images(backend, trace.tokens, case.opts.height, case.opts.width)
    return trace


def compare_level2(label: str, precision: Precision, ref: LoopTrace, got: LoopTrace) -> ParityReport:
    """Teacher-forced: per token, cond, velocity probe and token, each within the loop bound."""
    bound, p = loop_bound(precision), Precision(precision).value
    report = ParityReport()
    for k in range(len(ref.cond)):
        report.add(parity_row(2, "loop", p, f"{label} token {k}", "cond", ref.cond[k], got.cond[k], bound))
        if ref.velocity and got.velocity:
            report.add(parity_row(2, "loop", p, f"{label} token {k}", "velocity", ref.velocity[k], got.velocity[k], bound))
        report.add(parity_row(2, "loop", p, f"{label} token {k}", "token", ref.tokens[:, k], got.tokens[:, k], bound))
    return report


def first_divergence(ref_tokens: np.ndarray, got_tokens: np.ndarray, bound: Bound) -> int | None:
    """Index of the first token whose error breaks the loop bound (None if none does)."""
    for k in range(ref_tokens.shape[1]):
        if bound.violations(compare(ref_tokens[:, k], got_tokens[:, k])):
            return k
    return None


def compare_level3(label: str, precision: Precision, ref: LoopTrace, got: LoopTrace) -> ParityReport:
    """Free-running: image PSNR and max pixel error, and the first token that left the loop bound."""
    p = Precision(precision)
    floor = psnr_min(p)
    value = psnr(ref.image, got.image)
    max_px = int(np.abs(ref.image.astype(np.int16) - got.image.astype(np.int16)).max())
    first = first_divergence(ref.tokens, got.tokens, loop_bound(p))
    violations = [] if value >= floor else [f"psnr {value:.2f} dB < {floor:g} dB (first divergent token: {first})"]
    extra = {"psnr_db": round(value, 3) if np.isfinite(value) else "inf", "max_pixel_error": max_px,
             "first_divergent_token": first}
    row = ParityRow(3, "image", p.value, label, "image", None, Bound(psnr_db=floor), violations, extra)
    token_row = parity_row(3, "loop", p.value, label, "tokens", ref.tokens, got.tokens, Bound())
    return ParityReport([row, token_row])
