"""bf16 graphs on the CPU: ``onnx.reference.ReferenceEvaluator`` behind the backend protocol (torch-free).

ONNX Runtime's CPU provider has no bf16 kernels for plain ops (``NOT_IMPLEMENTED ... Mul(14)``), so
``open_backend("onnxruntime", precision="bf16")`` returns this backend: bf16 graphs run in the ONNX reference
evaluator (numpy + ml_dtypes, each op rounded to bf16 at its output), graphs without a bf16 version (fp32) still run
in ONNX Runtime. Like ORT's fp16 on the CPU, this is not GPU bf16 numerics (no tensor-core accumulation order).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision

from .backend import Feeds
from .ort_backend import OrtBackend

REFERENCE_NOTE = ("note: bf16 graphs ran in onnx.reference.ReferenceEvaluator (ONNX Runtime's CPU provider has "
                  "no bf16 kernels)")


class ReferenceSession:
    """A graph in the ONNX reference evaluator with ``InferenceSession.run``'s signature."""

    def __init__(self, model: str | Path | object):
        from onnx.reference import ReferenceEvaluator

        try:
            self.evaluator = ReferenceEvaluator(str(model) if isinstance(model, Path) else model)
        except Exception as err:  # the evaluator raises plain Python errors for bad graphs
            raise UserError(f"the ONNX reference evaluator cannot load {model}: {str(err).splitlines()[0][:300]}") \
                from None

    def run(self, names: list[str] | None, feeds: Feeds) -> list[np.ndarray]:
        return self.evaluator.run(names, feeds)


class ReferenceBackend(OrtBackend):
    """OrtBackend whose bf16 graphs run in the ONNX reference evaluator."""

    name = "onnx-reference"

    def __init__(self, artifacts: str | Path, precision: Precision = Precision.BF16, threads: int = 0):
        super().__init__(artifacts, precision, "cpu", threads)
        self._reference: dict[str, ReferenceSession] = {}
        self._notice(REFERENCE_NOTE.removeprefix("note: "))

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        if self.graph_precision.get(graph) is not Precision.BF16:
            return super().run(graph, feeds)
        spec = self.spec(graph)
        spec.check_inputs(feeds)
        if graph not in self._reference:
            self._reference[graph] = ReferenceSession(self.manifest.path(graph, Precision.BF16))
        outs = self._reference[graph].run(spec.output_names, {n: feeds[n] for n in spec.input_names})
        return {t.name: np.asarray(o).astype(t.np_dtype, copy=False) for t, o in zip(spec.outputs, outs)}

    def close(self) -> None:
        self._reference.clear()
        super().close()
