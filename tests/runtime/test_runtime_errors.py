"""Bad input to the runtime: one line, exit 2, no partial output files."""
import shutil

import numpy as np
import pytest

from nextstep_trt.cli import main
from nextstep_trt.core.errors import NonFinite, UserError


def _gen(art, model, out, *extra):
    return ["generate", "--backend", "onnxruntime", "--model", str(model), "--artifacts", str(art), "--prompt",
            "a cat", "--height", "32", "--width", "32", "--steps", "3", "--quiet", "--out", str(out), *extra]


def _check(capsys, argv, code, text, out=None):
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    if out is not None:
        assert not out.exists() and not out.with_suffix(".json").exists()


def test_artifacts_from_another_model(capsys, tiny_artifacts, tmp_path):
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder
    from nextstep_trt.ref.config import tiny

    other = tmp_path / "other"
    cfg = tiny()
    import dataclasses

    cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, rope_theta=10000.0))
    save_model_folder(other, cfg, *init_random(cfg, 1))
    out = tmp_path / "x.png"
    _check(capsys, _gen(tiny_artifacts[0], other, out), 2, "exported from another model", out)


def test_missing_graph(capsys, tiny_artifacts, tiny_dir, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts[0], art)
    (art / "fp32" / "vae_decoder.onnx").unlink()
    out = tmp_path / "x.png"
    _check(capsys, _gen(art, tiny_dir, out), 2, "vae_decoder.onnx is named in the manifest but missing", out)


def test_not_an_artifacts_folder(capsys, tiny_dir, tmp_path):
    _check(capsys, _gen(tmp_path, tiny_dir, tmp_path / "x.png"), 2, "no manifest.json")


def test_size_outside_profile(capsys, tiny_artifacts, tiny_dir, tmp_path):
    out = tmp_path / "x.png"
    argv = _gen(tiny_artifacts[0], tiny_dir, out)
    argv[argv.index("--height") + 1] = "128"
    _check(capsys, argv, 2, "height 128 is outside the exported profile", out)


def test_prompt_over_the_profile_budget(capsys, tiny_artifacts, tiny_dir, tmp_path):
    out = tmp_path / "x.png"
    argv = _gen(tiny_artifacts[0], tiny_dir, out)
    argv[argv.index("--prompt") + 1] = "word " * 200
    _check(capsys, argv, 2, "over the budget", out)


def test_tensorrt_backend_without_tensorrt(capsys, tiny_artifacts, tiny_dir, tmp_path):
    pytest.importorskip("nextstep_trt.runtime.trt_backend", reason="the TensorRT backend module is not present yet")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    out = tmp_path / "x.png"
    argv = _gen(tiny_artifacts[0], tiny_dir, out)
    argv[argv.index("onnxruntime")] = "tensorrt"
    _check(capsys, argv, 2, "tensorrt", out)


def test_nan_stops_and_names_the_step(tiny_artifacts, tiny_bundle):
    from nextstep_trt.ref.options import GenerationOptions
    from nextstep_trt.runtime.loop import Request, run_request
    from nextstep_trt.runtime.ort_backend import OrtBackend

    class Diverging(OrtBackend):
        calls = 0

        def sample(self, *args):
            self.calls += 1
            token = super().sample(*args)
            return token * np.nan if self.calls == 3 else token

    with Diverging(tiny_artifacts[0]) as backend, pytest.raises(NonFinite, match="NaN/Inf value.*sampler.token at token 2"):
        run_request(backend, tiny_bundle.tokenizer, Request(["x"], GenerationOptions(height=32, width=32, steps=3)))
