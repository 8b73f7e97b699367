"""``nextstep-trt floor``: the memory-bandwidth floor of a model on a device, as a table (torch-free).

Weights ÷ bandwidth per decode step and per sampler step: no kernel can beat it, so a measured step time divided by
it is the fraction of the device's bandwidth the engine achieves."""
from __future__ import annotations

from dataclasses import dataclass

from nextstep_trt.export.sizes import DTYPE_BYTES
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.latents import token_grid

from .roofline import decode_step_bytes, floor_estimate, sampler_token_bytes

GiB = 2**30


@dataclass(frozen=True)
class FloorOptions:
    devices: dict[str, float]                 # name -> GB/s
    height: int = 512
    width: int = 512
    steps: int = 50
    prompt_tokens: int = 64
    batches: tuple[int, ...] = (1, 4)
    dtype: str = "bf16"

    def tokens(self, cfg: NextStepConfig) -> int:
        h, w = token_grid(self.height, self.width, cfg.pixels_per_token)
        return h * w


def floor_table(cfg: NextStepConfig, o: FloorOptions) -> str:
    """Per device and batch: decode step, sampler step and token, seconds per request and per image."""
    wb, kv = DTYPE_BYTES[o.dtype], 4 if o.dtype == "fp32" else 2
    tokens = o.tokens(cfg)
    dec = decode_step_bytes(cfg, 2, o.prompt_tokens + tokens, wb, kv)
    smp = sampler_token_bytes(cfg, o.steps, fused=True, weight_bytes=wb)
    lines = [f"bandwidth floor: {o.height}x{o.width} ({tokens} image tokens), prompt {o.prompt_tokens} tokens, "
             f"{o.steps} sampler steps, {o.dtype} weights ({kv}-byte KV cache); decode step at batch 1 reads "
             f"{dec / GiB:.2f} GiB, the fused sampler {smp / o.steps / 2**20:.1f} MiB per step",
             f"{'device':<16}{'GB/s':>7} {'B':>2} {'decode ms':>10} {'sampler step ms':>16} {'sampler/token ms':>17} "
             f"{'s/request':>10} {'s/image':>8}"]
    lines.append("-" * len(lines[-1]))
    for name, gbps in o.devices.items():
        for b in o.batches:
            f = floor_estimate(cfg, gbps, tokens, o.prompt_tokens, o.steps, b, wb, kv)
            lines.append(f"{name:<16}{gbps:>7.0f} {b:>2} {f['decode_step_ms']:>10.2f} {f['sampler_step_ms']:>16.3f} "
                         f"{f['sampler_token_ms']:>17.2f} {f['request_s']:>10.2f} {f['s_per_image']:>8.2f}")
    return "\n".join(lines)
