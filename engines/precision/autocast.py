"""fp16 / bf16 mixed-precision graphs with NVIDIA ModelOpt AutoCast (torch-free).

AutoCast does the conversion (types, Cast insertion, initializer conversion, fp32 graph I/O kept); WE decide what
stays fp32 (``keep.keep_fp32``) and hand it over as exact node names with ``data_max=inf``, so the kept list in the
recipe is exactly what the graph holds. The fp16 range rule uses fp32 activation ranges measured on the
calibration inputs (``ranges.RangeCollector``) rather than AutoCast's random-input reference run.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import onnx

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.graph_edit import GraphIndex, cast_to

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


LIGHT_BYTES = 1 << 20        # float initializers above this are handed to AutoCast without their data


def mixed_precision_light(model: onnx.ModelProto, precision: Precision, keep: dict[str, str]) -> onnx.ModelProto:
    """``mixed_precision`` of an in-memory fp32 graph with every float initializer over ``LIGHT_BYTES`` handed to
    AutoCast as a graph input (name, type, shape; no data) and put back afterwards, once per precision its readers
    need (the Casts AutoCast put after such an input become one converted initializer). AutoCast casts a weight per
    use: on Large's 50-step sampler, whose weights every step reads, it ran out of 24 GB; without the data it holds
    none of them."""
    import tempfile

    from onnx import TensorProto

    big = {t.name: t for t in model.graph.initializer
           if t.data_type == TensorProto.FLOAT and math.prod(t.dims) * 4 > LIGHT_BYTES}
    light = _without(model, big)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "light.onnx"
        onnx.save(light, path)
        del light
        low = mixed_precision(path, precision, keep)
    _restore(low, big, precision)
    return low


def _without(model: onnx.ModelProto, big: dict) -> onnx.ModelProto:
    """``model`` with the ``big`` initializers as graph inputs of the same type and shape (their data left out)."""
    from onnx import helper

    light = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                            producer_name=model.producer_name, graph=onnx.GraphProto(name=model.graph.name))
    g = light.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.input.extend(helper.make_tensor_value_info(n, t.data_type, list(t.dims)) for n, t in big.items())
    g.output.extend(model.graph.output)
    g.value_info.extend(model.graph.value_info)
    g.initializer.extend(t for t in model.graph.initializer if t.name not in big)
    return light


def _restore(low: onnx.ModelProto, big: dict, precision: Precision) -> None:
    """Put the ``big`` weights back as initializers: fp32 where a node reads the input itself, converted once where
    AutoCast inserted a Cast to the low type after it (those Casts removed)."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    precision = Precision(precision)
    low_type = TensorProto.FLOAT16 if precision is Precision.FP16 else TensorProto.BFLOAT16
    np_low = np.float16 if low_type == TensorProto.FLOAT16 else ml_dtypes.bfloat16
    readers = GraphIndex(low.graph).consumers
    drop, rename = set(), {}
    for name, t in big.items():
        casts = [n for n in readers[name] if n.op_type == "Cast" and cast_to(n) == low_type]
        if casts:
            converted = numpy_helper.from_array(numpy_helper.to_array(t).astype(np_low), f"{name}/{precision.value}")
            low.graph.initializer.append(converted)
            rename.update({c.output[0]: converted.name for c in casts})
            drop.update(id(c) for c in casts)
        if len(casts) < len(readers[name]):
            low.graph.initializer.append(t)
    keep = [n for n in low.graph.node if id(n) not in drop]
    for n in keep:
        n.input[:] = [rename.get(i, i) for i in n.input]
    del low.graph.node[:]
    low.graph.node.extend(keep)
    inputs = [i for i in low.graph.input if i.name not in big]
    del low.graph.input[:]
    low.graph.input.extend(inputs)


def autocast_need(model) -> int:
    """Host memory to make the bf16 TensorRT half of a weight-only graph (``autocast.mixed_precision_light``): the
    small-graph factor times the float weights AutoCast sees — each small initializer once per node that reads it
    (AutoCast casts per use) and each large one once (it is handed over without its data and put back once).
    Large head_step: 6.9 GB estimated, 6.80 measured. Before the light path, AutoCast holding every use of the
    50-step sampler's shared weights ran out of 24 GB on Large's head_sampler."""
    from onnx import helper

    from nextstep_trt.engines.estimate import BASE_RSS, SMALL_GRAPH_FACTOR

    readers = GraphIndex(model.graph).consumers
    total = 0
    for t in model.graph.initializer:
        nbytes = math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        total += nbytes if nbytes > LIGHT_BYTES else nbytes * max(1, len(readers[t.name]))
    return int(BASE_RSS + SMALL_GRAPH_FACTOR * total)
