"""ONNX Runtime vs the PyTorch reference at the issue's bounds: level 1 per graph, level 2 teacher-forced, level 3
free-running (32x32 and 48x32, 3 sampler steps, cfg 2, and the edit path)."""
import pytest

from nextstep_trt.export.profile import GRAPHS
from nextstep_trt.runtime.ort_backend import OrtBackend
from nextstep_trt.runtime.reference import LiveReference
from nextstep_trt.runtime.verify import verify_backend

pytestmark = pytest.mark.slow(seconds=28)      # idle seconds, roughly: scheduled first (tests/conftest.py)


@pytest.fixture(scope="module")
def parity(tiny_artifacts, tiny_bundle, tiny_profile):
    art, _ = tiny_artifacts
    with OrtBackend(art) as backend:
        return verify_backend(backend, LiveReference(tiny_bundle, tiny_profile), "fp32", log=lambda *_: None)


def test_every_level_passes(parity):
    assert parity.ok, parity.table()


def test_level1_rel_l2(parity):
    rows = [r for r in parity.rows if r.level == 1]
    assert {r.graph for r in rows} == set(GRAPHS)
    assert max(r.metrics.rel_l2 for r in rows if not r.graph.startswith("vae")) <= 1e-6


CASES = {"t2i 32x32 b2", "t2i 48x32 b1", "t2i 32x32 cfg=1 b1", "edit 32x32 cfg=2 cfg_img=1.5",
         "edit 32x32 cfg=2 cfg_img=1", "edit 32x32 cfg=1 cfg_img=1"}


def test_level2_every_token(parity):
    rows = [r for r in parity.rows if r.level == 2]
    assert {r.tensor for r in rows} == {"cond", "velocity", "token"}
    labels = {r.case.rsplit(" token", 1)[0] for r in rows}
    assert labels == CASES
    assert max(r.metrics.rel_l2 for r in rows) <= 1e-5
    # 32x32 -> 4 tokens, 48x32 -> 6 tokens: every token is checked
    assert len({r.case for r in rows if r.case.startswith("t2i 48x32")}) == 6


def test_level3_images(parity):
    rows = [r for r in parity.rows if r.level == 3 and r.tensor == "image"]
    assert {r.case for r in rows} == CASES          # every guidance layout, cfg = 1 and cfg_img = 1 included
    for r in rows:
        psnr = float("inf") if r.extra["psnr_db"] == "inf" else r.extra["psnr_db"]
        assert psnr >= 60 and r.extra["first_divergent_token"] is None, r.extra


def test_a_broken_graph_is_caught_and_named(tiny_artifacts, tiny_bundle, tiny_profile):
    """The harness can fail: perturb one backbone output and level 1/2/3 all report it."""
    art, _ = tiny_artifacts

    class Skewed(OrtBackend):
        def run(self, graph, feeds):
            out = super().run(graph, feeds)
            if graph == "backbone":
                out = {**out, "cond": out["cond"] * 1.001}
            return out

    with Skewed(art) as backend:
        report = verify_backend(backend, LiveReference(tiny_bundle, tiny_profile), "fp32",
                                log=lambda *_: None)
    bad = report.failures()
    assert {r.level for r in bad} >= {1, 2}
    first = next(r for r in bad if r.level == 1)
    assert first.graph == "backbone" and first.tensor == "cond" and "rel_l2" in first.violations[0]
    with pytest.raises(Exception, match=r"level 1 backbone \[fp32\] .*cond: rel_l2"):
        report.raise_on_failure()
