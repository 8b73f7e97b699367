"""The flow-matching head (SimpleMLPAdaLN) against an independent functional rewrite of the spec (§3), fp32."""
from __future__ import annotations

import math

import torch

TOL = 1e-5


def linear(state, name, x):
    return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]


def layer_norm(x, eps=1e-6, weight=None, bias=None):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    out = (x - mu) / torch.sqrt(var + eps)
    return out if weight is None else out * weight + bias


def silu(x):
    return x * torch.sigmoid(x)


def spec_time_features(t, freq_dim):
    """[cos(t f_i), sin(t f_i)], f_i = exp(-ln(10000) i / half), t raw in [0, 1] (no x1000)."""
    half = freq_dim // 2
    rows = []
    for tv in t.tolist():
        freqs = [math.exp(-math.log(10000.0) * i / half) for i in range(half)]
        rows.append([math.cos(tv * f) for f in freqs] + [math.sin(tv * f) for f in freqs])
    return torch.tensor(rows, dtype=torch.float32)


def spec_head(state, cfg, x, t, c):
    p = "image_head.net."
    h = linear(state, p + "input_proj", x)
    temb = linear(state, p + "time_embed.mlp.2", silu(linear(state, p + "time_embed.mlp.0",
                                                              spec_time_features(t, cfg.freq_dim))))
    y = temb + linear(state, p + "cond_embed", c)
    for i in range(cfg.layers):
        b = f"{p}res_blocks.{i}."
        shift, scale, gate = linear(state, b + "adaLN_modulation.1", silu(y)).chunk(3, dim=-1)
        m = layer_norm(h, 1e-6, state[b + "in_ln.weight"], state[b + "in_ln.bias"]) * (1 + scale) + shift
        h = h + gate * linear(state, b + "mlp.2", silu(linear(state, b + "mlp.0", m)))
    shift, scale = linear(state, p + "final_layer.adaLN_modulation.1", silu(y)).chunk(2, dim=-1)
    return linear(state, p + "final_layer.linear", layer_norm(h) * (1 + scale) + shift)


def test_head_matches_spec(tiny_random, assert_close):
    cfg, model, _ = tiny_random
    state = {k: v.detach() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(5, cfg.head.input_dim, generator=gen)
    t = torch.tensor([0.0, 0.1, 0.5, 0.93, 1.0])
    c = torch.randn(5, cfg.head.cond_dim, generator=gen)
    with torch.no_grad():
        got = model.image_head(x, t, c)
    want = spec_head(state, cfg.head, x, t, c)
    assert_close("head velocity", got, want, TOL, dims=("row", "feature"))
    # t matters (the time embedding is wired in)
    with torch.no_grad():
        other = model.image_head(x, t.flip(0), c)
    assert (other - got).abs().max() > 1e-3


def test_time_features_cos_first():
    from nextstep_trt.ref.head import TimestepEmbedder

    emb = TimestepEmbedder(8, 256)
    t = torch.tensor([0.0, 0.37, 1.0])
    got = emb.sinusoid(t)
    assert torch.equal(got[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    assert (got - spec_time_features(t, 256)).abs().max() < 1e-6
