"""GPUs from the vendors' data sheets (memory bandwidth, memory, fp8 support) and whether a deployment fits one
(torch-free).

A deployment fits when weights + KV cache + ``RESERVE`` (CUDA context, TensorRT activations and workspace, the
runtime's buffers: an estimate) is at most the card's memory. Memory is the data sheet's (a "12 GB" card holds 12 GiB
= 12.9 GB), of which a driver keeps a little: a fit within a few hundred MB is marginal. Printed sizes are decimal
(core.resources.size_text), like the bandwidths.
"""
from __future__ import annotations

from dataclasses import dataclass

from nextstep_trt.core.resources import size_text

GiB = 2**30
RESERVE = 1.5e9                   # 1.5 GB (decimal, as every printed size)


@dataclass(frozen=True)
class Gpu:
    name: str
    gbps: float                # peak memory bandwidth, GB/s
    memory: int                # bytes
    fp8: bool                  # compute capability >= 8.9 (TensorRT's fp8)


DATASHEET = (Gpu("H100 SXM", 3350.0, 80 * GiB, True), Gpu("A100 80GB SXM", 2039.0, 80 * GiB, False),
             Gpu("L40S", 864.0, 48 * GiB, True), Gpu("RTX 4090", 1008.0, 24 * GiB, True),
             Gpu("L4", 300.0, 24 * GiB, True), Gpu("RTX 4080", 716.8, 16 * GiB, True),
             Gpu("RTX 4070", 504.2, 12 * GiB, True))


def needed(weights: float, kv_cache: float) -> float:
    """Device bytes a deployment needs: weights + KV cache + the reserve."""
    return weights + kv_cache + RESERVE


def fits(gpu: Gpu, precision: str, weights: float, kv_cache: float) -> bool:
    """Whether the deployment fits ``gpu`` (fp8 also needs compute capability 8.9+)."""
    return (gpu.fp8 or precision != "fp8") and needed(weights, kv_cache) <= gpu.memory


def fit_text(precision: str, weights: float, kv_cache: float, gpus=DATASHEET) -> str:
    """'needs 11.9 GB: fits RTX 4070 (12.9 GB), ...; not ...' for one deployment (decimal GB throughout)."""
    need = needed(weights, kv_cache)
    yes = [f"{g.name} ({size_text(g.memory)})" for g in gpus if fits(g, precision, weights, kv_cache)]
    no = [f"{g.name}" + (" (no fp8)" if precision == "fp8" and not g.fp8 else "")
          for g in gpus if not fits(g, precision, weights, kv_cache)]
    return (f"needs {size_text(need)}: fits " + (", ".join(yes) or "none") +
            ("" if not no else "; not " + ", ".join(no)))
