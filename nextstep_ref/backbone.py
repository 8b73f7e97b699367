"""Qwen2.5-style causal decoder: RMSNorm, RoPE (rotate-half), GQA attention with q/k/v bias, SwiGLU MLP.

Attention works on explicit caches: every call receives the past keys/values of a fixed capacity with a mask of
valid slots, and returns only the new keys/values. The caller owns the cache (see ``KVCache``), exactly as the
exported ``backbone`` graph does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import BackboneConfig


class RMSNorm(nn.Module):
    """RMSNorm computed in fp32; the weight multiplies after casting back to the input dtype.

    Written ``h / sqrt(mean(h^2) + eps)`` (not ``h * rsqrt(...)``, transformers' form: the same value to an ulp)
    because that is the pattern ONNX Runtime's SimplifiedLayerNormFusion matches (Pow, ReduceMean, Add, Sqrt,
    Div, Mul): each exported norm runs as one kernel instead of seven; TensorRT parses both forms.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the default (unscaled) RoPE in fp32; position_ids [B,S] -> two [B,1,S,D] tensors."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=position_ids.device)
                                / head_dim))                               # [D/2]
    freqs = position_ids.float()[..., None] * inv_freq                      # [B,S,D/2]
    emb = torch.cat([freqs, freqs], dim=-1)                                 # [B,S,D]
    return emb.cos()[:, None], emb.sin()[:, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE; x [B,H,S,D]."""
    return (x.float() * cos + _rotate_half(x.float()) * sin).to(x.dtype)


def attention_allowed(past_mask: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Which keys each new token may attend: [B,1,S,C+S] bool.

    Keys are the C past slots followed by the S new tokens. A new token sees the valid past slots, the real
    new tokens at or before it, and always itself (so a left-pad query never has an empty row).
    """
    s = token_mask.shape[1]
    idx = torch.arange(s, device=token_mask.device)
    causal = idx[None, :] <= idx[:, None]                                   # [S,S]
    new = causal[None] & token_mask.bool()[:, None, :]                      # [B,S,S]
    new = new | (idx[None, :] == idx[:, None])[None]                        # a token always sees itself
    past = past_mask.bool()[:, None, :].expand(-1, s, -1)                   # [B,S,C]
    return torch.cat([past, new], dim=-1)[:, None]                          # [B,1,S,C+S]


class Attention(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        q_dim, kv_dim = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=cfg.o_attention_bias)

    def forward(self, x, cos, sin, bias, past_k, past_v):
        """x [B,S,H], bias [B,1,S,C+S] additive, past_k/v [B,KVH,C,D] -> (out [B,S,H], new_k, new_v [B,KVH,S,D])."""
        cfg = self.cfg
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, cfg.num_heads, cfg.head_dim).transpose(1, 2)      # [B,H,S,D]
        k = self.k_proj(x).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)   # [B,KVH,S,D]
        v = self.v_proj(x).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)   # [B,KVH,S,D]
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys = torch.cat([past_k, k], dim=2)                                             # [B,KVH,C+S,D]
        values = torch.cat([past_v, v], dim=2)
        # GQA without a copy of K/V per query head: query head h reads KV head h // group, so the query heads are
        # split into [KVH, G] and every group attends to its shared K/V by a broadcast matmul.
        group = cfg.num_heads // cfg.num_kv_heads
        qg = q.view(b, cfg.num_kv_heads, group, s, cfg.head_dim)                          # [B,KVH,G,S,D]
        scores = (qg @ keys[:, :, None].transpose(-1, -2)) * cfg.head_dim**-0.5          # [B,KVH,G,S,C+S]
        probs = torch.softmax((scores + bias[:, :, None]).float(), dim=-1).to(q.dtype)
        out = (probs @ values[:, :, None]).view(b, cfg.num_heads, s, cfg.head_dim)       # [B,H,S,D]
        out = out.transpose(1, 2).reshape(b, s, -1)                                       # [B,S,H*D]
        return self.o_proj(out), k, v


class MLP(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, bias, past_k, past_v):
        """Pre-norm block; returns (x, new_k, new_v)."""
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, bias, past_k, past_v)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, k, v


class Backbone(nn.Module):
    """Embeddings, decoder layers and final norm; parameter names match the checkpoint's top-level keys."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def run_layers(self, x, position_ids, token_mask, past_mask, past_kv):
        """x [B,S,H] embeddings; past_kv: one (k, v) [B,KVH,C,D] per layer.

        Returns the final-normed hidden states [B,S,H] and the new (k, v) [B,KVH,S,D] of every layer.
        """
        cos, sin = rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
        allowed = attention_allowed(past_mask, token_mask)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, float("-inf"))
        new_kv = []
        for layer, (past_k, past_v) in zip(self.layers, past_kv):
            x, k, v = layer(x, cos, sin, bias, past_k, past_v)
            new_kv.append((k, v))
        return self.norm(x), new_kv


class KVCache:
    """A fixed-capacity cache per layer, [B,KVH,C,D], with a [B,C] mask of valid slots (gpt-fast style)."""

    def __init__(self, cfg: BackboneConfig, batch: int, capacity: int, dtype=torch.float32, device="cpu"):
        shape = (batch, cfg.num_kv_heads, capacity, cfg.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_layers)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.int64, device=device)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]

    def past(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.keys, self.values))

    def write(self, new_kv, token_mask: torch.Tensor) -> None:
        """Store the new K/V of S tokens at the current position; their validity is token_mask [B,S]."""
        s = token_mask.shape[1]
        end = self.length + s
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} > capacity {self.capacity}")
        for cache_k, cache_v, (k, v) in zip(self.keys, self.values, new_kv):
            cache_k[:, :, self.length:end] = k
            cache_v[:, :, self.length:end] = v
        self.valid[:, self.length:end] = token_mask
        self.length = end
