"""Sampler settings, timestep grids and CFG schedules: plain Python, shared by the reference and every backend."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Callable

from nextstep_trt.core.errors import UserError


class SamplerVariant(str, enum.Enum):
    """``hf``: N SDE steps on k/N (HF / GH-new). ``gh``: N-1 SDE steps on linspace(0, .96, N) + one 0.04 ODE step."""

    HF = "hf"
    GH = "gh"


class CfgSchedule(str, enum.Enum):
    CONSTANT = "constant"
    LINEAR = "linear"  # 1 + (cfg - 1) * (N_tok - k) / N_tok: decays to 1 over the image (HF / GH-old)


class Guidance(str, enum.Enum):
    """The CFG branches, as the official ``_build_captions`` lays them out (rows are branch-major).

    ``none``: cfg = 1, one row per image, v = v_c (no unconditional row is built).
    ``text``: [cond | negative text], v = v_u + cfg (v_c - v_u) (text-to-image, and editing at cfg_img = 1,
    where the unconditional row is the negative prompt *without* the image).
    ``text-image``: [image + instruction | image + negative | negative], v = v_u2 + cfg_img (v_u1 - v_u2)
    + cfg (v_c - v_u1) (editing at cfg > 1 and cfg_img > 1).
    """

    NONE = "none"
    TEXT = "text"
    TEXT_IMAGE = "text-image"

    @property
    def rows(self) -> int:
        """R: rows per image in every backbone and head call."""
        return {"none": 1, "text": 2, "text-image": 3}[self.value]


def guidance_for(edit: bool, cfg: float, cfg_img: float = 1.0) -> Guidance:
    """The official branch layout for (task, cfg, cfg_img); cfg = 1 with cfg_img > 1 is refused (the official
    pipeline builds one row but its head counts two branches and fails)."""
    if cfg == 1.0:
        if edit and cfg_img != 1.0:
            raise UserError(f"cfg-img {cfg_img:g} needs cfg > 1: at cfg = 1 the official pipeline builds no "
                            "unconditional rows (use --cfg-img 1 for no guidance, or raise --cfg)")
        return Guidance.NONE
    return Guidance.TEXT_IMAGE if edit and cfg_img != 1.0 else Guidance.TEXT


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
    """The guidance scale for one image token under a schedule (the official code schedules cfg_img the same way)."""
    if schedule is CfgSchedule.CONSTANT:
        return cfg
    return 1.0 + (cfg - 1.0) * (n_tokens - token_index) / n_tokens


def token_scales(guidance: Guidance, cfgs: list[float], cfg_imgs: list[float], token_index: int, n_tokens: int,
                 schedule: CfgSchedule) -> tuple[list[float] | None, list[float] | None]:
    """Per image, (cfg, cfg_img) of one token under the schedule; None where the layout has no such branch."""
    if guidance is Guidance.NONE:
        return None, None
    cfg = [cfg_at(c, token_index, n_tokens, schedule) for c in cfgs]
    if guidance is Guidance.TEXT:
        return cfg, None
    return cfg, [cfg_at(c, token_index, n_tokens, schedule) for c in cfg_imgs]


# --- the sampler, written once for numpy arrays and torch tensors -----------------------------------------------------

def _xp(x):
    """The array module of ``x``: torch for tensors, numpy otherwise."""
    if type(x).__module__.startswith("torch"):
        import torch

        return torch
    import numpy

    return numpy


def combine_cfg(v, guidance: Guidance, cfg=None, cfg_img=None):
    """Velocities of the R stacked branches [R*B,D] -> guided [B,D]; cfg, cfg_img are [B] (official order).

    none:       v_c
    text:       v_u + cfg (v_c - v_u)
    text-image: v_u2 + cfg_img (v_u1 - v_u2) + cfg (v_c - v_u1)
    """
    if guidance is Guidance.NONE:
        return v
    branches = v.reshape(guidance.rows, -1, v.shape[-1])                      # [R,B,D]
    if guidance is Guidance.TEXT:
        v_c, v_u = branches[0], branches[1]
        return v_u + cfg[:, None] * (v_c - v_u)
    v_c, v_u1, v_u2 = branches[0], branches[1], branches[2]
    return v_u2 + cfg_img[:, None] * (v_u1 - v_u2) + cfg[:, None] * (v_c - v_u1)


def run_sampler(velocity_fn: Callable, noise, sampler: SamplerConfig, guidance: Guidance, cfg=None, cfg_img=None,
                norm: Callable | None = None):
    """All sampler steps for one token: noise [N+1,B,D] -> token [B,D] (numpy or torch).

    velocity_fn(x [R*B,D], step index) -> v [R*B,D]; ``norm`` is the token LayerNorm applied when
    ``sampler.use_norm``. The SDE update x += ((1 + t) v - x) dt + sqrt(2 (1 - t) dt) xi is the official score
    form (score = (t v - x) / (1 - t), drift = v + (1 - t) score) with the algebra done.
    """
    xp = _xp(noise)
    x = noise[0]                                                              # [B,D]
    for k, step in enumerate(sampler_steps(sampler)):
        xs = x if guidance.rows == 1 else xp.tile(x, (guidance.rows, 1))       # [R*B,D]
        v = combine_cfg(velocity_fn(xs, k), guidance, cfg, cfg_img)            # [B,D]
        if step.stochastic:
            x = x + ((1.0 + step.t) * v - x) * step.dt + sde_noise_scale(step) * noise[k + 1]
        else:
            x = x + step.dt * v
    if sampler.use_norm:
        if norm is None:
            raise ValueError("use_norm needs a norm function")
        x = norm(x)
    return x
