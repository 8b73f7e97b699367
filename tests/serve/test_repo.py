"""triton-repo: a well-formed Triton model repository whose model.py runs the loop (fake pb_utils, ONNX Runtime)."""
import importlib.util
import json
import sys
import types

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc", reason="serving extra not installed: pip install 'nextstep-trt[serve]'")

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from nextstep_trt.cli import main
from nextstep_trt.serve.limits import INPUTS

TYPES = {"STRING": "TYPE_STRING", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32",
         "UINT8": "TYPE_UINT8"}


@pytest.fixture(scope="module")
def repo(tiny_artifacts, tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("repo") / "models"
    argv = ["triton-repo", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0]), "--out", str(out),
            "--max-batch", "2", "--max-queue-delay-ms", "25", "--threads", "1"]
    assert main(argv) == 0
    return out


def parse_config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_configs_parse_and_declare_the_tensors(repo, tiny_artifacts):
    assert sorted(p.name for p in repo.iterdir()) == ["nextstep_edit", "nextstep_t2i"]
    for name in ("nextstep_t2i", "nextstep_edit"):
        cfg = parse_config(repo / name / "config.pbtxt")
        assert cfg.name == name and cfg.backend == "python" and cfg.max_batch_size == 2
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 25000
        assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in cfg.instance_group] == \
            [(1, "KIND_CPU")]
        got = [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims), i.optional) for i in cfg.input]
        assert got == [(t.name, TYPES[t.dtype], list(t.dims), t.optional) for t in INPUTS[name]]
        assert [(o.name, list(o.dims)) for o in cfg.output] == [("image", [-1, -1, 3])]
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["backend"] == "onnxruntime" and params["threads"] == "1"
        assert (repo / name / params["artifacts"] / "manifest.json").is_file()
        assert (repo / name / params["model_dir"] / "tokenizer.json").is_file()
        assert "import TritonPythonModel" in (repo / name / "1" / "model.py").read_text()
    # hard links: the graphs are not stored twice
    src = tiny_artifacts[0] / "fp32" / "backbone.onnx"
    assert (repo / "nextstep_t2i/assets/artifacts/fp32/backbone.onnx").stat().st_ino == src.stat().st_ino


def test_refuses_to_replace_a_folder_that_is_not_a_repo(tiny_artifacts, tiny_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    argv = ["triton-repo", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0]), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "is not a nextstep-trt model repository" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def fake_pb_utils():
    """The parts of triton_python_backend_utils the model uses."""
    pb = types.ModuleType("triton_python_backend_utils")

    class TritonError(Exception):
        INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

        def __init__(self, message, code=None):
            super().__init__(message)
            self.code = code

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    pb.TritonError, pb.Tensor, pb.InferenceResponse = TritonError, Tensor, InferenceResponse
    pb.get_input_tensor_by_name = lambda request, name: Tensor(name, request[name]) if name in request else None
    pb.Logger = types.SimpleNamespace(log_info=lambda text: None, log_verbose=lambda text: None)
    return pb


def test_model_py_executes_with_fake_pb_utils(repo, monkeypatch, tiny_artifacts, tiny_dir):
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.runtime.api import model_tokenizer, open_backend
    from nextstep_trt.runtime.loop import Request, run_request

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils())
    spec = importlib.util.spec_from_file_location("nextstep_t2i_model", repo / "nextstep_t2i" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(parse_config(repo / "nextstep_t2i" / "config.pbtxt"),
                                       preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(repo / "nextstep_t2i"),
                      "model_name": "nextstep_t2i"})
    good = {"prompt": np.array([[b"a red fox"]], dtype=object), "seed": np.array([[11]], np.int64),
            "height": np.array([[48]], np.int32), "width": np.array([[32]], np.int32)}
    bad = dict(good, height=np.array([[40]], np.int32))
    try:
        responses = model.execute([good, bad])
    finally:
        model.finalize()
    assert responses[0].error is None and responses[1].output_tensors == []
    assert responses[1].error.code == "INVALID_ARG" and "multiple of 16" in str(responses[1].error)
    with open_backend("onnxruntime", tiny_dir, tiny_artifacts[0]) as backend:
        want = run_request(backend, model_tokenizer(tiny_dir, backend.config),
                           Request(["a red fox"], GenerationOptions(height=48, width=32, steps=3), seeds=[11]))
    assert np.array_equal(responses[0].output_tensors[0].as_numpy(), want)


def test_serving_modules_import_without_torch(tiny_artifacts, tiny_dir, tmp_path):
    """Edge servers run without torch: the model, the handler and triton-repo never import it."""
    import subprocess

    code = ("import sys; sys.modules['torch'] = None\n"
            "import nextstep_trt.serve.triton_model, nextstep_trt.serve.handler, nextstep_trt.serve.client, nextstep_trt.serve.server\n"
            "from nextstep_trt.cli import main\n"
            f"sys.exit(main(['triton-repo', '--model', {str(tiny_dir)!r}, '--artifacts', "
            f"{str(tiny_artifacts[0])!r}, '--out', {str(tmp_path / 'repo')!r}, '--no-edit']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["nextstep_t2i"]
