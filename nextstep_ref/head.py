"""The flow-matching head: SimpleMLPAdaLN predicting a velocity for one 64-d image token.

The embedding of the condition and of the time, and the adaLN modulations they feed, are exposed separately, so a
fused sampler can compute the condition embedding once per token, take the time embeddings of its fixed grid as
constants, and compute every step's modulations — already split into shift, 1 + scale and gate — in one batch
before its first step.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import HeadConfig


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def modulation_parts(mod: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """An adaLN output [...,n*dim] as (shift, 1 + scale[, gate]): ``modulate(x, shift, scale)`` is then
    ``x * scale1 + shift``, the same operations in the same order, with the ``1 +`` done once per modulation."""
    shift, scale, *gate = mod.chunk(n, dim=-1)
    return (shift, 1 + scale, *gate)


class TimestepEmbedder(nn.Module):
    """Sinusoid of t in [0, 1] (cos first, no x1000), then Linear -> SiLU -> Linear."""

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> [B,freq_dim]."""
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]                                  # [B,half]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.in_ln = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, *modulation_parts(self.adaLN_modulation(y), 3))

    def modulated(self, x: torch.Tensor, shift: torch.Tensor, scale1: torch.Tensor, gate: torch.Tensor):
        """The block given its adaLN parts [B,dim] each, the scale as ``1 + scale`` (``modulation_parts``)."""
        return x + gate * self.mlp(self.in_ln(x) * scale1 + shift)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, *modulation_parts(self.adaLN_modulation(y), 2))

    def modulated(self, x: torch.Tensor, shift: torch.Tensor, scale1: torch.Tensor) -> torch.Tensor:
        """The layer given its adaLN parts [B,dim] each, the scale as ``1 + scale``."""
        return self.linear(self.norm_final(x) * scale1 + shift)


class SimpleMLPAdaLN(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.input_proj = nn.Linear(cfg.input_dim, cfg.dim)
        self.time_embed = TimestepEmbedder(cfg.dim, cfg.freq_dim)
        self.cond_embed = nn.Linear(cfg.cond_dim, cfg.dim)
        self.res_blocks = nn.ModuleList(ResBlock(cfg.dim, cfg.mlp_ratio) for _ in range(cfg.layers))
        self.final_layer = FinalLayer(cfg.dim, cfg.input_dim)

    def velocity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x [B,token_dim], y [B,dim] (= time embedding + condition embedding) -> v [B,token_dim]."""
        return self.velocity_modulated(x, self.modulations(y))

    def modulations(self, y: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Each res block's adaLN parts (shift, 1 + scale, gate) [...,dim], then the final layer's (shift,
        1 + scale). They depend on y alone (time and condition, not x), so a fused sampler computes them for its
        whole time grid in one batch."""
        return [modulation_parts(b.adaLN_modulation(y), 3) for b in self.res_blocks] + \
            [modulation_parts(self.final_layer.adaLN_modulation(y), 2)]

    def velocity_modulated(self, x: torch.Tensor, mods: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """x [B,token_dim] and the ``modulations`` of its y -> v [B,token_dim]."""
        h = self.input_proj(x)
        for block, parts in zip(self.res_blocks, mods):
            h = block.modulated(h, *parts)
        return self.final_layer.modulated(h, *mods[-1])

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x [B,token_dim], t [B], c [B,cond_dim] -> v [B,token_dim]."""
        return self.velocity(x, self.time_embed(t) + self.cond_embed(c))


class FlowMatchingHead(nn.Module):
    """Wrapper whose ``net`` attribute gives the checkpoint's ``image_head.net.*`` key names."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        self.net = SimpleMLPAdaLN(cfg)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, c)


def token_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim (the per-token latent norm and ``use_norm``)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)
