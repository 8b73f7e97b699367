"""fp16 / bf16 mixed-precision graphs with NVIDIA ModelOpt AutoCast (torch-free).

AutoCast does the conversion (types, Cast insertion, initializer conversion, fp32 graph I/O kept); WE decide what
stays fp32 (``keep.keep_fp32``) and hand it over as exact node names with ``data_max=inf``, so the kept list in the
recipe is exactly what the graph holds. The fp16 range rule uses fp32 activation ranges measured on the
calibration inputs (``ranges.RangeCollector``) rather than AutoCast's random-input reference run.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import onnx

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision

FP16_MAX = 65504.0
# A node whose fp32 range on the calibration inputs exceeds this stays fp32 in the fp16 graph: 16x headroom
# below fp16's 65504 for inputs calibration did not see and for sums inside the op.
FP16_SAFE_MAX = FP16_MAX / 16


def _quiet_modelopt() -> None:
    from modelopt.onnx.autocast.logging_config import configure_logging as autocast_logging
    from modelopt.onnx.logging_config import configure_logging

    configure_logging(logging.ERROR)
    autocast_logging(logging.ERROR)


def mixed_precision(src: Path, precision: Precision, keep: dict[str, str]) -> onnx.ModelProto:
    """The fp32 graph at ``src`` in ``precision`` with the ``keep`` nodes (and graph I/O) in fp32."""
    precision = Precision(precision)
    if precision not in (Precision.FP16, Precision.BF16):
        raise ValueError(f"AutoCast makes fp16 or bf16 graphs, not {precision.value}")
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError as err:
        raise UserError(f"ModelOpt AutoCast is not installed ({err}): pip install -e '.[quant]'") from None
    _quiet_modelopt()
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR     # AutoCast also warns through the root logger
    try:
        model = convert_to_mixed_precision(
            onnx_path=str(src), low_precision_type=precision.value, keep_io_types=True,
            nodes_to_exclude=[_exact_names(keep)] if keep else [],
            data_max=np.inf, init_max=FP16_MAX if precision is Precision.FP16 else np.inf)
    finally:
        root.setLevel(level)
    # AutoCast names every unknown dim "unk", which tells ONNX Runtime that unrelated dims are equal (its memory
    # planner then reuses buffers of different sizes): drop its value_info and infer shapes afresh.
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _exact_names(names) -> str:
    """One regex matching exactly these node names. AutoCast tries each pattern on each node through ``re.match``,
    whose cache holds 512 patterns: a 50-step sampler's ~1,300 kept nodes as separate patterns were recompiled
    for every node (2.3M compilations, ~60 s); one alternation is compiled once."""
    return "^(?:" + "|".join(re.escape(n) for n in sorted(names)) + ")$"


def cast_summary(model: onnx.ModelProto, precision: Precision) -> dict:
    """How many Casts the graph holds and how many nodes compute in the low-precision type."""
    low = onnx.TensorProto.FLOAT16 if Precision(precision) is Precision.FP16 else onnx.TensorProto.BFLOAT16
    elem = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    low_nodes = sum(1 for n in model.graph.node if n.op_type != "Cast" and any(elem.get(o) == low for o in n.output))
    return {"casts": sum(1 for n in model.graph.node if n.op_type == "Cast"), "low_precision_nodes": low_nodes,
            "nodes": len(model.graph.node)}
