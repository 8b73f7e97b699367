"""``nextstep-trt floor``: the memory-bandwidth floor of a model on GPUs per weight precision, which GPUs each
precision fits, as tables (torch-free).

Weights ÷ bandwidth per decode step and per sampler step: no kernel can beat it, so a measured step time divided by
it is the fraction of the device's bandwidth the engine achieves. Weight bytes per precision: engines.footprint
(int8/int4 block-wise: 8 or 4 bits per weight + one fp16 scale per block; kept layers bf16); fits: engines.gpus.
"""
from __future__ import annotations

from dataclasses import dataclass

from nextstep_trt.core.resources import size_text
from nextstep_trt.engines.footprint import decode_step_bytes, gpu_format, graph_bytes
from nextstep_trt.engines.gpus import DATASHEET, RESERVE, Gpu, fits
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.latents import token_grid

from .roofline import floor_estimate


@dataclass(frozen=True)
class FloorOptions:
    devices: tuple[Gpu, ...] = DATASHEET      # memory 0: unknown (no fit column)
    height: int = 512
    width: int = 512
    steps: int = 50
    prompt_tokens: int = 64
    batches: tuple[int, ...] = (1, 4)
    precisions: tuple[str, ...] = ("bf16", "fp8", "int8", "int4")
    block: int = 32                            # int8/int4 weights per scale
    scale_bytes: int = 2                       # fp16 scales

    def tokens(self, cfg: NextStepConfig) -> int:
        h, w = token_grid(self.height, self.width, cfg.pixels_per_token)
        return h * w

    def kv_bytes(self, precision: str) -> int:
        """KV cache bytes per value: fp32 with fp32 weights, else 2 (fp16/bf16 on a GPU)."""
        return 4 if precision == "fp32" else 2

    def kv_cache(self, cfg: NextStepConfig, precision: str, batch: int) -> int:
        """KV cache bytes at the final length (prompt + image tokens) for 2 x batch CFG rows."""
        bb = cfg.backbone
        slots = self.prompt_tokens + self.tokens(cfg)
        return 2 * bb.num_layers * 2 * batch * bb.num_kv_heads * slots * bb.head_dim * self.kv_bytes(precision)


def weights_table(cfg: NextStepConfig, o: FloorOptions) -> list[str]:
    """Per precision: the format and the weight bytes per graph, and what a decode step at batch 1 reads."""
    tokens = o.tokens(cfg)
    head = f"{'precision':<10}{'backbone':>10}{'head':>10}{'VAE':>10}{'total':>10}{'decode reads':>14}  format"
    lines = [head, "-" * (len(head) + 40)]
    for p in o.precisions:
        fmt = gpu_format(p, o.block, o.scale_bytes)
        g = graph_bytes(cfg, fmt)
        dec = decode_step_bytes(cfg, fmt, 2, o.prompt_tokens + tokens, o.kv_bytes(p))
        cells = "".join(f"{size_text(v):>10}" for v in (g["backbone"], g["head"], g["vae"], sum(g.values())))
        lines.append(f"{p:<10}{cells}{size_text(dec):>14}  {fmt.note or p}")
    return lines


def _fit_cell(cfg: NextStepConfig, o: FloorOptions, gpu: Gpu, precision: str, weights: float) -> str:
    if not gpu.memory:
        return "?"
    ok = [str(b) for b in o.batches if fits(gpu, precision, weights, o.kv_cache(cfg, precision, b))]
    if precision == "fp8" and not gpu.fp8:
        return "no fp8"
    return ",".join(ok) if ok else "none"


def floor_table(cfg: NextStepConfig, o: FloorOptions) -> str:
    """The weights table, then per device and precision: decode step, sampler step and token, s/image per batch,
    and the batches whose weights + KV cache + reserve fit the device's memory."""
    tokens = o.tokens(cfg)
    batches = " ".join(f"{f's/img B={b}':>10}" for b in o.batches)
    lines = [f"bandwidth floor: {o.height}x{o.width} ({tokens} image tokens), prompt {o.prompt_tokens} tokens, "
             f"{o.steps} sampler steps, KV cache 2 bytes per value (4 with fp32 weights) at the final length; "
             f"'fits B': the batches whose weights + KV cache + {size_text(RESERVE)} reserve fit the device's "
             "memory (decimal units, as GB/s: a '12 GB' card holds 12 x 2^30 bytes = 12.9 GB)", "",
             *weights_table(cfg, o), ""]
    head = (f"{'device':<15}{'GB/s':>7}{'memory':>9} {'precision':<9}{'decode ms':>10}{'sampler step ms':>16}"
            f"{'sampler/token ms':>17} {batches} {'fits B':>7}")
    lines += [head, "-" * len(head)]
    for gpu in o.devices:
        for p in o.precisions:
            fmt = gpu_format(p, o.block, o.scale_bytes)
            est = {b: floor_estimate(cfg, gpu.gbps, tokens, o.prompt_tokens, o.steps, b, fmt, o.kv_bytes(p))
                   for b in o.batches}
            f = est[o.batches[0]]
            weights = sum(graph_bytes(cfg, fmt).values())
            per_batch = " ".join(f"{est[b]['s_per_image']:>10.2f}" for b in o.batches)
            mem = size_text(gpu.memory) if gpu.memory else "?"
            lines.append(f"{gpu.name:<15}{gpu.gbps:>7.0f}{mem:>9} {p:<9}{f['decode_step_ms']:>10.2f}"
                         f"{f['sampler_step_ms']:>16.3f}{f['sampler_token_ms']:>17.2f} {per_batch} "
                         f"{_fit_cell(cfg, o, gpu, p, weights):>7}")
    lines.append(f"(decode and sampler columns at batch {o.batches[0]})")
    return "\n".join(lines)
