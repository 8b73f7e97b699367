"""Intermediate tensors as graph outputs, runners per precision, and fp32 activation ranges (torch-free).

The fp32 graph runs in ONNX Runtime with its intermediate tensors marked as outputs (Polygraphy's
``modify_outputs``); ``RangeCollector`` keeps each tensor's max |x| over every calibration input it is fed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from nextstep_trt.precision import Precision

Feeds = dict[str, np.ndarray]
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
PROTOBUF_LIMIT = 2**31 - 2**20   # as export.exporter (which imports torch): protobuf's 2 GB ceiling


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the node outputs whose inferred type is a float type, in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.output)
    elem = {v.name: v.type.tensor_type.elem_type for v in infos}
    return [o for n in model.graph.node for o in n.output if o and elem.get(o) in FLOAT_TYPES]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are its own outputs plus ``names``."""
    from polygraphy.backend.onnx import modify_outputs

    keep = [o.name for o in model.graph.output]
    return modify_outputs(model, outputs=keep + [n for n in names if n not in keep], copy=True)


class Runner:
    """One graph in ONNX Runtime (fp32, fp16, fp8 Q/DQ) or the ONNX reference evaluator (bf16)."""

    def __init__(self, model: onnx.ModelProto, precision: Precision = Precision.FP32):
        self.inputs = [i.name for i in model.graph.input]
        self.outputs = [o.name for o in model.graph.output]
        if Precision(precision) is Precision.BF16:
            from runtime.onnx_reference_backend import ReferenceSession

            self.session = ReferenceSession(model)
        else:
            self.session = _ort_session(model)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        outs = self.session.run(self.outputs, {n: feeds[n] for n in self.inputs})
        return dict(zip(self.outputs, outs))


def _ort_session(model: onnx.ModelProto):
    """An ORT CPU session from an in-memory model (through a temporary file with external data past 2 GB)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1         # no spinning thread pool next to torch's threads (small graphs, 2 cores)
    opts.inter_op_num_threads = 1
    if model.ByteSize() < PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class RangeCollector:
    """Max finite |x| and the count of Inf/NaN values of chosen tensors of a graph over many input sets."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str] | None = None,
                 precision: Precision = Precision.FP32):
        self.tensors = float_tensors(model) if tensors is None else list(tensors)
        self.runner = Runner(with_outputs(model, self.tensors), precision)
        self.amax: dict[str, float] = dict.fromkeys(self.tensors, 0.0)
        self.nonfinite: dict[str, int] = dict.fromkeys(self.tensors, 0)
        self.samples = 0

    def update(self, feeds: Feeds) -> None:
        """Run the graph on one input set and fold its tensors into the statistics."""
        out = self.runner.run(feeds)
        for name in self.tensors:
            a = np.abs(np.asarray(out[name]).astype(np.float32, copy=False))
            finite = np.isfinite(a)
            self.nonfinite[name] += int(a.size - finite.sum())
            if a.size:
                self.amax[name] = max(self.amax[name], float(np.max(a, where=finite, initial=0.0)))
        self.samples += 1
