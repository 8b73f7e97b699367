"""The FP16-vs-BF16 overflow report names the node whose activations exceed fp16's range, and our fp16 pass keeps
that node in fp32 where a plain AutoCast conversion overflows to Inf; --mark-intermediates finds a planted error."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nextstep_trt.core.precision import Precision

# Two consecutive layers of the head's first res block: scaling both by 1000 keeps every weight well inside fp16
# (|w| < 1e3) while their product drives the second layer's output past 65504.
FIRST, SECOND = "head.net.res_blocks.0.mlp.0.weight", "head.net.res_blocks.0.mlp.2.weight"


def _scaled_head(src, dst, names, factor):
    model = onnx.load(src)
    for init in model.graph.initializer:
        if init.name in names:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))
    onnx.save(model, dst)
    return model


def _feeds(n=3):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 16)).astype(np.float32), "t": rng.random(4).astype(np.float32),
             "cond": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(n)]


def _node_using(model, weight):
    return next(n.name for n in model.graph.node if weight in n.input)


@pytest.fixture(scope="module")
def hot(tiny_artifacts, tmp_path_factory):
    art, _ = tiny_artifacts
    path = tmp_path_factory.mktemp("overflow") / "head_step_hot.onnx"
    return path, _scaled_head(art / "fp32" / "head_step.onnx", path, {FIRST, SECOND}, 1000.0)


def test_report_names_the_overflowing_node_and_our_fp16_graph_keeps_it_fp32(hot):
    from modelopt.onnx.autocast import convert_to_mixed_precision

    from nextstep_trt.engines.precision.autocast import FP16_SAFE_MAX, mixed_precision
    from nextstep_trt.engines.precision.keep import keep_fp32
    from nextstep_trt.engines.precision.overflow import OverflowProbe
    from nextstep_trt.engines.precision.ranges import RangeCollector

    path, fp32 = hot
    ranges = RangeCollector(fp32)
    for f in _feeds():
        ranges.update(f)
    ours = mixed_precision(path, Precision.FP16, keep_fp32(fp32, ranges.amax, FP16_SAFE_MAX))
    naive = convert_to_mixed_precision(onnx_path=str(path), low_precision_type="fp16", keep_io_types=True,
                                       data_max=np.inf, init_max=np.inf)
    del naive.graph.value_info[:]
    target = _node_using(fp32, SECOND)
    reports = {}
    for name, low in (("ours", ours), ("naive", naive)):
        probe = OverflowProbe("head_step", fp32, low)
        for f in _feeds():
            probe.update(f)
        reports[name] = probe.report()
    first = reports["ours"].overflowing()[0]
    assert first.node == target and first.fp32_max > 65504 and first.kept_fp32 and first.fp16_new_inf == 0
    assert _node_using(fp32, FIRST) not in {r.node for r in reports["ours"].overflowing()}
    assert all(r.fp16_new_inf == 0 for r in reports["ours"].rows)
    plain = next(r for r in reports["naive"].rows if r.node == target)
    assert not plain.kept_fp32 and plain.fp16_new_inf > 0
    assert target in reports["ours"].table() and "exceed fp16's range: first " + target in reports["ours"].table()


def test_mark_intermediates_finds_a_planted_error(tiny_artifacts, tmp_path):
    """Double the final layer's weight: every tensor before it matches exactly, so it must be the worst layer."""
    from nextstep_trt.engines.precision.intermediates import compare_intermediates

    art, _ = tiny_artifacts
    fp32 = onnx.load(art / "fp32" / "head_step.onnx")
    final = "head.net.final_layer.linear.weight"
    wrong = _scaled_head(art / "fp32" / "head_step.onnx", tmp_path / "wrong.onnx", {final}, 2.0)
    report = compare_intermediates("head_step", fp32, wrong, Precision.FP32, _feeds(1)[0], "planted")
    assert report.worst.node == _node_using(fp32, final) and report.worst.metrics.rel_l2 > 0.1
    assert sum(r.metrics.rel_l2 > 0 for r in report.rows) == 1
    assert "worst layer: " + report.worst.node in report.table()
