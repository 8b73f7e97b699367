"""The flow-matching SDE sampler with classifier-free guidance, on explicit noise (torch)."""
from __future__ import annotations

from typing import Callable

import torch

from .head import FlowMatchingHead, token_norm
from .sampling import SamplerConfig, sampler_steps, sde_noise_scale

# velocity_fn(x [R*B,D], step index) -> v [R*B,D]
VelocityFn = Callable[[torch.Tensor, int], torch.Tensor]


def combine_cfg(v: torch.Tensor, cfg: torch.Tensor, cfg_img: torch.Tensor | None = None) -> torch.Tensor:
    """Velocities of R stacked branches [R*B,D] -> guided [B,D]; cfg, cfg_img are [B].

    2-way (T2I):  v_u + cfg (v_c - v_u)
    3-way (edit): v_u2 + cfg_img (v_u1 - v_u2) + cfg (v_c - v_u1)
    """
    g = cfg[:, None].to(v.dtype)
    if cfg_img is None:
        v_c, v_u = v.unflatten(0, (2, -1)).unbind(0)                            # 2 x [B,D]
        return v_u + g * (v_c - v_u)
    v_c, v_u1, v_u2 = v.unflatten(0, (3, -1)).unbind(0)                       # 3 x [B,D]
    return v_u2 + cfg_img[:, None].to(v.dtype) * (v_u1 - v_u2) + g * (v_c - v_u1)


def run_sampler(velocity_fn: VelocityFn, noise: torch.Tensor, sampler: SamplerConfig, cfg: torch.Tensor,
                cfg_img: torch.Tensor | None = None) -> torch.Tensor:
    """All sampler steps for one token. noise [N+1,B,D] -> token [B,D].

    The SDE update x += ((1 + t) v - x) dt + sqrt(2 (1 - t) dt) xi is the official score form
    (score = (t v - x) / (1 - t), drift = v + (1 - t) score) with the algebra done.
    """
    rows = 2 if cfg_img is None else 3
    x = noise[0]                                                              # [B,D]
    for k, step in enumerate(sampler_steps(sampler)):
        v = combine_cfg(velocity_fn(x.repeat(rows, 1), k), cfg, cfg_img)       # [B,D]
        if step.stochastic:
            x = x + ((1.0 + step.t) * v - x) * step.dt + sde_noise_scale(step) * noise[k + 1]
        else:
            x = x + step.dt * v
    return token_norm(x) if sampler.use_norm else x


def sample_token(head: FlowMatchingHead, cond: torch.Tensor, noise: torch.Tensor, sampler: SamplerConfig,
                 cfg: torch.Tensor, cfg_img: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: one full head call (time + condition embedding + MLP) per step, as the official code does.

    cond [R*B,Hc] holds the branches stacked [cond | uncond (| uncond2)].
    """
    grid = [s.t for s in sampler_steps(sampler)]

    def velocity(x: torch.Tensor, k: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), grid[k], dtype=torch.float32, device=x.device)
        return head(x, t, cond)

    return run_sampler(velocity, noise, sampler, cfg, cfg_img)
