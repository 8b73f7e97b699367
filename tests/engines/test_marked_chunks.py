"""Intermediate tensors marked in chunks under a byte budget (a 512x512 VAE cannot hold all its activations at
once): the size estimate matches what ONNX Runtime returns, and chunked runs give the same statistics."""
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nextstep_trt.core.precision import Precision
from nextstep_trt.engines.precision.intermediates import compare_intermediates
from nextstep_trt.engines.precision.ranges import (
    MarkedRunner,
    RangeCollector,
    Runner,
    float_tensors,
    tensor_bytes,
    with_outputs,
)


def _vae(tiny_artifacts):
    return onnx.load(tiny_artifacts[0] / "fp32" / "vae_decoder.onnx")


def _feeds(seed=0, h=8, w=6):
    return {"latents": np.random.default_rng(seed).standard_normal((2, 4, h, w)).astype(np.float32)}


def test_size_estimate_matches_the_tensors_ort_returns(tiny_artifacts):
    model = _vae(tiny_artifacts)
    names = float_tensors(model)
    sizes = tensor_bytes(model, _feeds(), names)
    out = Runner(with_outputs(model, names)).run(_feeds())
    actual = {n: np.asarray(out[n]).nbytes for n in names}
    assert all(sizes[n] >= actual[n] for n in names)                    # never under: a chunk never overflows
    exact = sum(sizes[n] == actual[n] for n in names)
    assert exact >= 0.9 * len(names), f"only {exact} of {len(names)} sizes inferred exactly"


def _quarter(model) -> int:
    """A budget that splits the graph's float tensors at ``_feeds()`` into a few chunks."""
    return sum(tensor_bytes(model, _feeds(), float_tensors(model)).values()) // 4


def test_chunked_ranges_equal_one_run(tiny_artifacts):
    model = _vae(tiny_artifacts)
    whole, chunked = RangeCollector(model), RangeCollector(model, budget=_quarter(model))
    for seed, (h, w) in enumerate(((8, 6), (4, 4))):
        for c in (whole, chunked):
            c.update(_feeds(seed, h, w))
    assert len(chunked.runner.chunks(_feeds())) >= 4 and len(whole.runner.chunks(_feeds())) == 1
    # marking other outputs changes which nodes ONNX Runtime fuses, so values agree to float rounding, not bits
    assert chunked.amax.keys() == whole.amax.keys() and chunked.nonfinite == whole.nonfinite
    assert all(chunked.amax[k] == pytest.approx(whole.amax[k], rel=1e-5, abs=1e-6) for k in whole.amax)
    assert chunked.samples == whole.samples == 2


def test_chunked_intermediates_equal_one_run(tiny_artifacts, tmp_path):
    model = _vae(tiny_artifacts)
    wrong = onnx.load(tiny_artifacts[0] / "fp32" / "vae_decoder.onnx")
    last = next(i for i in reversed(wrong.graph.initializer) if len(i.dims) == 4)     # the last conv's weight
    last.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(last) * np.float32(2), last.name))
    one = compare_intermediates("vae_decoder", model, wrong, Precision.FP32, _feeds(), "whole")
    many = compare_intermediates("vae_decoder", model, wrong, Precision.FP32, _feeds(), "chunked",
                                 budget=2 * _quarter(model))
    assert sorted(r.tensor for r in many.rows) == sorted(r.tensor for r in one.rows)
    mine = {r.tensor: r.metrics.rel_l2 for r in many.rows}
    assert all(mine[r.tensor] == pytest.approx(r.metrics.rel_l2, rel=1e-3, abs=1e-6) for r in one.rows)
    assert many.worst.tensor == one.worst.tensor
    assert len(MarkedRunner(model, float_tensors(model), budget=_quarter(model)).chunks(_feeds())) >= 4
    assert one.worst.metrics.rel_l2 > 0.1
