"""Sampler settings, timestep grids and CFG schedules: plain Python, shared by the reference and every backend."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from nextstep_trt.errors import UserError


class SamplerVariant(str, enum.Enum):
    """``hf``: N SDE steps on k/N (HF / GH-new). ``gh``: N-1 SDE steps on linspace(0, .96, N) + one 0.04 ODE step."""

    HF = "hf"
    GH = "gh"


class CfgSchedule(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"  # 1 + (cfg - 1) * (N_tok - k) / N_tok: decays to 1 over the image (HF / GH-old)


@dataclass(frozen=True)
class SamplerConfig:
    """What a fused sampler graph fixes at export."""

    steps: int = 50
    shift: float = 1.0
    variant: SamplerVariant = SamplerVariant.HF
    use_norm: bool = False
    last_step_size: float = 0.04  # only for the ``gh`` variant

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"sampler steps must be >= 1, got {self.steps}")
        if not self.shift > 0:
            raise UserError(f"timestep shift must be > 0, got {self.shift}")


@dataclass(frozen=True)
class Step:
    """One sampler step: evaluate v at ``t``; advance by ``dt``; SDE (uses a fresh noise) or plain Euler."""

    t: float
    dt: float
    stochastic: bool


def shift_time(t: float, shift: float) -> float:
    """t -> t / (s - (s - 1) t); identity at s = 1, keeps 0 and 1 fixed."""
    return t / (shift - (shift - 1.0) * t)


def sampler_steps(cfg: SamplerConfig) -> list[Step]:
    """The steps of the chosen variant. Noise slot k+1 belongs to step k; slot 0 is the initial x."""
    n = cfg.steps
    if cfg.variant is SamplerVariant.HF:
        grid = [shift_time(k / n, cfg.shift) for k in range(n)] + [1.0]
        return [Step(grid[k], grid[k + 1] - grid[k], True) for k in range(n)]
    span = 1.0 - cfg.last_step_size
    raw = [span * k / (n - 1) for k in range(n)] if n > 1 else [0.0]
    grid = [shift_time(t, cfg.shift) for t in raw]
    steps = [Step(grid[k], grid[k + 1] - grid[k], True) for k in range(n - 1)]
    return steps + [Step(grid[-1], cfg.last_step_size, False)]


def sde_noise_scale(step: Step) -> float:
    """sqrt(2 (1 - t)) * sqrt(dt) for an SDE step, 0 for the deterministic last step."""
    return math.sqrt(2.0 * (1.0 - step.t)) * math.sqrt(step.dt) if step.stochastic else 0.0


def cfg_at(cfg: float, token_index: int, n_tokens: int, schedule: CfgSchedule) -> float:
    """The guidance scale for one image token under a schedule."""
    if schedule is CfgSchedule.CONSTANT:
        return cfg
    return 1.0 + (cfg - 1.0) * (n_tokens - token_index) / n_tokens
