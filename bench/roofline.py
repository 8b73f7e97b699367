"""Bytes a decode step and a sampler call must stream, from the checkpoint key map (torch-free).

Decode step: every backbone weight except the embedding table (a gather reads one row per input row), plus the
K and V of every layer over the cache capacity the step attends to (the exported graph reads every slot, masked).
Sampler: the head's weights once per step; the fused graph hoists the condition embedding out of the step loop and
takes the time embeddings as constants, the per-step loops recompute both every step.
"""
from __future__ import annotations

from nextstep_trt.engines import footprint
from nextstep_trt.engines.footprint import WeightFormat
from nextstep_trt.export.sizes import DTYPE_BYTES
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.weights import head_shapes

from .results import Roofline


def decode_step_bytes(cfg: NextStepConfig, rows: int, capacity: int, weight_bytes: float = 4,
                      kv_bytes: float = 4) -> int:
    """Bytes one decode step over ``rows`` cache rows of ``capacity`` slots must read (every weight at
    ``weight_bytes``; engines.footprint for mixed formats)."""
    return footprint.decode_step_bytes(cfg, WeightFormat.uniform(weight_bytes), rows, capacity, kv_bytes)


def head_bytes(cfg: NextStepConfig, weight_bytes: float = 4) -> int:
    """All head weights (the time MLP and the condition embedding included)."""
    return int(footprint.tensor_bytes(head_shapes(cfg.head), WeightFormat.uniform(weight_bytes)))


def sampler_token_bytes(cfg: NextStepConfig, steps: int, fused: bool, weight_bytes: float = 4) -> int:
    """Head weight bytes read for one image token: once per step (the hoisted parts once per token)."""
    return footprint.sampler_token_bytes(cfg, WeightFormat.uniform(weight_bytes), steps, fused)


def roofline(cfg: NextStepConfig, *, precision: str, rows: int, capacity: int, steps: int, fused: bool,
             decode_ms: float | None, sampler_ms: float | None, bandwidth_gbps: float, kind: str,
             last_level_cache: int, read_gbps: float | None = None, decode_weights: int | None = None,
             sampler_weight_bytes: float | None = None) -> Roofline:
    """Achieved GB/s of a decode step and a sampler call, and their fractions of ``bandwidth_gbps``.

    ``decode_weights``: the weight bytes the step reads, measured from its graph (block-quantized graphs: packed
    weights + scales); else the checkpoint count at ``precision``'s bytes. ``sampler_weight_bytes``: bytes per head
    parameter, likewise (the head graph's initializer bytes over the fp32 graph's, x 4)."""
    wb = DTYPE_BYTES.get(precision, 4)
    dec = decode_step_bytes(cfg, rows, capacity, wb)
    if decode_weights is not None:
        dec = decode_weights + (dec - decode_step_bytes(cfg, rows, 0, wb))       # measured weights + the KV part
    swb = sampler_weight_bytes if sampler_weight_bytes is not None else wb
    smp = int(sampler_token_bytes(cfg, steps, fused, 1) * swb)
    rate = lambda nbytes, ms: None if not ms else nbytes / (ms * 1e-3) / 1e9  # noqa: E731
    frac = lambda gbps: None if gbps is None or not bandwidth_gbps else gbps / bandwidth_gbps  # noqa: E731
    dec_gbps, smp_gbps = rate(dec, decode_ms), rate(smp, sampler_ms)
    head = int(head_bytes(cfg, 1) * swb)
    read_frac = None if dec_gbps is None or not read_gbps else dec_gbps / read_gbps
    return Roofline(bandwidth_gbps, kind, dec, dec_gbps, frac(dec_gbps), smp, smp_gbps, frac(smp_gbps), head,
                    bool(last_level_cache) and head <= last_level_cache, read_gbps, read_frac)


def floor_estimate(cfg: NextStepConfig, bandwidth_gbps: float, tokens: int, prompt: int, steps: int, batch: int = 1,
                   fmt: WeightFormat | None = None, kv_bytes: float = 2) -> dict[str, float]:
    """Lower bound on seconds per request when every decode step and sampler step streams its weights once at
    ``bandwidth_gbps`` (the KV cache at the final length, CFG rows = 2 x batch; compute, the VAE and the prefill are
    left out: they are compute-bound and short next to the token loop). ``fmt``: bf16 weights by default."""
    fmt = fmt or footprint.gpu_format("bf16")
    gb = bandwidth_gbps * 1e9
    decode = footprint.decode_step_bytes(cfg, fmt, 2 * batch, prompt + tokens, kv_bytes) / gb
    sampler = footprint.sampler_token_bytes(cfg, fmt, steps, fused=True) / gb
    total = (tokens - 1) * decode + tokens * sampler
    return {"decode_step_ms": decode * 1e3, "sampler_step_ms": sampler / steps * 1e3,
            "sampler_token_ms": sampler * 1e3, "request_s": total, "s_per_image": total / batch}
