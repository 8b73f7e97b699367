"""Graph precisions (torch-free). Precision lives in the ONNX graph: one graph per precision."""
from __future__ import annotations

import enum

from nextstep_trt.core.errors import UserError


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"
    INT8 = "int8"        # weight-only, block-wise (engines/precision/weightonly.py); activations fp32 / bf16
    INT4 = "int4"

    @property
    def weight_only(self) -> bool:
        """int4/int8: only the linear weights are quantized; each graph has an ONNX Runtime and a TensorRT file."""
        return self in (Precision.INT4, Precision.INT8)

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"unknown precision {value!r}; choose from {', '.join(p.value for p in cls)}") from None


BLOCK_SIZES = (16, 32, 64, 128, 256)      # MatMulNBits: a power of two >= 16; TensorRT documents 64 and 128 for int4


def check_block_size(block: int) -> None:
    """A UserError naming the allowed sizes unless ``block`` is one of ``BLOCK_SIZES``."""
    if block not in BLOCK_SIZES:
        raise UserError(f"--block-size {block} is not one of {', '.join(map(str, BLOCK_SIZES))}")


def block_misfit(recipe: dict) -> tuple[int, tuple[int, ...], int | None] | None:
    """For a weight-only recipe whose block size left linears unquantized: (how many, their distinct input widths,
    the biggest block size that takes them all or None); None when the block size kept none out."""
    block = recipe["block_size"]
    widths = [k["K"] for k in recipe.get("kept_high_precision", []) if k.get("K", 0) % block]
    if not widths:
        return None
    fits = [b for b in BLOCK_SIZES if all(w % b == 0 for w in widths)]
    return len(widths), tuple(sorted(set(widths))), max(fits, default=None)


def misfit_text(widths: tuple[int, ...], block: int, fit: int | None) -> str:
    """'input width 64, 192 ... not a multiple of the block size 128; --block-size 64 would quantize them'."""
    hint = f"; --block-size {fit} would quantize them" if fit else ""
    return f"input width {', '.join(map(str, widths))} stay fp32: not a multiple of the block size {block}{hint}"


def block_note(recipe: dict) -> str | None:
    """``block_misfit`` as one line for quantize's log (None when the block size kept none out)."""
    misfit = block_misfit(recipe)
    if misfit is None:
        return None
    count, widths, fit = misfit
    return f"{count} linear(s) of {misfit_text(widths, recipe['block_size'], fit)}"


class KVCache(str, enum.Enum):
    """What the ONNX Runtime backbone keeps its KV cache in: the graph's float type, or int8 codes with static
    per-channel scales (``quantize --kv-cache int8``, export/ort_kvcache.py; an int4/int8 graph's option)."""

    FP32 = "fp32"
    INT8 = "int8"
