"""fp16, bf16 and fp8 graphs build with TensorRT-RTX for compute capability 8.9 (tiny graphs made here; the full
matrix uses the precision graphs of `nextstep-trt quantize`); fp8 below 8.9 is refused up front."""
import ml_dtypes
import numpy as np
import pytest
from engine_helpers import needs_rtx, rtx
from onnx import TensorProto as TP
from onnx import checker, helper, numpy_helper, save

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.spec import Dim, GraphSpec, Profile, TensorSpec

RNG = np.random.default_rng(0)
W, B = RNG.standard_normal((8, 4)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)


def _raw(name, dtype, array):
    return helper.make_tensor(name, dtype, array.shape, array.view(np.uint8).tobytes(), raw=True)


def _model(nodes, io_type, inits, path):
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", io_type, ["rows", 8])],
                              [helper.make_tensor_value_info("y", io_type, ["rows", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    checker.check_model(model)
    save(model, path)
    return path


def fp16_graph(path):
    """MatMul + Add with fp16 weights and fp16 I/O."""
    inits = [numpy_helper.from_array(W.astype(np.float16), "W"), numpy_helper.from_array(B.astype(np.float16), "B")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="mm"),
             helper.make_node("Add", ["xw", "B"], ["y"], name="add")]
    return _model(nodes, TP.FLOAT16, inits, path)


def bf16_graph(path):
    """fp32 I/O cast around a bf16 MatMul + Add (what AutoCast with keep_io_types makes)."""
    inits = [_raw("W", TP.BFLOAT16, W.astype(ml_dtypes.bfloat16)), _raw("B", TP.BFLOAT16, B.astype(ml_dtypes.bfloat16))]
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TP.BFLOAT16, name="cast_in"),
             helper.make_node("MatMul", ["xb", "W"], ["xw"], name="mm"),
             helper.make_node("Add", ["xw", "B"], ["yb"], name="add"),
             helper.make_node("Cast", ["yb"], ["y"], to=TP.FLOAT, name="cast_out")]
    return _model(nodes, TP.FLOAT, inits, path)


def fp8_graph(path):
    """Per-tensor E4M3 Q/DQ on the activation and a DQ'd E4M3 weight before a MatMul (opset 19)."""
    scale = np.float32(np.abs(W).max() / 448)
    zero = np.zeros((), ml_dtypes.float8_e4m3fn)
    inits = [_raw("Wq", TP.FLOAT8E4M3FN, (W / scale).astype(ml_dtypes.float8_e4m3fn)),
             numpy_helper.from_array(np.array(scale), "w_scale"),
             numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
             _raw("zero", TP.FLOAT8E4M3FN, zero)]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["Wq", "w_scale", "zero"], ["wd"], name="dq_w"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm")]
    return _model(nodes, TP.FLOAT, inits, path)


def spec(dtype: str) -> GraphSpec:
    rows = Profile("p", (Dim("rows", 1, 2, 16),))
    return GraphSpec("mm", (TensorSpec("x", dtype, ("rows", 8)),), (TensorSpec("y", dtype, ("rows", 4)),), (rows,))


@pytest.mark.parametrize("precision,make,io", [("fp16", fp16_graph, "float16"), ("bf16", bf16_graph, "float32"),
                                               ("fp8", fp8_graph, "float32")])
def test_precision_graph_builds_for_cc_89(tmp_path, precision, make, io):
    needs_rtx()
    from nextstep_trt.engines.builder import build_plan

    opts, target = rtx("8.9")
    built = build_plan(make(tmp_path / f"{precision}.onnx"), spec(io), precision, opts, target)
    assert memoryview(built.plan).nbytes > 1000 and built.layers >= 2
    assert [(r["name"], r["dtype"], r["shape"]) for r in built.io] == [("x", io, [-1, 8]), ("y", io, [-1, 4])]
    assert built.profiles == [{"name": "p", "shapes": {"x": {"min": [1, 8], "opt": [2, 8], "max": [16, 8]}}}]


def test_fp8_below_89_is_refused_up_front(tmp_path, monkeypatch):
    needs_rtx()
    import nextstep_trt.engines.builder as builder

    path = fp8_graph(tmp_path / "fp8.onnx")
    opts, target = rtx("8.6")
    monkeypatch.setattr(builder, "parse_network", lambda *a: pytest.fail("parsed before refusing"))
    with pytest.raises(UserError, match=r"^fp8 engines need compute capability 8.9 or newer .*the target is 8.6$"):
        builder.build_plan(path, spec("float32"), "fp8", opts, target)


def test_the_fp8_graph_really_carries_fp8(tmp_path, monkeypatch):
    """Without the up-front refusal, TensorRT-RTX itself fails for sm86 on the fp8 datatype: the graph is not
    silently built in a wider type."""
    needs_rtx()
    import nextstep_trt.engines.builder as builder

    monkeypatch.setattr(builder, "check_precision", lambda *a: None)
    opts, target = rtx("8.6")
    with pytest.raises(UserError, match=r"could not build mm: .*fp8"):
        builder.build_plan(fp8_graph(tmp_path / "fp8.onnx"), spec("float32"), "fp8", opts, target)
