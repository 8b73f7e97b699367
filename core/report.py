"""Parity reports: rows of (graph, case, tensor, metrics, bound); print as a table, dump as JSON (numpy only)."""
from __future__ import annotations

from dataclasses import dataclass, field

from nextstep_trt.core.errors import CheckFailed
from nextstep_trt.core.metrics import Bound, Metrics

CPU_FP16_NOTE = ("note: fp16/bf16 errors measured by ONNX Runtime on the CPU, which computes most fp16 ops in "
                 "fp32 between casts; CPU fp16 numerics are not GPU fp16 numerics")
CPU_BF16_NOTE = ("note: bf16 errors measured by onnx.reference.ReferenceEvaluator on the CPU (ONNX Runtime has no "
                 "bf16 CPU kernels), which rounds every op's result to bf16; not GPU bf16 numerics")


@dataclass
class ParityRow:
    level: int           # 1 graph, 2 teacher-forced loop, 3 free-running
    graph: str           # graph name, or "loop" / "image"
    precision: str
    case: str            # shape case or step, e.g. "rows=4 seq=7 past=0" or "token 12"
    tensor: str
    metrics: Metrics | None
    bound: Bound
    violations: list[str]
    extra: dict = field(default_factory=dict)   # level 3: psnr, max pixel error, first divergent token

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {"level": self.level, "graph": self.graph, "precision": self.precision, "case": self.case,
                "tensor": self.tensor, "ok": self.ok, "bound": self.bound.describe(), "violations": self.violations,
                "metrics": self.metrics.to_dict() if self.metrics else None, **self.extra}


@dataclass
class ParityReport:
    rows: list[ParityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: ParityRow) -> ParityRow:
        self.rows.append(row)
        return row

    def extend(self, other: "ParityReport") -> None:
        self.rows += other.rows
        self.notes += [n for n in other.notes if n not in self.notes]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def failures(self) -> list[ParityRow]:
        return [r for r in self.rows if not r.ok]

    def to_json(self) -> dict:
        return {"ok": self.ok, "rows": [r.to_dict() for r in self.rows], "notes": self.notes}

    def table(self) -> str:
        """A readable table: one line per (level, graph, case, tensor); columns widen to fit, nothing is cut.
        Level-3 rows put their image summary (PSNR, max pixel error, first divergent token) in the metrics column."""
        head = ("lvl", "graph", "prec", "case", "tensor", "  max_abs    rel_l2     cosine", "bound", "ok")
        body = []
        for r in self.rows:
            m = r.metrics
            nums = f"{m.max_abs:9.2e} {m.rel_l2:9.2e} {m.cosine:10.7f}" if m else \
                " ".join(f"{k}={v}" for k, v in r.extra.items())
            body.append((str(r.level), r.graph, r.precision, r.case, r.tensor, nums, r.bound.describe(),
                         "yes" if r.ok else "NO"))
        return "\n".join(format_table(head, body, right=(0,)) + self.notes)

    def worst_per_graph(self) -> "ParityReport":
        """One row per (level, graph, precision): its failing row if any, else its largest rel-L2."""
        best: dict[tuple, ParityRow] = {}
        for r in self.rows:
            key = (r.level, r.graph, r.precision)
            old = best.get(key)
            score = (not r.ok, r.metrics.rel_l2 if r.metrics else 0.0)
            if old is None or score > (not old.ok, old.metrics.rel_l2 if old.metrics else 0.0):
                best[key] = r
        return ParityReport(list(best.values()), list(self.notes))

    def raise_on_failure(self) -> None:
        """CheckFailed naming the first failing graph, tensor, case and bound (and how many failed)."""
        bad = self.failures()
        if bad:
            r = bad[0]
            more = f" (and {len(bad) - 1} more failing rows)" if len(bad) > 1 else ""
            raise CheckFailed(f"level {r.level} {r.graph} [{r.precision}] {r.case}: {r.tensor}: "
                              f"{'; '.join(r.violations)}{more}")


def format_table(head: tuple[str, ...], rows: list[tuple[str, ...]], right: tuple[int, ...] = ()) -> list[str]:
    """Lines of a plain-text table whose columns are as wide as their widest cell (``right``: right-aligned)."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]

    def line(cells) -> str:
        return " ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(head), "-" * len(line(head))] + [line(r) for r in rows]
