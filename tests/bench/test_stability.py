"""The bench's trust rules with injected readings and timings (no model, no timing asserted): load above the cores
or other processes' CPU share marks a cell, a wide spread re-runs it, targets off the bench preset are n/a."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from nextstep_trt.bench.memory import Bandwidth
from nextstep_trt.bench.results import BenchReport, Target
from nextstep_trt.bench.run import Bench, BenchOptions
from nextstep_trt.bench.stability import LoadReading, LoadWatch, SpreadRule, run_stable, spread
from nextstep_trt.bench.targets import label_targets, preset_settings
from nextstep_trt.bench.timing import CallLog
from nextstep_trt.ref.config import bench, tiny


def _watch(loads, cores=2, cpu=lambda: None):
    it = itertools.chain(loads, itertools.repeat(loads[-1]))
    return lambda: LoadWatch(lambda: next(it), cores, interval=60.0, cpu=cpu)


def test_load_above_the_cores_marks_the_cell():
    with _watch([0.5, 3.5])() as w:
        pass
    assert w.reading.samples == [0.5, 3.5] and w.reading.peak == 3.5 and w.reading.over
    assert "up to 3.50 > 2 cores" in w.reading.warning("onnxruntime fp32 B=1")
    with _watch([1.9, 2.0])() as calm:
        pass
    assert not calm.reading.over and calm.reading.warning("x") is None


def test_other_processes_cpu_share_marks_the_cell():
    ticks = iter([(1000, 4000, 300), (1300, 4400, 400)])           # 400 ticks: 300 busy, 100 of them ours
    with LoadWatch(lambda: 0.1, 2, interval=60.0, cpu=lambda: next(ticks)) as w:
        pass
    assert w.reading.others_share == pytest.approx(0.5)
    assert w.reading.over and "other processes took" in w.reading.warning("cell")
    few = iter([(0, 0, 0), (5, 10, 5)])                             # too few ticks to judge
    with LoadWatch(lambda: 0.1, 2, interval=60.0, cpu=lambda: next(few)) as w2:
        pass
    assert w2.reading.others_share is None and not w2.reading.over


def test_spread_rule_reruns_until_narrow_and_keeps_the_narrowest():
    assert spread([1.0, 1.3]) == pytest.approx(1.3) and spread([2.0]) is None
    rule = SpreadRule(1.25, reruns=2)
    attempts = iter([(2.0, "a"), (1.1, "b"), (1.0, "c")])
    result, st = run_stable(lambda: next(attempts), rule, _watch([0.1]))
    assert result == "b" and st.spreads == [2.0, 1.1] and st.kept == 1 and st.reruns == 1
    assert "re-run 1x" in st.notes("cell")[0]
    wide = iter([(1.6, "a"), (1.4, "b"), (1.5, "c"), (1.0, "d")])
    result, st = run_stable(lambda: next(wide), rule, _watch([0.1]))
    assert result == "b" and st.spreads == [1.6, 1.4, 1.5] and "still spread 1.400x" in st.notes("cell")[0]
    one, st = run_stable(lambda: (None, "only"), rule, _watch([0.1]))
    assert one == "only" and st.spreads == [None] and st.notes("cell") == []


class FakeRunner:
    """A runner whose end-to-end times are given: 2 timed repeats per attempt."""

    name, precision, timing_source = "onnxruntime", "fp32", "fake"

    def __init__(self, e2e):
        self.config, self._e2e = tiny(), iter(e2e)

    def generate(self, opts, prompt):
        log = CallLog(prefill=[0.01], decode=[0.001] * 6, sampler=[0.002] * 7, vae=[0.01])
        log.e2e = next(self._e2e)
        return np.zeros((1, 32, 32, 3), np.uint8), log

    def sampler_micro(self, opts, calls):
        return None, None

    def kv_capacity(self, opts, prompt):
        return 40


def test_measure_reruns_a_wide_cell_under_an_injected_load(tmp_path):
    opts = BenchOptions(model=tmp_path, backends=("onnxruntime",), repeat=2, spread=SpreadRule(1.25, 2),
                        load_reader=lambda: 7.0, height=32, width=32, steps=3)
    b = Bench(opts, log=lambda *_: None)
    run = b.measure(FakeRunner([1.0, 2.0, 1.0, 1.05]), 1, "fused graph", 20.0, "host copy")
    st = run.stability
    assert st.spreads == pytest.approx([2.0, 1.05]) and st.kept == 1
    assert run.stages.e2e_s == pytest.approx(1.025) and run.under_load            # the kept attempt's times
    notes = run.notes()
    assert any("ran under load" in n and "7.00" in n for n in notes) and any("re-run 1x" in n for n in notes)
    data = run.to_json()
    assert data["under_load"] and data["stability"]["spreads"] == pytest.approx([2.0, 1.05])


def _report(cfg, loaded: bool) -> BenchReport:
    from nextstep_trt.bench.machine import describe_machine

    report = BenchReport(describe_machine(), Bandwidth(64, 5, 10.0, 12.0, 2), {"precisions": ["fp32"]}
                         | preset_settings(cfg))
    if loaded:
        report.cells_under_load = lambda: ["onnxruntime fp32 B=1"]
    return report


def test_targets_are_not_applicable_off_the_bench_preset_and_carry_the_load():
    met = lambda: [Target.measured("x >= 1", 2.0, 1.0, "x", "(e)")]                        # noqa: E731
    off = label_targets(_report(tiny(), loaded=False), met())[0]
    assert not off.applicable and off.met is None and "[n/a ]" in off.line() and "not the bench preset" in off.line()
    on = label_targets(_report(bench(), loaded=True), met())[0]
    assert on.applicable and on.met is True and "[MET ]" in on.line() and "measured under load" in on.caveat
    calm = label_targets(_report(bench(), loaded=False), met())[0]
    assert calm.met and calm.caveat == ""
    assert preset_settings(bench())["preset"] == "bench" and preset_settings(tiny())["preset"] is None


def test_load_reading_without_samples():
    assert LoadReading().peak is None and not LoadReading(samples=[float("nan")]).over


def test_decode_rounds_shuffle_the_graph_order():
    """Every round times every graph once, in a new seeded order: no graph always follows the same one."""
    from nextstep_trt.bench.steps import StepOptions, _timed_rounds

    calls = []

    class Fake:
        def __init__(self, label):
            self.label = label

        def run(self):
            calls.append(self.label)

    graphs = [Fake(x) for x in "abcd"]
    opts = StepOptions(rounds=6, steps=2, seed=3)
    _, steps = _timed_rounds(graphs, opts)
    rounds = [calls[i:i + 8:2] for i in range(0, len(calls), 8)]            # each graph's first call of a round
    assert len(rounds) == 6 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1 and any(r[-1] != "d" for r in rounds)
    assert all(len(steps[x]) == 6 and all(len(r) == 2 for r in steps[x]) for x in "abcd")
    calls.clear()
    _timed_rounds(graphs, opts)
    assert [calls[i:i + 8:2] for i in range(0, len(calls), 8)] == rounds        # seeded: the same orders again
