"""Graph precisions (torch-free). Precision lives in the ONNX graph: one graph per precision."""
from __future__ import annotations

import enum

from nextstep_trt.core.errors import UserError


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"unknown precision {value!r}; choose from {', '.join(p.value for p in cls)}") from None
