"""`nextstep-trt inspect`: exit codes 0/1/2, one-line errors, JSON, manifest specs and the TensorRT-RTX parse."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.cli import main
from nextstep_trt.export.spec import Dim, GraphSpec, Profile, TensorSpec


def _model(x_shape=("rows", 4), control_flow=False, custom_op=False, dtype=np.float32) -> onnx.ModelProto:
    """y[rows, 3] = x[rows, 4] @ w[4, 3], optionally behind an If or a custom-domain op."""
    w = numpy_helper.from_array(np.arange(12, dtype=dtype).reshape(4, 3), "w")
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, inits, first = [], [w], "x"
    if custom_op:
        nodes.append(helper.make_node("Foo", ["x"], ["x2"], name="foo_node", domain="com.example"))
        first = "x2"
    nodes.append(helper.make_node("MatMul", [first, "w"], ["y0" if control_flow else "y"], name="mm"))
    if control_flow:
        def branch(name):
            out = helper.make_tensor_value_info(f"{name}_y", TensorProto.FLOAT, ("rows", 3))
            return helper.make_graph([helper.make_node("Identity", ["y0"], [f"{name}_y"])], name, [], [out])

        inits.append(numpy_helper.from_array(np.array(True), "cond"))
        nodes.append(helper.make_node("If", ["cond"], ["y"], name="choose", then_branch=branch("a"),
                                      else_branch=branch("b")))
    graph = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", elem, x_shape)],
                              [helper.make_tensor_value_info("y", elem, ("rows", 3))], inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    return model


def _save(tmp_path, model, name="mm.onnx") -> str:
    path = tmp_path / name
    onnx.save(model, path)
    return str(path)


def _manifest(tmp_path, export_sizes=None, precisions=None) -> str:
    spec = GraphSpec("mm", (TensorSpec("x", "float32", ("rows", 4)),), (TensorSpec("y", "float32", ("rows", 3)),),
                     (Profile("p", (Dim("rows", 1, 2, 8),)),))
    entry = {"spec": spec.to_dict(), "precisions": precisions or {}}
    entry |= {"export_sizes": export_sizes} if export_sizes else {}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"graphs": {"mm": entry}}))
    return str(path)


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_clean_model_exits_0_with_tables(tmp_path, capsys):
    assert main(["inspect", _save(tmp_path, _model())]) == 0
    out = capsys.readouterr().out
    for text in ("opset 18", "MatMul", "[rows, 4]", "float32", "48 B", "no findings"):
        assert text in out


def test_json_output(tmp_path, capsys):
    assert main(["inspect", _save(tmp_path, _model()), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["findings"] == [] and info["nodes"] == 1 and info["ops"] == [["MatMul", 1]]
    assert info["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["rows", 3]}]


def test_lint_error_exits_1_and_names_the_node(tmp_path, capsys):
    assert main(["inspect", _save(tmp_path, _model(control_flow=True))]) == 1
    captured = capsys.readouterr()
    assert "choose" in captured.out and "control-flow" in captured.out
    assert "lint error" in _one_line(captured.err)


@pytest.mark.parametrize("content", [None, b"not onnx at all\n", b""])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, content):
    path = tmp_path / "x.onnx"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("nextstep-trt inspect: error:")
    assert ("no such file" if content is None else "not an ONNX model") in line


def test_manifest_spec_catches_a_specialized_dim(tmp_path, capsys):
    manifest = _manifest(tmp_path)
    assert main(["inspect", _save(tmp_path, _model()), "--manifest", manifest, "--graph", "mm"]) == 0
    fixed = _save(tmp_path, _model(x_shape=(1, 4)), "fixed.onnx")
    capsys.readouterr()
    assert main(["inspect", fixed, "--manifest", manifest, "--graph", "mm", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [(f["code"], f["node"]) for f in findings] == [("dim-specialized", "x")]


def test_manifest_precision_file_takes_its_io_dtypes(tmp_path, capsys):
    fp16 = _save(tmp_path, _model(dtype=np.float16), "mm_fp16.onnx")
    plain = _manifest(tmp_path)
    assert main(["inspect", fp16, "--manifest", plain, "--graph", "mm"]) == 1
    assert "io-dtype" in capsys.readouterr().out
    listed = _manifest(tmp_path, precisions={"fp16": {"file": "mm_fp16.onnx",
                                                      "io_dtypes": {"x": "float16", "y": "float16"}}})
    assert main(["inspect", fp16, "--manifest", listed, "--graph", "mm"]) == 0


def test_manifest_export_sizes_are_linted(tmp_path, capsys):
    manifest = _manifest(tmp_path, export_sizes={"rows": 1})
    assert main(["inspect", _save(tmp_path, _model()), "--manifest", manifest, "--graph", "mm"]) == 1
    assert "export-size" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [(["--graph", "nope"], "no graph 'nope'"), ([], "needs --graph")])
def test_bad_manifest_use_exits_2(tmp_path, capsys, extra, message):
    args = ["inspect", _save(tmp_path, _model()), "--manifest", _manifest(tmp_path)] + extra
    assert main(args) == 2
    assert message in _one_line(capsys.readouterr().err)


def test_trt_parse_ok_and_failure_naming_the_node(tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    assert main(["inspect", _save(tmp_path, _model()), "--trt-parse"]) == 0
    assert "tensorrt-rtx parse: ok" in capsys.readouterr().out
    foo = _save(tmp_path, _model(custom_op=True), "foo.onnx")
    assert main(["inspect", foo, "--trt-parse", "--json"]) == 1
    captured = capsys.readouterr()
    parsed = json.loads(captured.out)["trt_parse"]
    assert parsed["ok"] is False and parsed["errors"][0][0] == "foo_node"
    assert "foo_node" in _one_line(captured.err)
