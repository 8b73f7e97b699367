"""The ONNX Runtime-only rewrites (export/ort_fusions.py, ort_attention.py): the exported fp32 backbone rewritten to
RotaryEmbedding + GroupQueryAttention computes what the torch reference computes
on every level-1 case at fp32's bounds (the reference and the rewritten graph are independent computations), the
CPU kernel's one-row limit is real and ``run_rows`` covers it, the graph lints clean against the unchanged spec, and
a graph of another form is refused by name."""
from collections import Counter

import numpy as np
import onnx
import pytest

from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_attention import AttentionPatternError, continues_cache, fuse_attention, run_rows
from nextstep_trt.export.ort_fusions import fuse_for_ort

pytestmark = pytest.mark.slow(seconds=15)


@pytest.fixture(scope="module")
def fused(tiny_artifacts, tiny_bundle):
    """(the session's fp32 backbone rewritten, its record, the manifest)."""
    manifest = Manifest.load(tiny_artifacts[0])
    model = onnx.load(manifest.path("backbone"))
    record = fuse_for_ort(model, tiny_bundle.config.backbone)
    return model, record, manifest


def test_rewritten_graph_has_one_attention_kernel_per_layer(fused, tiny_bundle):
    model, record, _ = fused
    layers = tiny_bundle.config.backbone.num_layers
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["GroupQueryAttention"] == layers and ops["RotaryEmbedding"] == 2 * layers
    assert ops["Softmax"] == 0 and ops["Cos"] == 1 and record["attention"]["layers"] == layers
    assert record["biases_in_matmulnbits"] == 0                                    # fp32: no MatMulNBits
    assert not any(i.startswith("past_") for n in model.graph.node if n.op_type == "Concat" for i in n.input)
    onnx.checker.check_model(model, full_check=True)


def test_rewritten_graph_matches_the_reference_on_every_level1_case(fused, tiny_bundle):
    from nextstep_trt.engines.precision.ranges import Runner
    from nextstep_trt.export.validate import validate_graph

    model, _, manifest = fused
    report = validate_graph(tiny_bundle, manifest.spec("backbone"), Runner(model).run, manifest.profile,
                            Precision.FP32)
    assert report.ok, report.table()
    cases = {r.case for r in report.rows}
    assert any("rows=4" in c and "seq=1 " not in c and "past=0" not in c for c in cases), cases   # row by row


def test_cpu_kernel_takes_a_continued_prompt_one_row_at_a_time(fused, tiny_bundle):
    import onnxruntime as ort

    from nextstep_trt.export.components import backbone_feeds

    model, _, manifest = fused
    spec = manifest.spec("backbone")
    feeds = backbone_feeds(tiny_bundle, spec, 2, 3, 5, np.random.default_rng(0))
    assert continues_cache(feeds)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="batch_size must be 1"):
        session.run(["cond"], feeds)
    both = run_rows(lambda f: {"cond": session.run(["cond"], f)[0]}, feeds)["cond"]
    rows = [session.run(["cond"], {k: v[r:r + 1] for k, v in feeds.items()})[0] for r in range(2)]
    assert both.shape == (2, tiny_bundle.config.backbone.hidden_size)
    assert np.array_equal(both, np.concatenate(rows))


def test_rewritten_graph_lints_clean_against_the_unchanged_spec(fused, tmp_path):
    from nextstep_trt.export.lint import lint_model

    model, _, manifest = fused
    onnx.save(model, tmp_path / "backbone.onnx")
    spec = manifest.spec("backbone")
    errors = [f for f in lint_model(tmp_path / "backbone.onnx", spec, hot=True) if f.severity == "error"]
    assert not errors, errors
    model.graph.output.append(onnx.helper.make_tensor_value_info("stray", onnx.TensorProto.FLOAT, None))
    onnx.save(model, tmp_path / "stray.onnx")
    found = [f.node for f in lint_model(tmp_path / "stray.onnx", spec, hot=True) if f.severity == "error"]
    assert found == ["stray"], found


def test_a_graph_of_another_form_is_refused_by_layer(tiny_artifacts, tiny_bundle):
    model = onnx.load(Manifest.load(tiny_artifacts[0]).path("backbone"))
    concat = next(n for n in model.graph.node if n.op_type == "Concat" and n.input[0] == "past_key.0")
    concat.input[:] = list(reversed(concat.input))                   # keys as concat(new, past)
    with pytest.raises(AttentionPatternError, match="layer 0"):
        fuse_attention(model, tiny_bundle.config.backbone)
