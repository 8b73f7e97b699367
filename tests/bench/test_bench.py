"""The bench end to end on the tiny model: every figure present, parity that catches a wrong backend, plausible
bandwidth. torch-compile is left out here (inductor compiles for about a minute on 2 cores); no timing is asserted."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nextstep_trt.bench.run import BenchOptions
from nextstep_trt.bench.session import run_bench

STAGES = ("prefill_ms", "decode_first_ms", "decode_mid_ms", "decode_last_ms", "sampler_ms", "vae_ms")


def _options(tiny_dir, tiny_artifacts, **changes) -> BenchOptions:
    base = dict(model=tiny_dir, artifacts=tiny_artifacts[0], backends=("torch", "onnxruntime"), batches=(1, 4),
                height=64, width=64, steps=3, cfg=2.0, bandwidth_mib=64, micro_calls=2)
    return BenchOptions(**(base | changes))


@pytest.fixture(scope="module")
def report(tiny_dir, tiny_artifacts):
    return run_bench(_options(tiny_dir, tiny_artifacts), log=lambda *_: None)


def test_every_stage_is_timed(report):
    assert [(r.backend, r.batch) for r in report.runs] == [("torch", 1), ("torch", 4), ("onnxruntime", 1),
                                                          ("onnxruntime", 4)]
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
    assert {"machine", "bandwidth", "settings", "runs", "phases", "targets", "notes"} <= set(data)
    m = data["machine"]
    assert m["cpu"] and m["logical_cores"] >= 1 and m["ram_bytes"] > 0 and "onnxruntime" in m["versions"]
    assert len(m["load_start"]) == 3 and len(m["load_end"]) == 3
    for run in data["runs"]:
        assert set(STAGES) <= set(run["stages"]) and {"decode_gbps", "decode_fraction", "sampler_gbps",
                                                      "head_cache_resident"} <= set(run["roofline"])
        assert run["roofline"]["decode_bytes"] > 0 and run["roofline"]["decode_gbps"] > 0
    ort = [r for r in data["runs"] if r["backend"] == "onnxruntime"]
    assert all(r["ratios"]["e2e_vs_eager"] > 0 for r in ort)
    for phase in data["phases"]:
        assert phase["rss_peak_bytes"] >= phase["rss_start_bytes"] > 0 and phase["warmup_s"] > 0
        assert phase["threads"]
    assert len(data["targets"]) == 6 and all({"name", "value", "threshold", "met"} <= set(t) for t in data["targets"])


def test_parity_line_is_high_for_onnxruntime(report):
    for batch in (1, 4):
        assert report.run("onnxruntime", batch).psnr_db >= 60
    assert "PSNR vs eager" in report.table()


def test_bandwidth_is_plausible(report):
    bw = report.bandwidth
    assert 0.5 < bw.one_thread_gbps < 5000 and 0.5 < bw.gbps < 5000 and len(bw.samples_gbps) >= 5


def test_wrong_backend_shows_in_parity(tiny_dir, tiny_artifacts, monkeypatch):
    from nextstep_trt.runtime.ort_backend import OrtBackend

    right = OrtBackend.sample

    def perturbed(self, *args):
        return right(self, *args) + np.float32(0.5)               # every token off by 0.5

    monkeypatch.setattr(OrtBackend, "sample", perturbed)
    bad = run_bench(_options(tiny_dir, tiny_artifacts, backends=("onnxruntime",), batches=(1,)), log=lambda *_: None)
    assert any("eager reference (torch) was added" in n for n in bad.notes)
    quality = bad.run("onnxruntime", 1).psnr_db
    assert math.isfinite(quality) and quality < 30
