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


class KVCache(str, enum.Enum):
    """What the ONNX Runtime backbone keeps its KV cache in: the graph's float type, or int8 codes with static
    per-channel scales (``quantize --kv-cache int8``, export/ort_kvcache.py; an int4/int8 graph's option)."""

    FP32 = "fp32"
    INT8 = "int8"
