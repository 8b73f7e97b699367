"""Every fp32 graph of the tiny model: exported, validated against the reference, clean, parseable by TensorRT-RTX."""
import json

import numpy as np
import onnx
import pytest
import torch

from nextstep_trt.export.lint import lint_model
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_session import make_session
from nextstep_trt.export.profile import GRAPHS
from nextstep_trt.export.sizes import graph_weight_bytes
from nextstep_trt.ref.sampler import sample_token


def test_all_graphs_exported_and_recorded(tiny_artifacts):
    art, report = tiny_artifacts
    manifest = Manifest.load(art)
    assert manifest.graphs == list(GRAPHS)
    for g in GRAPHS:
        entry = manifest.entry(g)
        assert (art / entry["file"]).is_file() and entry["opset"] >= 17 and entry["validation"]["ok"]
        model = onnx.load(art / entry["file"])
        spec = manifest.spec(g)
        assert [i.name for i in model.graph.input] == spec.input_names
        assert [o.name for o in model.graph.output] == spec.output_names
    assert report.ok and report.rows


def test_validation_covers_the_required_shapes(tiny_artifacts):
    _, report = tiny_artifacts
    cases = {(r.graph, r.case) for r in report.rows}
    bb = {c for g, c in cases if g == "backbone"}
    for rows in (1, 4):
        for seq, past in [(1, 0), (7, 0), (64, 0), (1, 1), (1, 40), (1, 79)]:   # max prompt 64, capacity 80
            assert f"rows={rows} seq={seq} past={past}" in bb
    for g in ("vae_decoder", "vae_encoder"):
        for res in ("32x32", "48x32", "64x64"):
            for b in (1, 4):
                assert (g, f"batch={b} {res}") in cases
    for g in ("head_sampler", "head_sampler_edit"):
        assert {(g, "batch=1"), (g, "batch=4")} <= cases
    worst = max(r.metrics.rel_l2 for r in report.rows if not r.graph.startswith("vae"))
    assert worst <= 1e-6


def test_fused_sampler_equals_stepwise_reference(tiny_artifacts, tiny_bundle):
    """ORT's one-call sampler vs the reference sampler run step by step (full head call per step), same noise."""
    art, _ = tiny_artifacts
    manifest = Manifest.load(art)
    from nextstep_trt.export.profile import SAMPLERS, guidance_of, sampler_of

    for graph in SAMPLERS:                     # every guidance layout: none, text, text + image
        spec = manifest.spec(graph)
        guidance = guidance_of(spec)
        rng = np.random.default_rng(5)
        b = 3
        feeds = {"cond": rng.standard_normal((guidance.rows * b, 64)).astype(np.float32),
                 "noise": rng.standard_normal((4, b, 16)).astype(np.float32)}
        if guidance.rows > 1:
            feeds["cfg"] = np.array([1.0, 2.5, 7.5], np.float32)
        if guidance.rows > 2:
            feeds["cfg_img"] = np.array([1.0, 1.5, 2.0], np.float32)
        got = make_session(manifest.path(graph)).run(None, feeds)[0]
        t = {k: torch.from_numpy(v) for k, v in feeds.items()}
        with torch.no_grad():
            ref = sample_token(tiny_bundle.model.image_head, t["cond"], t["noise"], sampler_of(spec), guidance,
                               t.get("cfg"), t.get("cfg_img")).numpy()
        err = np.abs(got - ref).max()
        assert err < 1e-5, f"{graph}: token max abs error {err:.3g} at {np.unravel_index(np.abs(got - ref).argmax(), ref.shape)}"


@pytest.mark.parametrize("index", [0, 2], ids=["text", "text-image"])
def test_fused_gh_sampler_equals_stepwise_reference(tiny_bundle, tiny_profile, tmp_path, index):
    """The ``gh`` variant (N-1 SDE steps, then one deterministic ODE step: no noise, x + dt v), without the
    token norm, traced here (the session's artifacts use ``hf``): same check as above, on its own graph."""
    import dataclasses

    from nextstep_trt.export.components import COMPONENTS
    from nextstep_trt.export.exporter import save, trace
    from nextstep_trt.export.profile import SAMPLER_GRAPHS, head_sampler_spec
    from nextstep_trt.ref.sampling import SamplerConfig, SamplerVariant

    sampler = SamplerConfig(steps=4, shift=2.0, variant=SamplerVariant.GH, use_norm=False)
    profile = dataclasses.replace(tiny_profile, t2i_sampler=sampler, edit_sampler=sampler)
    graph = SAMPLER_GRAPHS[index]
    spec = head_sampler_spec(tiny_bundle.config, profile, graph)
    model, _, _ = trace(COMPONENTS[graph.name].module(tiny_bundle, spec), spec)
    path = tmp_path / "sampler.onnx"
    save(model, path)
    rng = np.random.default_rng(7)
    b, r = 2, graph.guidance.rows
    feeds = {"cond": rng.standard_normal((r * b, 64)).astype(np.float32),
             "noise": rng.standard_normal((5, b, 16)).astype(np.float32), "cfg": np.array([3.0, 7.5], np.float32)}
    if r > 2:
        feeds["cfg_img"] = np.array([1.5, 2.0], np.float32)
    got = make_session(path).run(None, feeds)[0]
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        ref = sample_token(tiny_bundle.model.image_head, t["cond"], t["noise"], sampler, graph.guidance, t["cfg"],
                           t.get("cfg_img")).numpy()
    err = np.abs(got - ref)
    assert err.max() < 1e-5, f"{graph.name} (gh): token max abs error {err.max():.3g} at {np.unravel_index(err.argmax(), ref.shape)}"


def test_a_fused_sampler_step_is_one_norm_per_layer_and_one_update_gemm(tiny_artifacts, tiny_bundle):
    """The kernels a step dispatches (graphs.HeadSamplerGraph): each modulated norm is one LayerNormalization
    with computed per-row scale and bias (no Mul/Add after it), the CFG combine and update one Gemm of two
    computed tensors, and no per-step Tile of the state."""
    from nextstep_trt.export.profile import SAMPLERS, sampler_of

    art, _ = tiny_artifacts
    manifest = Manifest.load(art)
    layers = tiny_bundle.config.head.layers
    for graph in SAMPLERS:
        model = onnx.load(manifest.path(graph))
        steps, norm = sampler_of(manifest.spec(graph)).steps, sampler_of(manifest.spec(graph)).use_norm
        consts = {i.name for i in model.graph.initializer}
        ops = [n.op_type for n in model.graph.node]
        modulated = [n for n in model.graph.node if n.op_type == "LayerNormalization" and len(n.input) == 3
                     and n.input[1] not in consts and n.input[2] not in consts]
        assert len(modulated) == steps * (layers + 1), (graph, len(modulated))
        assert ops.count("LayerNormalization") == len(modulated) + norm, graph          # + the token norm
        update = [n for n in model.graph.node if n.op_type == "Gemm" and n.input[1] not in consts]
        assert len(update) == steps, (graph, len(update))
        assert ops.count("Tile") <= 3, (graph, ops.count("Tile"))    # once per call: branch weights, noise, x0


def _initializer_bytes(path) -> int:
    model = onnx.load(path)
    return sum(onnx.numpy_helper.to_array(t).nbytes for t in model.graph.initializer)


def test_sampler_stores_head_weights_once(tiny_artifacts, tiny_profile):
    art, _ = tiny_artifacts
    from nextstep_trt.ref.config import tiny

    expected = graph_weight_bytes(tiny(), tiny_profile)
    for g in GRAPHS:
        got = _initializer_bytes(art / "fp32" / f"{g}.onnx")
        # small extra constants (shape tensors, rope frequencies) only; never N copies of the head
        assert expected[g] <= got <= expected[g] * 1.05 + 4096, (g, got, expected[g])


def test_graphs_are_lint_clean_and_parse_in_tensorrt_rtx(tiny_artifacts):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    from nextstep_trt.export.trt_check import trt_parse

    art, _ = tiny_artifacts
    manifest = Manifest.load(art)
    for g in GRAPHS:
        path = manifest.path(g)
        findings = lint_model(path, manifest.spec(g), manifest.data["graphs"][g]["export_sizes"])
        assert not [f for f in findings if f.severity == "error"], (g, findings)
        result = trt_parse(path)
        assert result.ok, (g, result.errors)
        assert [i[0] for i in result.inputs] == manifest.spec(g).input_names
        assert manifest.entry(g)["trt_parse"]["ok"]


def test_no_control_flow_and_no_trivial_export_dims(tiny_artifacts):
    art, _ = tiny_artifacts
    manifest = json.loads((art / "manifest.json").read_text())
    for g, entry in manifest["graphs"].items():
        assert min(entry["export_sizes"].values()) >= 2, g
        model = onnx.load(art / entry["precisions"]["fp32"]["file"])
        assert not {n.op_type for n in model.graph.node} & {"If", "Loop", "Scan"}, g
