"""Issue 18's speed targets for the weight-only int8/int4 graphs, checked against a report (torch-free).

All against our fp32 ONNX Runtime graphs in the same run, bench preset: decode step (batch 2 = the CFG rows,
each decode-step past) int4 >= 3.0x and int8 >= 1.7x; sampler per token int8 and int4 >= 1.5x; end-to-end s/image
int4 >= 2.2x; and our int4 decode step no slower than onnxruntime-genai's int4 build of the same backbone (peer ms /
our ms >= 1.0). They appear when the run has an int8 or int4 precision; none is a timed test.
"""
from __future__ import annotations

from nextstep_trt.core.resources import size_text

from .results import BenchReport, Target, ratio

ORT, FP32 = "onnxruntime", "fp32"
QUANT = ("int8", "int4")
DECODE_GOAL = {"int8": 1.7, "int4": 3.0}      # decode ratios: StepTiming.speedup_over (paired by round)
SAMPLER_GOAL = {"int8": 1.5, "int4": 1.5}
E2E_GOAL = {"int4": 2.2}


def _control(cell, *timings) -> str:
    """'; control ours int4 1.03x' for each of ``timings`` with a control in ``cell`` (the same graph's second
    session over its first, ``steps.py``), or ''."""
    ratios = cell.control_ratios() if cell else {}
    shown = [f"{t.label} {ratios[t.label]:.2f}x" for t in timings if t.label in ratios]
    return f"; control {', '.join(shown)}" if shown else ""


def _decode(report: BenchReport, p: str) -> list[Target]:
    out = []
    for cell in report.steps or [None]:
        past = f"past {cell.past}" if cell else "each past"
        name = f"{p} decode step >= {DECODE_GOAL[p]:g}x our fp32 (B=2, {past})"
        ours, base = (cell.get("ours", p), cell.get("ours", FP32)) if cell else (None, None)
        if ours is None or base is None:
            out.append(Target(name, None, DECODE_GOAL[p], "x", None, f"(no {p} and fp32 decode steps measured)"))
            continue
        out.append(Target.measured(name, ours.speedup_over(base), DECODE_GOAL[p], "x",
                                   f"({base.ms:.2f} -> {ours.ms:.2f} ms, speed-up paired by round; "
                                   f"{size_text(ours.step_bytes)}/step, {ours.gbps:.1f} GB/s"
                                   f"{_control(cell, base, ours)})"))
    return out


def _loop(report: BenchReport, p: str, goal: float, what: str) -> Target:
    """Sampler per token or end-to-end s/image of ``p`` vs fp32, ORT, at the smallest batch both ran."""
    batches = sorted({r.batch for r in report.runs if r.backend == ORT and r.precision == p}
                     & {r.batch for r in report.runs if r.backend == ORT and r.precision == FP32})
    name = f"{p} {what} >= {goal:g}x fp32 ORT"
    if not batches:
        return Target(name, None, goal, "x", None, f"(no onnxruntime {p} and fp32 runs)")
    b = batches[0]
    run, base = report.run(ORT, b, p), report.run(ORT, b, FP32)
    field = "sampler_ms" if what == "sampler per token" else "s_per_image"
    x, y = getattr(base.stages, field), getattr(run.stages, field)
    unit = "ms" if field == "sampler_ms" else "s"
    return Target.measured(name, ratio(x, y), goal, "x", f"(B={b}: {x:.2f} -> {y:.2f} {unit})")


def _peer(report: BenchReport) -> list[Target]:
    out = []
    for cell in report.steps or [None]:
        past = f"past {cell.past}" if cell else "each past"
        name = f"our int4 decode step no slower than onnxruntime-genai int4 (B=2, {past})"
        ours, peer = (cell.get("ours", "int4"), cell.get("peer", "int4")) if cell else (None, None)
        if report.peer.get("verified") is False:
            out.append(Target(name, None, 1.0, "x", None, "(the peer's fp32 build does not match ours: void)"))
        elif ours is None or peer is None:
            why = report.peer.get("why") or ("no int4 graph of ours" if ours is None else "no peer int4 build")
            out.append(Target(name, None, 1.0, "x", None, f"({why})"))
        else:
            q = report.peer.get("options", {}).get("int4", {})
            built = f"block {q['block_size']}, level {q['accuracy_level']}; " if q else ""
            out.append(Target.measured(name, ours.speedup_over(peer), 1.0, "x",
                                       f"(peer {peer.ms:.2f} ms vs ours {ours.ms:.2f} ms; {built}peer/ours paired by "
                                       f"round{_control(cell, ours, peer)})"))
    return out


def precision_targets(report: BenchReport) -> list[Target]:
    """Issue 18's targets when the run has int8 or int4 (else none)."""
    asked = [p for p in QUANT if p in report.precisions]
    if not asked:
        return []
    out = [t for p in QUANT for t in _decode(report, p)]
    out += [_loop(report, p, SAMPLER_GOAL[p], "sampler per token") for p in QUANT]
    out.append(_loop(report, "int4", E2E_GOAL["int4"], "end-to-end s/image"))
    return out + _peer(report)
