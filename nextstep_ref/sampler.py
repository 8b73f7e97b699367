"""The reference sampler: one full head call per step, as the official code runs it (torch)."""
from __future__ import annotations

import torch

from .head import FlowMatchingHead, token_norm
from .sampling import SamplerConfig, combine_cfg, run_sampler, sampler_steps

__all__ = ["combine_cfg", "run_sampler", "sample_token"]


def sample_token(head: FlowMatchingHead, cond: torch.Tensor, noise: torch.Tensor, sampler: SamplerConfig,
                 cfg: torch.Tensor, cfg_img: torch.Tensor | None = None) -> torch.Tensor:
    """cond [R*B,Hc] holds the branches stacked [cond | uncond (| uncond2)]; noise [N+1,B,D] -> token [B,D].

    Every step recomputes the time and condition embeddings, exactly like the official ``sample``.
    """
    grid = [s.t for s in sampler_steps(sampler)]

    def velocity(x: torch.Tensor, k: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), grid[k], dtype=torch.float32, device=x.device)
        return head(x, t, cond)

    dtype = noise.dtype
    cfg = cfg.to(dtype)
    cfg_img = None if cfg_img is None else cfg_img.to(dtype)
    return run_sampler(velocity, noise, sampler, cfg, cfg_img, norm=token_norm)
