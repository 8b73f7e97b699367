"""Intermediate tensors as graph outputs, runners per precision, and fp32 activation ranges (torch-free).

The fp32 graph runs in ONNX Runtime with its intermediate tensors marked as outputs (Polygraphy's
``modify_outputs``); ``RangeCollector`` keeps each tensor's max |x| over every calibration input it is fed. A
``MarkedRunner`` marks at most ``MARKED_BUDGET`` bytes of tensors per run (sizes from shape inference at the
feeds' shapes): a VAE at 512x512 has tens of GB of activations, so it runs once per chunk instead of holding them
all at once.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx

from nextstep_trt.core.precision import Precision

Feeds = dict[str, np.ndarray]
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
PROTOBUF_LIMIT = 2**31 - 2**20   # as nextstep_trt.export.exporter (which imports torch): protobuf's 2 GB ceiling
MARKED_BUDGET = 2 * 2**30        # bytes of marked intermediate tensors one run may hold


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
        from nextstep_trt.export.ort_attention import in_place_outputs, is_fused

        self.inputs = [i.name for i in model.graph.input]
        self.fused = is_fused(model)            # ORT's fused attention: its in-place cache outputs are not read
        cache = in_place_outputs([o.name for o in model.graph.output])
        self.outputs = [o.name for o in model.graph.output if o.name not in cache]
        if Precision(precision) is Precision.BF16:
            from nextstep_trt.runtime.onnx_reference_backend import ReferenceSession

            self.session = ReferenceSession(model)
        else:
            self.session = _ort_session(model)

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        from nextstep_trt.export.ort_attention import run_rows

        def once(f: Feeds) -> dict[str, np.ndarray]:
            return dict(zip(self.outputs, self.session.run(self.outputs, {n: f[n] for n in self.inputs})))

        return run_rows(once, feeds) if self.fused else once(feeds)


def _ort_session(model: onnx.ModelProto):
    """An ORT CPU session from an in-memory model (through a temporary file with external data past 2 GB)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1         # no spinning thread pool next to torch's threads (small graphs, 2 cores)
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = False     # one session per chunk of marked tensors: none may keep its peak arena
    if model.ByteSize() < PROTOBUF_LIMIT:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save_model(model, str(path), save_as_external_data=True, location="model.data")
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _shape_shell(model: onnx.ModelProto, feeds: Feeds) -> onnx.ModelProto:
    """``model`` with its inputs fixed to the feeds' shapes and its large float weights reduced to their dims."""
    def light(t: onnx.TensorProto) -> onnx.TensorProto:
        big = t.data_type in FLOAT_TYPES and math.prod(t.dims) > 4096         # shapes matter, float values do not
        return onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims) if big else t

    inputs = [onnx.helper.make_tensor_value_info(i.name, i.type.tensor_type.elem_type, np.shape(feeds[i.name]))
              if i.name in feeds else i for i in model.graph.input]
    graph = onnx.helper.make_graph(model.graph.node, model.graph.name, inputs, model.graph.output,
                                   [light(t) for t in model.graph.initializer], value_info=model.graph.value_info)
    return onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                                  functions=model.functions)


def tensor_bytes(model: onnx.ModelProto, feeds: Feeds, names: list[str]) -> dict[str, int]:
    """Bytes of each named tensor when ``model`` runs on ``feeds`` (shape inference at the feeds' shapes); a tensor
    whose shape stays unknown counts as the largest known one."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_shape_shell(model, feeds), data_prop=True)
    except Exception:  # noqa: BLE001 - inference failing on an exotic graph only costs the chunking
        inferred = model
    known = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.HasField("shape") and None not in dims:
            known[vi.name] = math.prod(dims) * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    largest = max(known.values(), default=0)
    return {n: known.get(n, largest) for n in names}


def pack(sizes: dict[str, int], budget: int) -> list[tuple[str, ...]]:
    """Tensors in order, in consecutive chunks of at most ``budget`` bytes (a bigger tensor gets a chunk alone)."""
    chunks: list[list[str]] = [[]]
    used = 0
    for name, size in sizes.items():
        if chunks[-1] and used + size > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += size
    return [tuple(c) for c in chunks if c]


class MarkedRunner:
    """A graph with chosen tensors as extra outputs, run in chunks of at most ``budget`` marked bytes."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str], precision: Precision = Precision.FP32,
                 budget: int = MARKED_BUDGET):
        self.model, self.tensors, self.precision, self.budget = model, list(tensors), precision, budget
        self._runners: dict[tuple[str, ...], Runner] = {}
        self._plans: dict[tuple, list[tuple[str, ...]]] = {}

    def chunks(self, feeds: Feeds) -> list[tuple[str, ...]]:
        """The chunk plan for inputs of these shapes (one chunk when everything fits the budget)."""
        key = tuple(sorted((k, np.shape(v)) for k, v in feeds.items()))
        if key not in self._plans:
            sizes = tensor_bytes(self.model, feeds, self.tensors)
            whole = sum(sizes.values()) <= self.budget
            self._plans[key] = [tuple(self.tensors)] if whole else pack(sizes, self.budget)
        return self._plans[key]

    def run(self, feeds: Feeds, chunks: list[tuple[str, ...]] | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One output dict per chunk (the graph's own outputs included), each released before the next runs."""
        for chunk in chunks or self.chunks(feeds):
            if chunk not in self._runners:
                self._runners[chunk] = Runner(with_outputs(self.model, list(chunk)), self.precision)
            yield self._runners[chunk].run(feeds)


class RangeCollector:
    """Max finite |x| and the count of Inf/NaN values of chosen tensors of a graph over many input sets."""

    def __init__(self, model: onnx.ModelProto, tensors: list[str] | None = None,
                 precision: Precision = Precision.FP32, budget: int = MARKED_BUDGET):
        self.tensors = float_tensors(model) if tensors is None else list(tensors)
        self.runner = MarkedRunner(model, self.tensors, precision, budget)
        self.amax: dict[str, float] = dict.fromkeys(self.tensors, 0.0)
        self.nonfinite: dict[str, int] = dict.fromkeys(self.tensors, 0)
        self.samples = 0

    def update(self, feeds: Feeds) -> None:
        """Run the graph on one input set and fold its tensors into the statistics."""
        chunks = self.runner.chunks(feeds)
        for chunk, out in zip(chunks, self.runner.run(feeds, chunks)):
            for name in chunk:
                self._fold(name, out[name])
        self.samples += 1

    def _fold(self, name: str, value) -> None:
        a = np.abs(np.asarray(value).astype(np.float32, copy=False))
        finite = np.isfinite(a)
        self.nonfinite[name] += int(a.size - finite.sum())
        if a.size:
            self.amax[name] = max(self.amax[name], float(np.max(a, where=finite, initial=0.0)))
