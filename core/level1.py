"""Level-1 parity: each graph alone on identical inputs, every output tensor against its bound, then the per-tensor
means the bounds ask for. Export validation, quantize and ``verify`` all check level 1 through here (torch-free)."""
from __future__ import annotations

import numpy as np

from .metrics import Bound, compare
from .precision import KVCache, Precision
from .report import ParityReport, ParityRow
from .tolerances import graph_bound


def parity_row(level: int, graph: str, precision: str, case: str, tensor: str, ref, got, bound: Bound) -> ParityRow:
    """One compared tensor against its bound."""
    m = compare(ref, got)
    return ParityRow(level, graph, precision, case, tensor, m, bound, bound.violations(m))


def compare_level1(graph: str, precision: Precision, case: str, ref: dict, got: dict,
                   kv_cache: KVCache = KVCache.FP32) -> ParityReport:
    """Every output tensor of one graph call (``kv_cache``: the graph's cache type picks its bounds)."""
    return ParityReport([parity_row(1, graph, Precision(precision).value, case, name, ref[name], got[name],
                               graph_bound(graph, precision, name, kv_cache)) for name in ref])


def check_level1(graph: str, precision: Precision, cases, run, kv_cache: KVCache = KVCache.FP32) -> ParityReport:
    """Every (label, inputs, reference outputs) case of one graph through ``run(inputs)``, then the per-tensor means
    its bounds ask for (export validation and ``verify`` both check level 1 through here)."""
    report = ParityReport()
    for label, feeds, ref in cases:
        report.extend(compare_level1(graph, precision, label, ref, run(feeds), kv_cache))
    report.extend(level1_means(report))
    return report


def level1_means(report: ParityReport) -> ParityReport:
    """One row per (graph, precision, tensor) whose bound has a ``mean_cosine``: the mean of the tensor's cosine
    over every level-1 case in ``report``, naming the lowest case when the mean falls short."""
    groups: dict[tuple[str, str, str], list[ParityRow]] = {}
    for r in report.rows:
        if r.level == 1 and r.metrics is not None and r.bound.mean_cosine is not None:
            groups.setdefault((r.graph, r.precision, r.tensor), []).append(r)
    out = ParityReport()
    for (graph, precision, tensor), rows in groups.items():
        mean = float(np.mean([r.metrics.cosine for r in rows]))
        low = min(rows, key=lambda r: r.metrics.cosine)
        floor = rows[0].bound.mean_cosine
        bad = [] if mean >= floor else [f"mean cosine over {len(rows)} cases {mean:.7f} < {floor:g} "
                                        f"(lowest: {low.case}, {low.metrics.cosine:.7f})"]
        out.add(ParityRow(1, graph, precision, f"mean of {len(rows)} cases", tensor, None, rows[0].bound, bad,
                          {"mean_cosine": round(mean, 7), "lowest_case": low.case}))
    return out
