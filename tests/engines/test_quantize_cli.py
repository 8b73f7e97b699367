"""`nextstep-trt quantize`: what it records, that a failing graph never replaces a good one, the exclusion list as
data, and bad input as one line with exit 2."""
import hashlib
import json

import onnx
import pytest

from nextstep_trt.cli import main
from nextstep_trt.core.metrics import Bound
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


@pytest.fixture()
def art(tiny_artifacts, tmp_path):
    import shutil

    out = tmp_path / "art"
    shutil.copytree(tiny_artifacts[0], out)
    return out


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fp8_head_step_is_recorded_and_a_failing_graph_never_replaces_it(capsys, art, tiny_dir, tmp_path,
                                                                         monkeypatch):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my prompts\na red fox in the snow\n\na paper boat on a pond\n")
    code, out, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp8",
                          "--graphs", "head_step", "--calib", prompts)
    assert code == 0, err
    entry = Manifest.load(art).entry("head_step", Precision.FP8)
    recipe = entry["recipe"]
    assert entry["file"] == "fp8/head_step.onnx" and entry["validated"] and entry["validation"]["ok"]
    assert entry["opset"] >= 19 and "io_dtypes" not in entry
    assert recipe["calibration"]["prompts"] == 10 and recipe["calibration"]["samples"] > 100
    assert len(recipe["quantized"]) == 5 and len(recipe["kept_high_precision"]) == 7
    assert all(q["amax"] > 0 for q in recipe["quantized"])
    good, manifest_before = _sha(art / "fp8" / "head_step.onnx"), (art / "manifest.json").read_text()

    from nextstep_trt.core import tolerances

    monkeypatch.setitem(tolerances.GRAPH_BOUNDS, ("head_step", Precision.FP8), Bound(rel_l2=1e-9))
    code, out, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp8",
                          "--graphs", "head_step")
    assert code == 1 and len(err.splitlines()) == 1 and "rel_l2" in err and "untouched" in err
    assert _sha(art / "fp8" / "head_step.onnx") == good and (art / "manifest.json").read_text() == manifest_before
    assert not [p for p in art.iterdir() if p.name.startswith(".export-")]

    # A failing graph does not stop the others: head_sampler is made and installed, the command still exits 1.
    code, out, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp8",
                          "--graphs", "head_step,head_sampler")
    assert code == 1 and "1 of 2 fp8 graphs failed validation" in err and "head_step failed validation" in err
    assert "head_step [fp8]: NOT installed" in out and "head_sampler [fp8]: " in out
    assert Manifest.load(art).entry("head_sampler", Precision.FP8)["validation"]["ok"]
    assert _sha(art / "fp8" / "head_step.onnx") == good


def test_the_exclusion_list_is_data(capsys, art, tiny_dir):
    code, _, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp8",
                        "--graphs", "head_step", "--exclude", "image_head.net.res_blocks.*", "--no-validate")
    assert code == 0, err
    recipe = Manifest.load(art).entry("head_step", Precision.FP8)["recipe"]
    assert recipe["exclude"] == ["image_head.net.res_blocks.*"]
    # input_proj, cond/time embeddings and the final layer are no longer excluded; the res blocks are
    assert {q["param"].removeprefix("image_head.net.") for q in recipe["quantized"]} == {
        "input_proj.weight", "cond_embed.weight", "time_embed.mlp.0.weight", "time_embed.mlp.2.weight",
        "final_layer.linear.weight", "final_layer.adaLN_modulation.1.weight"}
    model = onnx.load(art / "fp8" / "head_step.onnx")
    # one activation Q each: cond, x, the timestep sinusoid, its SiLU, the shared SiLU(y) of the final adaLN, h
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == 6


@pytest.mark.parametrize("argv,message", [
    (["--precision", "int3"], "unknown precision 'int3'"),
    (["--precision", "fp32"], "quantize makes fp16, bf16, fp8, int8 or int4"),
    (["--precision", "int4", "--graphs", "vae_encoder"], "vae_encoder stays bf16/fp32"),
    (["--precision", "int4", "--block-size", "48"], "--block-size 48 is not one of 16, 32, 64, 128, 256"),
    (["--precision", "fp8", "--block-size", "32"], "--block-size applies to --precision int8 or int4 only"),
    (["--precision", "fp8", "--method", "awq"], "--method applies to --precision int8 or int4 only"),
    (["--precision", "fp16", "--sensitivity"], "--sensitivity applies to --precision int8 or int4 only"),
    (["--precision", "fp8", "--graphs", "vae_decoder"], "vae_decoder stays bf16/fp32"),
    (["--precision", "fp16", "--graphs", "decoder"], "has no decoder graph"),
    (["--precision", "bf16", "--overflow-report"], "--overflow-report goes with --precision fp16"),
    (["--precision", "fp16", "--exclude", "lm_head.*"], "--exclude applies to --precision fp8, int8 or int4 only"),
    (["--precision", "fp8", "--calib", "/nonexistent/prompts.txt"], "cannot read calibration prompts"),
    (["--precision", "int4", "--block-size", "0"], "--block-size 0 is not one of 16, 32, 64, 128, 256"),
    # an --exclude glob that matches no parameter (a typo would quantize what was meant to stay) names itself only
    (["--precision", "int8", "--exclude", "layers.*.q_proj,lm_head.*"],
     "--exclude 'layers.*.q_proj' match(es) no parameter of the model"),
    (["--precision", "fp8", "--exclude", "Embed_tokens.*"], "--exclude 'Embed_tokens.*' match(es) no parameter"),
    (["--precision", "int4", "--sensitivity", "--exclude", "image_head.net.res_block.*"],
     "--exclude 'image_head.net.res_block.*' match(es) no parameter"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, art, tiny_dir, argv, message):
    code, _, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, *argv)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_missing_fp32_graph_is_exit_2(capsys, art, tiny_dir):
    (art / "fp32" / "head_step.onnx").unlink()
    code, _, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp16")
    assert code == 2 and "head_step.onnx is named in the manifest but missing" in err and len(err.splitlines()) == 1


def test_verify_without_precision_graphs_is_exit_2(capsys, art, tiny_dir):
    code, _, err = _run(capsys, "verify", "--model", tiny_dir, "--artifacts", art, "--precision", "bf16")
    assert code == 2 and "no bf16 graph" in err and "quantize --precision bf16" in err
    code, _, err = _run(capsys, "verify", "--model", tiny_dir, "--artifacts", art, "--mark-intermediates",
                        "--levels", "1")
    assert code == 2 and "--mark-intermediates compares a precision graph" in err


def test_overflow_report_is_written_as_json(capsys, art, tiny_dir):
    code, out, err = _run(capsys, "quantize", "--model", tiny_dir, "--artifacts", art, "--precision", "fp16",
                          "--graphs", "head_step", "--overflow-report", "--no-validate")
    assert code == 0, err
    data = json.loads((art / "fp16" / "overflow_report.json").read_text())
    assert data["reports"][0]["graph"] == "head_step" and data["reports"][0]["overflowing_fp16"] == []
    assert "FP16-vs-BF16" in out and "CPU fp16 numerics are not GPU fp16 numerics" in out
