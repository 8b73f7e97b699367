"""lint_model rules, inspect_dict and the TensorRT-RTX parse check on tiny ONNX graphs built in the test."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.inspect import inspect_dict, inspect_text
from nextstep_trt.export.lint import Finding, lint_model, load_model
from nextstep_trt.export.spec import Dim, GraphSpec, Profile, TensorSpec

RNG = np.random.default_rng(0)


def _weight(name: str, shape=(4, 3), value=None) -> TensorProto:
    arr = RNG.standard_normal(shape).astype(np.float32) if value is None else value
    return numpy_helper.from_array(arr, name)


def make_model(nodes, inputs, outputs, inits=(), opset=18, domains=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="test")
    model.ir_version = 10
    return model


def matmul_model(x_shape=("rows", 4), opset=18) -> onnx.ModelProto:
    """y[rows, 3] = x[rows, 4] @ w[4, 3]"""
    return make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("rows", 3))], [_weight("w")], opset)


def mm_spec(x_dtype="float32", x_axes=("rows", 4), extra_inputs=()) -> GraphSpec:
    inputs = (TensorSpec("x", x_dtype, x_axes),) + tuple(extra_inputs)
    return GraphSpec("mm", inputs, (TensorSpec("y", "float32", ("rows", 3)),), (Profile("p", (Dim("rows", 1, 2, 8),)),))


def if_model() -> onnx.ModelProto:
    def branch(name, value):
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ("rows", 3))
        node = helper.make_node("Add", ["y0", f"{name}_c"], [f"{name}_out"], name=f"{name}_add")
        c = numpy_helper.from_array(np.full((3,), value, np.float32), f"{name}_c")
        return helper.make_graph([node], name, [], [out], [c])

    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y0"], name="mm"),
             helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch("then", 1.0),
                              else_branch=branch("else", 2.0))]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("rows", 4))],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("rows", 3))], [_weight("w"), cond])


def codes(findings: list[Finding], severity: str | None = None) -> list[str]:
    return [f.code for f in findings if severity is None or f.severity == severity]


def test_clean_model_has_no_findings():
    assert lint_model(matmul_model(), mm_spec(), export_sizes={"rows": 2}) == []


def test_if_node_is_an_error_in_hot_graphs_and_named():
    found = [f for f in lint_model(if_model()) if f.code == "control-flow"]
    assert [(f.severity, f.node) for f in found] == [("error", "choose")]
    assert codes(lint_model(if_model(), hot=False), "error") == []


def test_old_opset_is_an_error():
    assert codes(lint_model(matmul_model(opset=16)), "error") == ["opset"]
    assert "opset" not in codes(lint_model(matmul_model(opset=17)))


def test_input_without_shape_or_with_an_unknown_axis_warns():
    m = matmul_model()
    m.graph.input[0].type.tensor_type.ClearField("shape")
    assert [(f.code, f.node, f.severity) for f in lint_model(m) if f.code.startswith("io-")] == \
        [("io-no-shape", "x", "warning")]
    m = matmul_model(x_shape=(None, 4))
    found = [f for f in lint_model(m) if f.code == "io-unknown-dim"]
    assert [f.node for f in found] == ["x"] and "[0]" in found[0].message


def test_dim_fixed_to_one_where_spec_is_dynamic_is_an_error():
    found = lint_model(matmul_model(x_shape=(1, 4)), mm_spec())
    assert [(f.code, f.node, f.severity) for f in found] == [("dim-specialized", "x", "error")]
    assert "dim specialized at export" in found[0].message


def test_export_size_zero_or_one_is_an_error():
    found = lint_model(matmul_model(), export_sizes={"rows": 1, "seq": 0, "past": 5})
    assert [(f.code, f.node, f.severity) for f in found] == [("export-size", "rows", "error"),
                                                             ("export-size", "seq", "error")]


def test_spec_names_ranks_dtypes_must_match():
    extra = (TensorSpec("ids", "int64", ("rows",)),)
    assert [(f.code, f.node) for f in lint_model(matmul_model(), mm_spec(extra_inputs=extra))] == [("io-name", "ids")]
    assert codes(lint_model(matmul_model(), mm_spec(x_axes=("rows", 4, 1)))) == ["io-rank"]
    assert codes(lint_model(matmul_model(), mm_spec(x_axes=("rows", 5)))) == ["io-shape"]
    assert codes(lint_model(matmul_model(), mm_spec(x_dtype="float16"))) == ["io-dtype"]


def test_int64_input_in_spec_is_a_warning():
    m = make_model([helper.make_node("Gather", ["table", "ids"], ["y"], name="embed")],
                   [helper.make_tensor_value_info("ids", TensorProto.INT64, ("rows",))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("rows", 3))], [_weight("table", (10, 3))])
    spec = GraphSpec("e", (TensorSpec("ids", "int64", ("rows",)),), (TensorSpec("y", "float32", ("rows", 3)),), ())
    found = lint_model(m, spec)
    assert [(f.severity, f.code, f.node) for f in found] == [("warning", "int64-input", "ids")]
    assert "int32" in found[0].message
    assert lint_model(m) == []


def two_matmuls(w_in: np.ndarray, w_out: np.ndarray) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["h"], name="mm0"),
             helper.make_node("MatMul", ["h", "w_out"], ["y"], name="mm1")]
    return make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("rows", 64))],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("rows", 64))],
                      [_weight("w_in", value=w_in), _weight("w_out", value=w_out)])


def test_duplicate_initializers_warn_naming_both():
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    found = lint_model(two_matmuls(w, w.copy()))
    assert [(f.severity, f.code) for f in found] == [("warning", "duplicate-initializer")]
    assert "w_in" in found[0].message and "w_out" in found[0].message
    late = w.copy()
    late[-1, -1] += 1   # same 4 KiB prefix, different bytes: the full hash must tell them apart
    assert lint_model(two_matmuls(w, late)) == []


def test_duplicates_in_external_data_and_missing_data_files(tmp_path):
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    path = tmp_path / "tied.onnx"
    onnx.save(two_matmuls(w, w.copy()), path, save_as_external_data=True, location="tied.data", size_threshold=0)
    assert codes(lint_model(path)) == ["duplicate-initializer"]
    (tmp_path / "tied.data").unlink()
    assert [(f.severity, f.code, f.node) for f in lint_model(path)] == [("error", "external-data", "tied.data")]


def test_cast_to_int64_feeding_matmul_is_an_error():
    nodes = [helper.make_node("Cast", ["x"], ["xi"], name="to_i64", to=TensorProto.INT64),
             helper.make_node("MatMul", ["xi", "wi"], ["y"], name="mm")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("rows", 4))],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, ("rows", 3))],
                   [numpy_helper.from_array(np.ones((4, 3), np.int64), "wi")])
    found = [f for f in lint_model(m) if f.severity == "error"]
    assert [(f.code, f.node) for f in found] == [("int64-compute", "to_i64")]


def test_intermediate_without_shape_warns_with_count_and_names():
    nodes = [helper.make_node("Foo", ["x"], ["x2"], name="foo_node", domain="com.example"),
             helper.make_node("MatMul", ["x2", "w"], ["y"], name="mm")]
    m = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("rows", 4))],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ("rows", 3))], [_weight("w")],
                   domains=["com.example"])
    found = lint_model(m)
    assert [(f.code, f.severity) for f in found] == [("no-shape", "warning")]
    assert found[0].message.startswith("1 intermediate") and "x2" in found[0].message


def test_path_with_external_data_is_linted_without_reading_it(tmp_path):
    m = matmul_model()
    m.graph.initializer[0].CopyFrom(_weight("w", (4, 3)))
    path = tmp_path / "mm.onnx"
    onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="mm.data",
              size_threshold=0)
    assert lint_model(path) == []
    info = inspect_dict(path)
    assert info["external_data"] == ["mm.data"]
    assert (info["initializers"], info["parameters"], info["parameter_bytes"]) == (1, 12, 48)
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["rows", 4]}]
    assert info["ops"] == [("MatMul", 1)]
    text = inspect_text(path)
    assert "MatMul" in text and "[rows, 4]" in text and "48 B" in text and "no findings" in text


def test_load_model_rejects_missing_and_non_onnx_files(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(tmp_path / "absent.onnx")
    for i, junk in enumerate((b"hello world\n", b"")):
        (tmp_path / f"junk{i}.onnx").write_bytes(junk)
        with pytest.raises(UserError, match="not an ONNX model"):
            load_model(tmp_path / f"junk{i}.onnx")


# --- TensorRT-RTX parser (no GPU needed) ---

def _saved(tmp_path, model, name) -> str:
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def test_trt_parse_clean_model_reports_io(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from nextstep_trt.export.trt_check import trt_parse

    result = trt_parse(_saved(tmp_path, matmul_model(), "mm.onnx"))
    assert result.ok and result.errors == [] and result.num_layers >= 1
    assert result.inputs == [("x", "float32", (-1, 4))]
    assert result.outputs == [("y", "float32", (-1, 3))]


def test_trt_parse_names_the_failing_node(tmp_path):
    pytest.importorskip("tensorrt_rtx")
    from nextstep_trt.export.trt_check import trt_parse

    foo = make_model([helper.make_node("Foo", ["x"], ["x2"], name="foo_node", domain="com.example"),
                      helper.make_node("MatMul", ["x2", "w"], ["y"], name="mm")],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4))],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, (2, 3))], [_weight("w")],
                     domains=["com.example"])
    result = trt_parse(_saved(tmp_path, foo, "foo.onnx"))
    assert not result.ok and [e[0] for e in result.errors] == ["foo_node"]
    assert "Foo" in result.errors[0][1]

    shape = numpy_helper.from_array(np.array([5, 7], np.int64), "shape")
    bad = make_model([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                      helper.make_node("Reshape", ["h", "shape"], ["y"], name="bad_reshape")],
                     [helper.make_tensor_value_info("x", TensorProto.FLOAT, (2, 4))],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [_weight("w"), shape])
    result = trt_parse(_saved(tmp_path, bad, "bad.onnx"))
    assert not result.ok and [e[0] for e in result.errors] == ["bad_reshape"]
    assert "volume" in result.errors[0][1] and "cudaError" not in result.errors[0][1]
