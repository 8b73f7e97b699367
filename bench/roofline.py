"""Bytes a decode step and a sampler call must stream, from the checkpoint key map (torch-free).

Decode step: every backbone weight except the embedding table (a gather reads one row per input row), plus the
K and V of every layer over the cache capacity the step attends to (the exported graph reads every slot, masked).
Sampler: the head's weights once per step; the fused graph hoists the condition embedding out of the step loop and
takes the time embeddings as constants, the per-step loops recompute both every step.
"""
from __future__ import annotations

import math

from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.export.sizes import DTYPE_BYTES, graph_parameters
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.sampling import SamplerConfig
from nextstep_trt.ref.weights import head_shapes

from .results import Roofline


def _params(cfg: NextStepConfig, steps: int) -> dict[str, int]:
    profile = DeploymentProfile(edit=False, resolutions=((cfg.pixels_per_token,) * 2,),
                                t2i_sampler=SamplerConfig(steps=steps))
    return graph_parameters(cfg, profile)


def decode_step_bytes(cfg: NextStepConfig, rows: int, capacity: int, weight_bytes: int = 4, kv_bytes: int = 4) -> int:
    """Bytes one decode step over ``rows`` cache rows of ``capacity`` slots must read."""
    bb = cfg.backbone
    weights = _params(cfg, 1)["backbone"] - bb.vocab_size * bb.hidden_size + rows * bb.hidden_size
    kv = 2 * bb.num_layers * rows * bb.num_kv_heads * capacity * bb.head_dim
    return weights * weight_bytes + kv * kv_bytes


def head_bytes(cfg: NextStepConfig, weight_bytes: int = 4) -> int:
    """All head weights (the time MLP and the condition embedding included)."""
    return sum(math.prod(s) for s in head_shapes(cfg.head).values()) * weight_bytes


def sampler_token_bytes(cfg: NextStepConfig, steps: int, fused: bool, weight_bytes: int = 4) -> int:
    """Head weight bytes read for one image token: once per step (the hoisted parts once per token)."""
    shapes = head_shapes(cfg.head)
    count = lambda key: sum(math.prod(s) for k, s in shapes.items() if key in k)  # noqa: E731
    total = sum(math.prod(s) for s in shapes.values())
    if not fused:
        return total * steps * weight_bytes
    per_step = total - count(".time_embed.") - count(".cond_embed.")
    return (per_step * steps + count(".cond_embed.")) * weight_bytes


def roofline(cfg: NextStepConfig, *, precision: str, rows: int, capacity: int, steps: int, fused: bool,
             decode_ms: float | None, sampler_ms: float | None, bandwidth_gbps: float, kind: str,
             last_level_cache: int, read_gbps: float | None = None) -> Roofline:
    """Achieved GB/s of a decode step and a sampler call, and their fractions of ``bandwidth_gbps``."""
    wb = DTYPE_BYTES.get(precision, 4)
    dec = decode_step_bytes(cfg, rows, capacity, wb)
    smp = sampler_token_bytes(cfg, steps, fused, wb)
    rate = lambda nbytes, ms: None if not ms else nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    frac = lambda gbps: None if gbps is None or not bandwidth_gbps else gbps / bandwidth_gbps  # noqa: E731
    dec_gbps, smp_gbps = rate(dec, decode_ms), rate(smp, sampler_ms)
    head = head_bytes(cfg, wb)
    read_frac = None if dec_gbps is None or not read_gbps else dec_gbps / read_gbps
    return Roofline(bandwidth_gbps, kind, dec, dec_gbps, frac(dec_gbps), smp, smp_gbps, frac(smp_gbps), head,
                    bool(last_level_cache) and head <= last_level_cache, read_gbps, read_frac)


# Peak memory bandwidth from the vendors' data sheets (GB/s), for the floor estimate's default table.
DATASHEET_GBPS = {"H100 SXM": 3350.0, "A100 80GB SXM": 2039.0, "RTX 4090": 1008.0, "L40S": 864.0}


def floor_estimate(cfg: NextStepConfig, bandwidth_gbps: float, tokens: int, prompt: int, steps: int, batch: int = 1,
                   weight_bytes: int = 2, kv_bytes: int = 2) -> dict[str, float]:
    """Lower bound on seconds per request when every decode step and sampler step streams its weights once at
    ``bandwidth_gbps`` (the KV cache at the final length, CFG rows = 2 x batch; compute, the VAE and the prefill are
    left out: they are compute-bound and short next to the token loop)."""
    gb = bandwidth_gbps * 1e9
    decode = decode_step_bytes(cfg, 2 * batch, prompt + tokens, weight_bytes, kv_bytes) / gb
    sampler = sampler_token_bytes(cfg, steps, fused=True, weight_bytes=weight_bytes) / gb
    total = (tokens - 1) * decode + tokens * sampler
    return {"decode_step_ms": decode * 1e3, "sampler_step_ms": sampler / steps * 1e3,
            "sampler_token_ms": sampler * 1e3, "request_s": total, "s_per_image": total / batch}
