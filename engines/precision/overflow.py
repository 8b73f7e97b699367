"""The FP16-vs-BF16 overflow report: where fp16's range (65504) is too small for a graph (torch-free).

Per node output: the fp32 max |x| over the calibration inputs against fp16's and bf16's largest finite values,
whether our fp16 graph kept the node in fp32, and how many Inf/NaN the fp16 (and bf16) graph produced there.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from nextstep_trt.core.precision import Precision

from .autocast import FP16_MAX
from .ranges import Feeds, RangeCollector, float_tensors

BF16_MAX = 3.3895313892515355e38


@dataclass(frozen=True)
class OverflowRow:
    """One node output: its fp32 range and what the fp16/bf16 graphs did there."""

    node: str
    op: str
    tensor: str
    fp32_max: float              # max |x| of the fp32 graph's tensor over the inputs
    kept_fp32: bool              # the fp16 graph computes this node in fp32
    fp32_nonfinite: int          # Inf/NaN the fp32 graph itself has there (e.g. -inf attention masks)
    fp16_nonfinite: int          # Inf/NaN values the fp16 graph produced in this tensor
    bf16_nonfinite: int | None   # the same for the bf16 graph (None: no bf16 graph given)

    @property
    def fp16_new_inf(self) -> int:
        """Inf/NaN the fp16 graph has beyond the fp32 graph's own."""
        return max(0, self.fp16_nonfinite - self.fp32_nonfinite)

    @property
    def bf16_new_inf(self) -> int | None:
        return None if self.bf16_nonfinite is None else max(0, self.bf16_nonfinite - self.fp32_nonfinite)

    @property
    def overflows_fp16(self) -> bool:
        return self.fp32_max > FP16_MAX

    @property
    def overflows_bf16(self) -> bool:
        return self.fp32_max > BF16_MAX


@dataclass
class OverflowReport:
    """The FP16-vs-BF16 rows of one graph; prints as a table, dumps as JSON."""

    graph: str
    samples: int
    rows: list[OverflowRow] = field(default_factory=list)   # in graph (topological) order

    def overflowing(self) -> list[OverflowRow]:
        """Nodes whose fp32 range exceeds fp16's, in graph order."""
        return [r for r in self.rows if r.overflows_fp16]

    def to_json(self) -> dict:
        return {"graph": self.graph, "samples": self.samples, "fp16_max": FP16_MAX, "bf16_max": BF16_MAX,
                "overflowing_fp16": [r.node for r in self.overflowing()],
                "rows": [asdict(r) | {"overflows_fp16": r.overflows_fp16, "overflows_bf16": r.overflows_bf16,
                                      "fp16_new_inf": r.fp16_new_inf, "bf16_new_inf": r.bf16_new_inf}
                         for r in self.rows]}

    def table(self, top: int = 8) -> str:
        """The overflowing nodes and the ``top`` largest ranges."""
        largest = sorted(self.rows, key=lambda r: -r.fp32_max)[:top]
        shown = self.overflowing() + [r for r in largest if not r.overflows_fp16]
        shown += [r for r in self.rows if (r.fp16_new_inf or r.bf16_new_inf) and r not in shown]
        head = f"{'node':<28} {'op':<12} {'fp32 max|x|':>12} {'x fp16max':>9} {'fp16 graph':>10} " \
               f"{'fp16 +Inf':>9} {'bf16 +Inf':>9}"
        lines = [f"{self.graph}: FP16-vs-BF16 ranges over {self.samples} calibration inputs "
                 f"(fp16 max {FP16_MAX:g}, bf16 max {BF16_MAX:.3g})", head, "-" * len(head)]
        for r in shown:
            bf16 = "-" if r.bf16_new_inf is None else str(r.bf16_new_inf)
            lines.append(f"{r.node[:28]:<28} {r.op[:12]:<12} {r.fp32_max:12.4g} {r.fp32_max / FP16_MAX:9.3g} "
                         f"{'fp32' if r.kept_fp32 else 'fp16':>10} {r.fp16_new_inf:>9} {bf16:>9}")
        n = len(self.overflowing())
        lines.append(f"{n} node(s) exceed fp16's range" + (f": first {self.overflowing()[0].node}" if n else ""))
        return "\n".join(lines)


def _fp32_outputs(model: onnx.ModelProto) -> set[str]:
    """Tensors a mixed-precision graph computes in fp32."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name for v in list(inferred.graph.value_info) + list(inferred.graph.output)
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}


class OverflowProbe:
    """Feed the same inputs to the fp32, fp16 (and bf16) graphs; ``report()`` compares their tensors."""

    def __init__(self, graph: str, fp32: onnx.ModelProto, fp16: onnx.ModelProto,
                 bf16: onnx.ModelProto | None = None):
        self.graph, self.fp32 = graph, fp32
        tensors = float_tensors(fp32)
        in_fp16 = {o for n in fp16.graph.node for o in n.output}
        self.shared = [t for t in tensors if t in in_fp16]
        self.kept = _fp32_outputs(fp16)
        self.ref = RangeCollector(fp32, self.shared)
        self.low = RangeCollector(fp16, self.shared, Precision.FP16)
        self.bf16 = None if bf16 is None else RangeCollector(bf16, self.shared, Precision.BF16)

    def update(self, feeds: Feeds) -> None:
        """Run every graph on one input set."""
        for c in (self.ref, self.low, self.bf16):
            if c is not None:
                c.update(feeds)

    def report(self) -> OverflowReport:
        """One row per shared float tensor, in graph order."""
        producer = {o: n for n in self.fp32.graph.node for o in n.output}
        rows = [OverflowRow(producer[t].name, producer[t].op_type, t, self.ref.amax[t], t in self.kept,
                            self.ref.nonfinite[t], self.low.nonfinite[t],
                            None if self.bf16 is None else self.bf16.nonfinite[t])
                for t in self.shared]
        return OverflowReport(self.graph, self.ref.samples, rows)
