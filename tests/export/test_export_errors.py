"""Bad input to `nextstep-trt export`: one line on stderr, exit 2, and a good graph is never replaced by a bad one."""
import hashlib
import shutil

import pytest

from nextstep_trt.cli import main

SMALL = ["--resolutions", "32x32", "--steps", "2", "--max-text-tokens", "8", "--max-batch", "2"]


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_graph(capsys, tiny_dir, tmp_path):
    code, err = _run(capsys, "export", "--model", str(tiny_dir), "--out", str(tmp_path / "a"), "--graphs", "decoder")
    assert code == 2 and "unknown graph(s) decoder" in err and len(err.splitlines()) == 1


def test_profile_max_below_min(capsys, tiny_dir, tmp_path):
    code, err = _run(capsys, "export", "--model", str(tiny_dir), "--out", str(tmp_path / "a"),
                     "--max-batch", "1", "--opt-batch", "2")
    assert code == 2 and "opt batch" in err


def test_model_folder_that_fails_to_load(capsys, tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    (broken / "vae" / "checkpoint.pt").unlink()
    code, err = _run(capsys, "export", "--model", str(broken), "--out", str(tmp_path / "a"))
    assert code == 2 and "checkpoint.pt" in err and "Traceback" not in err


def test_output_folder_not_writable(capsys, tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _run(capsys, "export", "--model", str(tiny_dir), "--out", str(blocker / "art"), *SMALL,
                     "--graphs", "head_step")
    assert code == 2 and "not writable" in err


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_validation_keeps_the_good_graph(capsys, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "art"
    assert _run(capsys, "export", "--model", str(tiny_dir), "--out", str(out), *SMALL, "--graphs", "head_step")[0] == 0
    good, manifest = _sha(out / "fp32" / "head_step.onnx"), (out / "manifest.json").read_text()

    from nextstep_trt.core import tolerances
    from nextstep_trt.core.metrics import Bound
    from nextstep_trt.core.precision import Precision

    monkeypatch.setitem(tolerances.GRAPH_BOUNDS, ("head_step", Precision.FP32), Bound(rel_l2=0.0))
    code, err = _run(capsys, "export", "--model", str(tiny_dir), "--out", str(out), *SMALL, "--graphs", "head_step")
    assert code == 1 and "head_step failed validation" in err and "rel_l2" in err
    assert _sha(out / "fp32" / "head_step.onnx") == good
    assert (out / "manifest.json").read_text() == manifest
    assert not [p for p in out.iterdir() if p.name.startswith(".export-")], "scratch folder left behind"


@pytest.mark.parametrize("flag", ["--external-data"])
def test_external_data_on_request(capsys, tiny_dir, tmp_path, flag):
    out = tmp_path / "art"
    assert _run(capsys, "export", "--model", str(tiny_dir), "--out", str(out), *SMALL, "--graphs", "head_step",
                flag)[0] == 0
    assert (out / "fp32" / "head_step.onnx.data").is_file()
    assert (out / "fp32" / "head_step.onnx").stat().st_size < 20_000


def test_single_resolution_exports_static_vae_dims(capsys, tiny_dir, tmp_path):
    """One resolution (the default profile has only 512x512) gives min == max dims: exported static, not refused."""
    import onnx

    out = tmp_path / "art"
    code = main(["export", "--model", str(tiny_dir), "--out", str(out), "--resolutions", "64x64", "--steps", "2",
                 "--max-text-tokens", "8", "--max-batch", "2", "--graphs", "vae_decoder"])
    assert code == 0, capsys.readouterr().err
    dims = onnx.load(out / "fp32" / "vae_decoder.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 4, 8, 8]
