"""Flux-style f8 autoencoder (NextStep-1-f8ch16-Tokenizer); module names give the checkpoint's Flux key names."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .head import token_norm
from .latents import patchify_latents, unpatchify_latents


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1 convs for q, k, v and the output."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, c, h * w).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B,HW,C]
        probs = torch.softmax((q @ k.transpose(1, 2)) * c**-0.5, dim=-1)                          # [B,HW,HW]
        out = (probs @ v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: ``block`` list plus an optional ``downsample``/``upsample``."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.resample_name = resample_name
        if resample is not None:
            setattr(self, resample_name, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample_name, None)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        ins = [cfg.ch] + chans[:-1]
        last = len(chans) - 1
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level([ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)],
                  Downsample(cout) if i != last else None, "downsample")
            for i, (cin, cout) in enumerate(zip(ins, chans)))
        self.mid = MidBlock(chans[-1])
        self.norm_out = _norm(chans[-1])
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] -> moments [B,2z,H/8,W/8] (mean, logvar)."""
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.z_channels, chans[-1], 3, padding=1)
        self.mid = MidBlock(chans[-1])
        # up[i] is level i (0 = full resolution); it runs from the deepest level up and takes the channels of
        # the level below it (deeper), so its first block may change the width.
        ins = chans[1:] + [chans[-1]]
        self.up = nn.ModuleList(
            Level([ResnetBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)],
                  Upsample(cout) if i != 0 else None, "upsample")
            for i, (cin, cout) in enumerate(zip(ins, chans)))
        self.norm_out = _norm(chans[0])
        self.conv_out = nn.Conv2d(chans[0], cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """latents [B,z,h,w] -> image [B,3,8h,8w] in about [-1, 1]."""
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class AutoEncoder(nn.Module):
    """encode: image -> token-normed posterior mean; decode: latents -> image. Scale/shift stay outside."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] in [-1,1] -> latents [B,z,H/8,W/8]: the posterior mean, normed per psz x psz patch."""
        mean = self.encoder(image)[:, : self.cfg.z_channels]
        if not self.cfg.encoder_norm:
            return mean
        tokens = patchify_latents(mean, self.cfg.psz)                            # [B,N,z*psz*psz]
        return unpatchify_latents(token_norm(tokens), mean.shape[2], mean.shape[3], self.cfg.psz)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents)
