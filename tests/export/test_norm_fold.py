"""``fold_modulated_norms``: LayerNorm(x) * s + t with computed per-row s, t becomes one LayerNormalization that
computes the same values in ONNX Runtime; anything else is left alone."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.export.norm_fold import fold_modulated_norms
from nextstep_trt.export.ort_session import make_session

ROWS, DIM = 3, 8


def _model(scale=1.0, bias=0.0, const_mul=False, extra_use=False) -> onnx.ModelProto:
    """y = LN(x, scale, bias) * s + t (s a Constant when ``const_mul``; the norm also an output when ``extra_use``)."""
    f32 = TensorProto.FLOAT
    inits = [numpy_helper.from_array(np.full(DIM, scale, np.float32), "w"),
             numpy_helper.from_array(np.full(DIM, bias, np.float32), "b"),
             numpy_helper.from_array(np.linspace(0.5, 2, ROWS * DIM, dtype=np.float32).reshape(ROWS, DIM), "c")]
    nodes = [helper.make_node("LayerNormalization", ["x", "w", "b"], ["n"], axis=-1, epsilon=1e-6),
             helper.make_node("Mul", ["n", "c" if const_mul else "s"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    io = [helper.make_tensor_value_info(n, f32, [ROWS, DIM]) for n in ("x", "s", "t")]
    outs = [helper.make_tensor_value_info("y", f32, [ROWS, DIM])]
    if extra_use:
        outs.append(helper.make_tensor_value_info("n", f32, [ROWS, DIM]))
    graph = helper.make_graph(nodes, "g", io, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return onnx.shape_inference.infer_shapes(model)


def _fold(model: onnx.ModelProto) -> tuple[int, onnx.ModelProto]:
    irm = ir.serde.deserialize_model(model)
    n = fold_modulated_norms(irm)
    return n, ir.serde.serialize_model(irm)


def _run(model: onnx.ModelProto, path) -> np.ndarray:
    onnx.save(model, str(path))
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((ROWS, DIM), dtype=np.float32) for k in ("x", "s", "t")}
    return make_session(path).run(["y"], feeds)[0]


def test_a_modulated_norm_becomes_one_node_with_the_same_values(tmp_path):
    model = _model()
    n, folded = _fold(model)
    assert n == 1
    ops = [node.op_type for node in folded.graph.node]
    assert ops == ["LayerNormalization", "Relu"], ops
    assert len(folded.graph.node[0].input) == 3
    want, got = _run(model, tmp_path / "a.onnx"), _run(folded, tmp_path / "b.onnx")
    err = np.abs(got - want).max()
    assert err < 1e-5, f"y: max abs {err:.3g} at {np.unravel_index(np.abs(got - want).argmax(), want.shape)}"


@pytest.mark.parametrize("kwargs", [{"scale": 2.0}, {"bias": 0.5}, {"const_mul": True}, {"extra_use": True}],
                         ids=["norm-has-a-weight", "norm-has-a-bias", "constant-multiplier", "norm-used-twice"])
def test_anything_else_is_left_alone(kwargs):
    n, folded = _fold(_model(**kwargs))
    assert n == 0
    assert [node.op_type for node in folded.graph.node] == ["LayerNormalization", "Mul", "Add", "Relu"]
