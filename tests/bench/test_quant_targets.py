"""Issue 18's precision targets on a report with given times (no model): ratios against our fp32, the peer rule,
n/a when a precision or the peer is missing or the peer does not match our model."""
from __future__ import annotations

import pytest

from nextstep_trt.bench.machine import describe_machine
from nextstep_trt.bench.memory import Bandwidth
from nextstep_trt.bench.quant_targets import precision_targets
from nextstep_trt.bench.results import BenchReport, Roofline, RunResult, StageTimes
from nextstep_trt.bench.stability import LoadReading, SpreadRule, Stability
from nextstep_trt.bench.steps import StepCell, StepTiming


def _timing(source, precision, past, ms):
    return StepTiming(f"{source} {precision}", source, precision, past, 2, ms, [ms], 1 << 20, 1 << 10, 1.0, 0.1,
                      0.2)


def _cell(past, times):
    st = Stability([1.0], 0, LoadReading([0.1], 2), SpreadRule())
    return StepCell(past, [_timing(s, p, past, ms) for (s, p), ms in times.items()], st)


def _run(precision, sampler_ms, s_per_image):
    stages = StageTimes(1, 1, 1, 1, sampler_ms, "fused graph", None, None, 1, 1, 0, s_per_image, s_per_image,
                        1 / s_per_image, 1)
    return RunResult("onnxruntime", 1, stages, Roofline(10, "host copy", 1, 1, 0.1, 1, 1, 0.1, 1, False), 80.0,
                     precision)


def _report(precisions, cells, runs, peer):
    return BenchReport(describe_machine(), Bandwidth(64, 5, 10, 12, 2), {"precisions": precisions}, runs=runs,
                       steps=cells, peer=peer)


def _by_name(targets):
    return {t.name: t for t in targets}


def test_ratios_against_our_fp32_and_the_peer():
    cells = [_cell(300, {("ours", "fp32"): 18.0, ("ours", "int8"): 12.0, ("ours", "int4"): 5.0,
                         ("peer", "fp32"): 17.5, ("peer", "int4"): 5.5}),
             _cell(1000, {("ours", "fp32"): 19.0, ("ours", "int8"): 10.0, ("ours", "int4"): 8.0,
                          ("peer", "fp32"): 18.6, ("peer", "int4"): 7.1})]
    runs = [_run("fp32", 9.0, 8.0), _run("int8", 6.0, 5.0), _run("int4", 5.0, 3.0)]
    t = _by_name(precision_targets(_report(["fp32", "int8", "int4"], cells, runs, {"verified": True})))
    assert t["int4 decode step >= 3x our fp32 (B=2, past 300)"].value == pytest.approx(3.6)
    assert t["int4 decode step >= 3x our fp32 (B=2, past 300)"].met is True
    assert t["int4 decode step >= 3x our fp32 (B=2, past 1000)"].met is False           # 2.375x
    assert t["int8 decode step >= 1.7x our fp32 (B=2, past 300)"].met is False          # 1.5x
    assert t["int8 decode step >= 1.7x our fp32 (B=2, past 1000)"].met is True          # 1.9x
    assert t["int8 sampler per token >= 1.5x fp32 ORT"].value == pytest.approx(1.5)
    assert t["int4 sampler per token >= 1.5x fp32 ORT"].met is True
    assert t["int4 end-to-end s/image >= 2.2x fp32 ORT"].value == pytest.approx(8 / 3)
    peer = "our int4 decode step no slower than onnxruntime-genai int4 (B=2, past {})"
    assert t[peer.format(300)].value == pytest.approx(1.1) and t[peer.format(300)].met
    assert t[peer.format(1000)].value == pytest.approx(7.1 / 8.0) and t[peer.format(1000)].met is False


def test_missing_precision_peer_or_a_wrong_conversion_is_not_applicable():
    cells = [_cell(300, {("ours", "fp32"): 18.0, ("ours", "int4"): 5.0, ("peer", "int4"): 5.5})]
    runs = [_run("fp32", 9.0, 8.0), _run("int4", 5.0, 3.0)]
    t = _by_name(precision_targets(_report(["fp32", "int4"], cells, runs, {"verified": False})))
    assert t["int8 decode step >= 1.7x our fp32 (B=2, past 300)"].met is None
    assert t["int8 sampler per token >= 1.5x fp32 ORT"].met is None
    void = t["our int4 decode step no slower than onnxruntime-genai int4 (B=2, past 300)"]
    assert void.met is None and "does not match" in void.evidence
    none = _by_name(precision_targets(_report(["fp32", "int4"], [_cell(300, {("ours", "fp32"): 1.0})], runs,
                                              {"built": False, "why": "onnxruntime-genai is not installed"})))
    assert "not installed" in none["our int4 decode step no slower than onnxruntime-genai int4 (B=2, past 300)"
                                   ].evidence
    assert precision_targets(_report(["fp32", "fp16"], cells, runs, {})) == []         # no int8/int4 asked


def test_decode_speedups_pair_rounds_so_a_drift_between_rounds_cancels():
    """The machine slows 2x in round 2: each graph's overall median mixes fast and slow rounds, but within a round
    int4 is always 3x fp32, and that is what the target and the table report."""
    fp32 = StepTiming("ours fp32", "ours", "fp32", 300, 2, 24.0, [12.0, 24.0, 36.0], 1 << 20, 1 << 10, 1.0, 0.1, 0.2)
    int4 = StepTiming("ours int4", "ours", "int4", 300, 2, 4.0, [4.0, 8.0, 12.0], 1 << 20, 1 << 10, 1.0, 0.1, 0.2)
    assert int4.speedup_over(fp32) == pytest.approx(3.0)
    odd = StepTiming("ours int4", "ours", "int4", 300, 2, 10.0, [4.0, 12.0, 10.0], 1 << 20, 1 << 10, 1.0, 0.1, 0.2)
    assert odd.speedup_over(fp32) == pytest.approx(3.0)          # median of 3.0, 2.0, 3.6
    st = Stability([1.0], 0, LoadReading([0.1], 2), SpreadRule())
    t = _by_name(precision_targets(_report(["fp32", "int4"], [StepCell(300, [fp32, int4], st)], [], {})))
    assert t["int4 decode step >= 3x our fp32 (B=2, past 300)"].value == pytest.approx(3.0)


def _rounds(label, source, precision, rounds):
    return StepTiming(label, source, precision, 300, 2, sorted(rounds)[len(rounds) // 2], rounds, 1 << 20, 1 << 10,
                      1.0, 0.1, 0.2)


def _control_cell(ours_int4, its_control, peer_int4=None, peer_control=None):
    """A past-300 cell from round times: ours fp32 at 12 ms, ours int4 and its control, optionally the peer's int4
    and its control."""
    timings = [_rounds("ours fp32", "ours", "fp32", [12.0] * len(ours_int4)),
               _rounds("ours int4", "ours", "int4", ours_int4)]
    timings += [_rounds("peer int4", "peer", "int4", peer_int4)] if peer_int4 else []
    timings += [_rounds("ours int4 (control)", "control", "int4", its_control)]
    timings += [_rounds("peer int4 (control)", "control", "int4", peer_control)] if peer_control else []
    return StepCell(300, timings, Stability([1.0], 0, LoadReading([0.1], 2), SpreadRule()))


def test_a_control_far_from_its_twin_flags_the_cell_and_shows_in_the_targets():
    """Two sessions of one graph 1.3x apart (paired by round): the cell gets a warning naming the graph and the
    ratio, the targets carry the control; 1.05x apart is within the margin; a control is never 'ours'."""
    far = _control_cell([4.0, 4.0, 4.0], [5.2, 5.2, 5.2])
    assert far.control_ratios() == {"ours int4": pytest.approx(1.3)}
    [note] = far.control_notes()
    assert "(ours int4)" in note and "1.30x apart" in note and "past 300" in note
    report = _report(["fp32", "int4"], [far], [], {})
    assert note in report.warnings()
    t = _by_name(precision_targets(report))["int4 decode step >= 3x our fp32 (B=2, past 300)"]
    assert t.value == pytest.approx(3.0) and "control ours int4 1.30x" in t.evidence   # the first session's time
    near = _control_cell([4.0, 4.0, 4.0], [4.2, 4.2, 4.2])
    assert near.control_ratios() == {"ours int4": pytest.approx(1.05)} and near.control_notes() == []
    assert far.get("ours", "int4").label == "ours int4"
    plain = StepCell(300, far.timings[:2], far.stability)
    assert plain.controls() == [] and plain.control_ratios() == {} and plain.control_notes() == []


def test_the_peer_target_carries_both_controls():
    """The peer's int4 session placed badly (its control 0.8x of it): the peer target shows both controls and the
    warning names the peer's graph, not ours."""
    cell = _control_cell([4.0, 4.0, 4.0], [4.0, 4.0, 4.0], [5.0, 5.0, 5.0], [4.0, 4.0, 4.0])
    assert cell.control_ratios() == {"ours int4": pytest.approx(1.0), "peer int4": pytest.approx(0.8)}
    [note] = cell.control_notes()
    assert "(peer int4)" in note and "0.80x apart" in note
    peer = _by_name(precision_targets(_report(["fp32", "int4"], [cell], [], {})))[
        "our int4 decode step no slower than onnxruntime-genai int4 (B=2, past 300)"]
    assert peer.value == pytest.approx(1.25) and "control ours int4 1.00x, peer int4 0.80x" in peer.evidence
