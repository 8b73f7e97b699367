"""The bench end to end on the tiny model at the smallest profile that shows every figure (32x32, batches 1 and 2,
fp32 and fp16 in one run, an injected load reading above the cores, a short decode-step benchmark): every figure
present, ratios against the first precision, load and preset labels, parity that catches a wrong backend,
plausible bandwidth. torch-compile is left out (inductor compiles for about a minute on 2 cores); no timing is
asserted."""
from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest

from nextstep_trt.bench.run import BenchOptions
from nextstep_trt.bench.session import run_bench
from nextstep_trt.bench.tables import report_table

pytestmark = pytest.mark.slow(seconds=45)      # idle seconds, roughly: scheduled first (tests/conftest.py)

STAGES = ("prefill_ms", "decode_first_ms", "decode_mid_ms", "decode_last_ms", "sampler_ms", "vae_ms")


def _options(tiny_dir, artifacts, **changes) -> BenchOptions:
    base = dict(model=tiny_dir, artifacts=artifacts, backends=("torch", "onnxruntime"), batches=(1, 2),
                height=32, width=32, steps=3, cfg=2.0, bandwidth_mib=32, micro_calls=2, prompt="a red fox",
                decode_pasts=(5, 30), decode_rounds=2, decode_steps=2, peer=False, load_reader=lambda: 99.0)
    return BenchOptions(**(base | changes))


@pytest.fixture(scope="module")
def fp16_artifacts(tiny_dir, tiny_bundle, tiny_artifacts, tmp_path_factory):
    """The session's fp32 artifacts (copied) plus an fp16 backbone (the other graphs run at fp32, said in notices)."""
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.engines.precision.run import QuantizeOptions, quantize_all

    out = tmp_path_factory.mktemp("bench16") / "art"
    shutil.copytree(tiny_artifacts[0], out)
    quantize_all(QuantizeOptions(tiny_dir, out, Precision.FP16, graphs=("backbone",), validate=False),
                 tiny_bundle, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def report(tiny_dir, fp16_artifacts):
    return run_bench(_options(tiny_dir, fp16_artifacts, precisions=("fp32", "fp16")), log=lambda *_: None)


def test_every_stage_is_timed(report):
    assert [(r.backend, r.precision, r.batch) for r in report.runs] == [
        ("torch", "fp32", 1), ("torch", "fp32", 2), ("onnxruntime", "fp32", 1), ("onnxruntime", "fp32", 2),
        ("onnxruntime", "fp16", 1), ("onnxruntime", "fp16", 2)]
    for run in report.runs:
        s = run.stages
        assert all(getattr(s, k) is not None and getattr(s, k) > 0 for k in STAGES), s
        assert s.images_per_s == pytest.approx(run.batch / s.e2e_s)
        assert s.sampler_steps_ms > 0
    ort, ref = report.run("onnxruntime", 1).stages, report.run("torch", 1).stages
    assert ort.sampler_path == "fused graph" and ort.sampler_fused_ms > 0
    assert ref.sampler_fused_ms is None and ref.head_calls_per_token == 3     # one head call per sampler step


def test_json_carries_every_figure(report):
    data = json.loads(json.dumps(report.to_json()))            # strict JSON: no inf / nan left
    assert {"machine", "bandwidth", "settings", "runs", "phases", "steps", "targets", "warnings", "notes"} <= set(data)
    m = data["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["ram_bytes"] > 0 and "onnxruntime" in m["versions"]
    assert len(m["load_start"]) == 3 and len(m["load_end"]) == 3
    assert all(set(c["control_ratios"]) == {"ours fp16"} and c["control_ratios"]["ours fp16"] > 0
               for c in data["steps"])
    assert re.search(r"controls \(a second session of the graph.*\): ours fp16 \S+x at past 5, \S+x at past 30$",
                     report_table(report), re.M)
    for run in data["runs"]:
        assert set(STAGES) <= set(run["stages"]) and {"decode_gbps", "decode_fraction", "sampler_gbps",
                                                      "head_cache_resident"} <= set(run["roofline"])
        assert run["roofline"]["decode_bytes"] > 0 and run["roofline"]["decode_gbps"] > 0
    ort = [r for r in data["runs"] if r["backend"] == "onnxruntime"]
    assert all(r["ratios"]["e2e_vs_eager"] > 0 for r in ort)
    for phase in data["phases"]:
        assert phase["rss_peak_bytes"] >= phase["rss_start_bytes"] > 0 and phase["warmup_s"] > 0
        assert phase["threads"]
    assert len(data["targets"]) == 6 and all({"name", "value", "threshold", "met", "applicable"} <= set(t)
                                             for t in data["targets"])
    assert all(r["under_load"] and r["stability"]["load_peak"] == 99.0 for r in data["runs"])


def test_precisions_in_one_run_with_ratios_against_the_first(report):
    fp16, fp32 = report.run("onnxruntime", 1, "fp16"), report.run("onnxruntime", 1, "fp32")
    assert fp16.ratios["e2e_vs_first"] == pytest.approx(fp16.stages.images_per_s / fp32.stages.images_per_s)
    assert fp16.ratios["decode_vs_first"] == pytest.approx(fp32.stages.decode_mid_ms / fp16.stages.decode_mid_ms)
    assert "e2e_vs_first" not in fp32.ratios and fp16.psnr_db > 30
    assert fp16.roofline.decode_bytes < fp32.roofline.decode_bytes            # measured from the fp16 graph
    assert [p.backend for p in report.phases] == ["torch", "onnxruntime fp32", "onnxruntime fp16"]
    assert any("running it at fp32" in n for n in report.phases[2].notices)
    assert [c.past for c in report.steps] == [5, 30]
    for cell in report.steps:
        ours32, ours16 = cell.get("ours", "fp32"), cell.get("ours", "fp16")
        assert ours16.weight_bytes < 0.75 * ours32.weight_bytes and ours16.cosine > 0.999
        assert ours32.cosine == pytest.approx(1.0) and ours32.kv_bytes == ours16.kv_bytes > 0
        [(twin, control)] = cell.controls()              # a second session of the last graph, timed last
        assert (twin.label, control.label, control.source) == ("ours fp16", "ours fp16 (control)", "control")
        assert control.rel_l2 == twin.rel_l2 and control.round_ms != twin.round_ms     # same graph, same output
        assert cell.control_ratios()["ours fp16"] > 0 and cell.timings[-1] is control
    assert report.peer["built"] is False and report.peer["why"] == "--peer off"


def test_load_and_preset_are_labelled(report):
    text = report_table(report)
    assert "WARNINGS:" in text and "ran under load: 1-min load average up to 99.00" in text
    assert "is not the bench preset" in text and "[MET ]" not in text and "[MISS]" not in text
    assert all(not t.applicable and t.met is None for t in report.targets)
    assert len(report.warnings()) >= len(report.runs) + len(report.steps)
    assert not re.findall(r"\b[KMGT]iB\b", text) and " MB " in text          # one (decimal) unit system


def test_parity_line_is_high_for_onnxruntime(report):
    for batch in (1, 2):
        assert report.run("onnxruntime", batch).psnr_db >= 60
    assert "PSNR vs eager" in report_table(report)


def test_bandwidth_is_plausible(report):
    bw = report.bandwidth
    assert 0.5 < bw.one_thread_gbps < 5000 and 0.5 < bw.gbps < 5000 and len(bw.samples_gbps) >= 5


def test_wrong_backend_shows_in_parity(tiny_dir, tiny_artifacts, monkeypatch):
    from nextstep_trt.runtime.ort_backend import OrtBackend

    right = OrtBackend.sample

    def perturbed(self, *args):
        return right(self, *args) + np.float32(0.5)               # every token off by 0.5

    monkeypatch.setattr(OrtBackend, "sample", perturbed)
    bad = run_bench(_options(tiny_dir, tiny_artifacts[0], backends=("onnxruntime",), batches=(1,), decode_pasts=()),
                    log=lambda *_: None)
    assert any("eager reference (torch) was added" in n for n in bad.notes)
    quality = bad.run("onnxruntime", 1).psnr_db
    assert math.isfinite(quality) and quality < 30


def test_a_control_is_left_out_where_a_second_session_would_not_fit(tiny_dir, tiny_artifacts):
    """The bench loads a control session only where twice its graph's weights fit in the RAM available (a 14.9 B
    backbone's second session would not); otherwise it says so in a note naming the graph."""
    from pathlib import Path

    from nextstep_trt.bench.graph_bytes import graph_stream_bytes
    from nextstep_trt.bench.step_phase import controls_that_fit
    from nextstep_trt.bench.steps import CONTROL, StepGraph
    from nextstep_trt.ref.config import load_config

    path = Path(tiny_artifacts[0]) / "fp32" / "backbone.onnx"
    graph = StepGraph("ours fp32", "ours", "fp32", path, load_config(tiny_dir))
    size = graph_stream_bytes(path, lookups=True)
    assert size > graph.weight_bytes                                    # the embedding table is held, not streamed
    [control], notes = controls_that_fit([graph], 2 * size)
    assert notes == [] and control.source == CONTROL and control.label == "ours fp32 (control)"
    assert control.session is not graph.session and control.path == graph.path
    none, [note] = controls_that_fit([graph], 2 * size - 1)
    assert none == [] and "no control session of ours fp32" in note and "RAM available" in note
