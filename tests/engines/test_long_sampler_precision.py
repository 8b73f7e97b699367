"""A 50-step profile (the default step count, not the 3-step test profile): the bf16 and fp8 fused edit sampler
(3-way CFG, the one that failed) passes quantize's own level-1 check, because the sampler's integrator stays fp32;
level-1 means and redraws."""
import numpy as np
import onnx
import pytest

from nextstep_trt.core.metrics import Bound, Metrics
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport, ParityRow
from nextstep_trt.export.manifest import Manifest

pytestmark = pytest.mark.slow(seconds=100)      # idle seconds, roughly: scheduled first (tests/conftest.py)

SAMPLERS = ("head_sampler_edit",)      # head_sampler is the same graph minus a CFG row; 50 steps cost ~1 min


@pytest.fixture(scope="module")
def long_art(tiny_dir, tiny_bundle, tmp_path_factory):
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.export.run import ExportOptions, export_all
    from nextstep_trt.ref.sampling import SamplerConfig

    profile = DeploymentProfile(max_batch=1, max_text_tokens=16, resolutions=((32, 32),),   # batch 1 failed once
                                t2i_sampler=SamplerConfig(steps=50, shift=1.0, use_norm=True),
                                edit_sampler=SamplerConfig(steps=50, shift=3.2, use_norm=True))
    out = tmp_path_factory.mktemp("long") / "art"
    export_all(ExportOptions(tiny_dir, out, graphs=SAMPLERS, profile=profile), tiny_bundle, log=lambda *_: None)
    return out


def _quantize(tiny_dir, tiny_bundle, art, precision):
    from nextstep_trt.engines.precision.run import QuantizeOptions, quantize_all

    return quantize_all(QuantizeOptions(tiny_dir, art, precision), tiny_bundle, log=lambda *_: None)


@pytest.mark.parametrize("precision", [Precision.BF16, Precision.FP8])
def test_50_step_samplers_pass_their_own_validation(long_art, tiny_dir, tiny_bundle, precision):
    records = _quantize(tiny_dir, tiny_bundle, long_art, precision)     # raises CheckFailed on any failure
    for g in SAMPLERS:
        validation = records[g]["validation"]
        assert validation["ok"] and validation["cases"] > 2, validation      # redrawn: 16-value tokens
        assert min(validation["mean_cosine"].values()) >= (0.9999 if precision is Precision.BF16 else 0.999)


def test_the_integrator_stays_fp32(long_art, tiny_dir, tiny_bundle):
    """Every node between the head's last linear layer and the token output computes in fp32 in the bf16
    graph, and the recipe says so."""
    from nextstep_trt.engines.precision import keep

    if "bf16" not in Manifest.load(long_art).data["graphs"]["head_sampler_edit"]["precisions"]:
        _quantize(tiny_dir, tiny_bundle, long_art, Precision.BF16)
    entry = Manifest.load(long_art).entry("head_sampler_edit", Precision.BF16)
    kept = entry["recipe"]["kept_fp32"]
    assert kept["by_reason"]["output"] > 50                      # CFG combine + Euler update of 50 steps
    model = onnx.load(long_art / entry["file"])
    producer = {o: n for n in model.graph.node for o in n.output}
    token = producer["token"]
    assert token.name in kept["nodes"] and kept["nodes"][token.name] in ("output", "residual", "norm")
    assert not any(n.op_type in keep.WEIGHTED_OPS for n in model.graph.node if kept["nodes"].get(n.name) == "output")


def _row(case, cos, bound):
    m = Metrics(max_abs=0.0, rel_l2=0.0, cosine=cos, p999_abs=0.0, nan=0, inf=0, worst=(), ref_at_worst=0.0,
                out_at_worst=0.0)
    return ParityRow(1, "g", "fp8", case, "t", m, bound, bound.violations(m))


def test_level1_means_hold_the_mean_and_name_the_lowest_case():
    from nextstep_trt.core.level1 import level1_means

    bound = Bound(cosine=0.97, mean_cosine=0.999)
    ok = level1_means(ParityReport([_row("a", 0.9995, bound), _row("b", 0.9993, bound)]))
    assert ok.ok and len(ok.rows) == 1 and ok.rows[0].extra["mean_cosine"] == pytest.approx(0.9994)
    bad = level1_means(ParityReport([_row("a", 0.9995, bound), _row("b #3", 0.9975, bound)]))
    assert not bad.ok and "mean cosine over 2 cases 0.9985000 < 0.999" in bad.rows[0].violations[0]
    assert "lowest: b #3" in bad.rows[0].violations[0]
    assert not level1_means(ParityReport([_row("a", 0.5, Bound(cosine=0.9))])).rows     # no mean bound: no row


def test_small_outputs_are_drawn_again_large_ones_not(tiny_bundle, tiny_artifacts):
    from nextstep_trt.export.components import COMPONENTS, DRAW_ELEMENTS, MAX_DRAWS

    manifest = Manifest.load(tiny_artifacts[0])
    for graph in ("head_sampler", "vae_decoder"):
        spec = manifest.spec(graph)
        base = COMPONENTS[graph].cases(tiny_bundle, spec, manifest.profile, np.random.default_rng(0))
        cases = COMPONENTS[graph].level1_cases(tiny_bundle, spec, manifest.profile, np.random.default_rng(0))
        assert [c.label for c in cases[:len(base)]] == [c.label for c in base]
        if graph == "vae_decoder":
            assert len(cases) == len(base)
            continue
        token = 16                                                   # tiny: 4 latent channels x 2 x 2
        assert len(cases) == len(base) * MAX_DRAWS and DRAW_ELEMENTS // token >= MAX_DRAWS
        draws = [c.feeds["noise"] for c in cases if c.label.startswith("batch=1")]
        assert len(draws) == MAX_DRAWS and not any(np.array_equal(draws[0], d) for d in draws[1:])
