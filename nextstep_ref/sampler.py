"""The reference sampler: one full head call per step, as the official code runs it (torch)."""
from __future__ import annotations

import torch

from .head import FlowMatchingHead, token_norm
from .sampling import Guidance, SamplerConfig, combine_cfg, run_sampler, sampler_steps

__all__ = ["combine_cfg", "run_sampler", "sample_token"]


def sample_token(head: FlowMatchingHead, cond: torch.Tensor, noise: torch.Tensor, sampler: SamplerConfig,
                 guidance: Guidance, cfg: torch.Tensor | None = None,
                 cfg_img: torch.Tensor | None = None) -> torch.Tensor:
    """cond [R*B,Hc] holds the branches stacked as ``guidance`` lays them out; noise [N+1,B,D] -> token [B,D].

    Every step recomputes the time and condition embeddings, exactly like the official ``sample``, with its
    numerics: the state x, the velocity, the CFG combine and the update stay fp32; the net sees x and t cast to
    the head's dtype; the token comes back in the head's dtype and is normed there.
    """
    grid = [s.t for s in sampler_steps(sampler)]
    state = torch.promote_types(noise.dtype, torch.float32)                    # fp32 (fp64 in exact tests)
    dtype = next((p.dtype for p in head.parameters()), state)

    def velocity(x: torch.Tensor, k: int) -> torch.Tensor:
        t = torch.full((x.shape[0],), grid[k], dtype=torch.float32, device=x.device)
        return head(x.to(dtype), t.to(dtype), cond).to(state)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return token_norm(x.to(dtype))

    out = run_sampler(velocity, noise.to(state), sampler, guidance, cfg, cfg_img, norm=norm)
    return out.to(dtype)
