"""Weight bytes of each graph at each deployment precision, and the bytes a decode step and a sampler call stream,
from the checkpoint key map alone (torch-free; Large included).

Formats on a GPU (TensorRT): fp32 4 bytes per weight, fp16/bf16 2; fp8: the quantized linears 1 byte (one scale
per tensor), everything else bf16; int8 / int4 (weight-only, block-wise): the quantized linears 8 or 4 bits per weight
plus one fp16 scale per block of ``block`` weights along the input dimension (int4 at block 32: 0.5 + 2/32 =
0.5625 bytes per weight), everything else bf16. (On the CPU, ONNX Runtime's MatMulNBits keeps fp32 scales and the
rest fp32; the bench counts those bytes from the graph files, bench/graph_bytes.py.)

Quantized linears (issue 18's keep-list, as for fp8): the decoder layers' q/k/v/o and gate/up/down weights and the
flow head's input_proj and MLP weights. Kept at the activation dtype: embeddings, norms, biases, the image in/out
projectors, the head's time and condition embeddings, adaLN modulation and final layer, and the VAE.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.weights import head_shapes, model_shapes, vae_shapes

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8", "int4")
_QUANTIZED = re.compile(r"^layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$"
                        r"|^image_head\.net\.(input_proj|res_blocks\.\d+\.mlp\.[02])\.weight$")


@dataclass(frozen=True)
class WeightFormat:
    """Bytes per weight of a quantized linear (scales included) and of every other tensor."""

    name: str
    matrix: float
    other: float
    note: str = ""

    @classmethod
    def uniform(cls, nbytes: float, name: str = "") -> "WeightFormat":
        return cls(name or f"{nbytes:g} bytes", nbytes, nbytes)


def gpu_format(precision: str, block: int = 32, scale_bytes: int = 2) -> WeightFormat:
    """The TensorRT deployment of ``precision`` (see the module docstring)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision in ("fp32", "fp16", "bf16"):
        return WeightFormat.uniform(4 if precision == "fp32" else 2, precision)
    if precision == "fp8":
        return WeightFormat("fp8", 1.0, 2.0, "fp8 linears, the rest bf16")
    bits = 8 if precision == "int8" else 4
    if block < 1:
        raise UserError(f"the block size must be >= 1, got {block}")
    return WeightFormat(precision, bits / 8 + scale_bytes / block, 2.0,
                        f"{bits}-bit weights + one {8 * scale_bytes}-bit scale per {block} (block-wise), the rest "
                        "bf16")


def is_quantized(key: str) -> bool:
    """Whether a checkpoint tensor is one of the block-quantized (or fp8) linears."""
    return bool(_QUANTIZED.match(key))


def tensor_bytes(shapes: dict[str, tuple[int, ...]], fmt: WeightFormat, keep=lambda key: True) -> float:
    """Bytes of the tensors of ``shapes`` that ``keep`` selects, in ``fmt``."""
    return sum(math.prod(s) * (fmt.matrix if is_quantized(k) else fmt.other) for k, s in shapes.items() if keep(k))


def graph_bytes(cfg: NextStepConfig, fmt: WeightFormat, vae_bytes: float | None = None) -> dict[str, float]:
    """Device bytes of the weights the runtime loads: backbone graph (no lm_head), head, VAE decoder (VAE at
    ``vae_bytes`` per weight: fmt.other by default; it is never quantized)."""
    model = model_shapes(cfg)
    backbone = tensor_bytes(model, fmt, lambda k: not k.startswith(("image_head.", "lm_head.")))
    head = tensor_bytes(head_shapes(cfg.head), fmt)
    vae = sum(math.prod(s) for k, s in vae_shapes(cfg.vae).items() if k.startswith("decoder."))
    return {"backbone": backbone, "head": head, "vae": vae * (fmt.other if vae_bytes is None else vae_bytes)}


def decode_step_bytes(cfg: NextStepConfig, fmt: WeightFormat, rows: int, capacity: int, kv_bytes: float) -> int:
    """Bytes one decode step over ``rows`` cache rows of ``capacity`` slots reads: every backbone-graph weight but the
    embedding table (one row per input row instead), plus K and V of every layer over the capacity."""
    bb = cfg.backbone
    weights = tensor_bytes(model_shapes(cfg), fmt,
                           lambda k: not k.startswith(("image_head.", "lm_head.", "embed_tokens.")))
    kv = 2 * bb.num_layers * rows * bb.num_kv_heads * capacity * bb.head_dim
    return int(weights + rows * bb.hidden_size * fmt.other + kv * kv_bytes)


def sampler_token_bytes(cfg: NextStepConfig, fmt: WeightFormat, steps: int, fused: bool) -> int:
    """Head weight bytes read for one image token: once per step; the fused graph reads the condition embedding and
    every adaLN modulation once per token (one batched GEMM over the steps) and takes the time embeddings as
    constants."""
    shapes = head_shapes(cfg.head)
    total = tensor_bytes(shapes, fmt)
    if not fused:
        return int(total * steps)
    hoisted = tensor_bytes(shapes, fmt, lambda k: ".cond_embed." in k or ".adaLN_modulation." in k)
    per_step = total - hoisted - tensor_bytes(shapes, fmt, lambda k: ".time_embed." in k)
    return int(per_step * steps + hoisted)
