"""``--mark-intermediates``: where in a graph precision hurts (torch-free).

Every float tensor of the fp32 graph that the precision graph also computes is marked as an output of both
(Polygraphy ``modify_outputs``); both run on the same inputs and each pair is compared. The worst layer is the
tensor with the largest relative L2 error (ties: lowest cosine).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from nextstep_trt.core.metrics import Metrics, compare
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.ort_kvcache import quantize_feeds, read_scales

from .ranges import MARKED_BUDGET, Feeds, MarkedRunner, float_tensors


@dataclass(frozen=True)
class LayerRow:
    """One intermediate tensor's error, named by the node that produces it."""

    node: str
    op: str
    tensor: str
    metrics: Metrics


@dataclass
class LayerReport:
    """Every compared tensor of one graph, worst first; prints as a table, dumps as JSON."""

    graph: str
    precision: str
    case: str
    rows: list[LayerRow] = field(default_factory=list)    # worst first

    @property
    def worst(self) -> LayerRow | None:
        return self.rows[0] if self.rows else None

    def to_json(self) -> dict:
        return {"graph": self.graph, "precision": self.precision, "case": self.case,
                "worst": self.worst.node if self.worst else None,
                "rows": [{"node": r.node, "op": r.op, "tensor": r.tensor, **r.metrics.to_dict()} for r in self.rows]}

    def table(self, top: int = 5) -> str:
        """The ``top`` worst tensors and the worst layer's name."""
        head = f"{'node':<30} {'op':<12} {'tensor':<24} {'rel_l2':>9} {'cosine':>10} {'max_abs':>9}"
        lines = [f"{self.graph} [{self.precision}] {self.case}: {len(self.rows)} intermediate tensors compared",
                 head, "-" * len(head)]
        for r in self.rows[:top]:
            m = r.metrics
            lines.append(f"{r.node[:30]:<30} {r.op[:12]:<12} {r.tensor[:24]:<24} {m.rel_l2:9.2e} {m.cosine:10.7f} "
                         f"{m.max_abs:9.2e}")
        if self.worst:
            lines.append(f"worst layer: {self.worst.node} ({self.worst.op}, tensor {self.worst.tensor})")
        return "\n".join(lines)


def compare_intermediates(graph: str, fp32: onnx.ModelProto, low: onnx.ModelProto, precision: Precision,
                          feeds: Feeds, case: str = "", budget: int = MARKED_BUDGET) -> LayerReport:
    """Run both graphs with their shared float tensors marked; one row per tensor, worst first."""
    in_low = {o for n in low.graph.node for o in n.output}
    inputs = {i.name for i in fp32.graph.input}
    codes = {o.name for o in low.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.INT8}
    shared = [t for t in float_tensors(fp32) if t in in_low and t not in inputs | codes]   # codes: an int8 cache
    ref = MarkedRunner(fp32, shared, budget=budget // 2)            # both sides' chunks are held at once
    chunks = ref.chunks(feeds)
    producer = {o: n for n in fp32.graph.node for o in n.output}
    rows = []
    low_feeds = quantize_feeds(feeds, read_scales(low))                # an int8 cache reads int8 codes
    outputs = zip(chunks, ref.run(feeds, chunks), MarkedRunner(low, shared, precision).run(low_feeds, chunks))
    for chunk, want, got in outputs:
        rows += [LayerRow(producer[t].name, producer[t].op_type, t,
                          compare(np.asarray(want[t], np.float32), np.asarray(got[t]).astype(np.float32)))
                 for t in chunk]
    rows.sort(key=lambda r: (-r.metrics.rel_l2, r.metrics.cosine))
    return LayerReport(graph, Precision(precision).value, case, rows)


def worst_layers(manifest, reference, precision: Precision) -> list[LayerReport]:
    """For each graph made at ``precision``: compare its intermediates with the fp32 graph's on the first level-1
    case of ``reference`` (live or golden)."""
    from nextstep_trt.core.errors import UserError

    precision = Precision(precision)
    if precision is Precision.FP32:
        raise UserError("--mark-intermediates compares a precision graph with its fp32 graph: use --precision "
                        "fp16, bf16, fp8, int8 or int4")
    out = []
    for graph, p in manifest.graph_precisions(precision).items():
        if p is not precision:
            continue
        label, feeds, _ = reference.level1(manifest.spec(graph, precision))[0]
        out.append(compare_intermediates(graph, onnx.load(manifest.path(graph)),
                                         onnx.load(manifest.path(graph, precision)), precision, feeds, label))
    return out
