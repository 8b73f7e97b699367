"""`doctor` prints its sections and exits 0; `build` turns bad input into one line and exit 2, previous engine kept."""
import errno
import hashlib
import json

import onnx
import pytest
from engine_helpers import build, copy_artifacts, listing, needs_rtx

from nextstep_trt.cli import main


def test_doctor_prints_every_section(capsys, tiny_artifacts):
    assert main(["doctor", "--artifacts", str(tiny_artifacts[0]), "--graphs", "backbone,vae_decoder"]) == 0
    out = capsys.readouterr().out
    titles = [ln[:-1] for ln in out.splitlines() if not ln.startswith(" ")]
    assert titles[:3] == ["software", "gpu", "host"] and titles[-1] == "what works here"
    assert any(t.startswith("build estimate") for t in titles)
    for label in ("python", "torch", "onnxruntime", "tensorrt", "tensorrt-rtx", "driver / CUDA", "GPU",
                  "free host memory", "free disk at", "backbone fp32", "vae_decoder fp32", "run engines"):
        assert f"  {label}" in out, label
    assert "head_step fp32" not in out                     # only the requested graphs are estimated


def test_doctor_says_plainly_what_works_here(capsys):
    from nextstep_trt.core.gpu import probe_gpu

    assert main(["doctor", "--json"]) == 0
    sections = {s["title"]: {r["label"]: r["value"] for r in s["rows"]} for s in json.loads(capsys.readouterr().out)}
    verdict = sections["what works here"]
    try:
        import tensorrt_rtx

        assert sections["software"]["tensorrt-rtx"] == tensorrt_rtx.__version__
        assert "8.9" in verdict["build with TensorRT-RTX (ahead of time, no GPU)"]
    except ImportError:
        assert sections["software"]["tensorrt-rtx"].startswith("missing")
    if probe_gpu().gpu is None:
        assert verdict["run engines (TensorRT backend)"] == "no: no GPU"
        assert sections["gpu"]["GPU"].startswith("none")


def test_doctor_sections_can_be_extended():
    """Another module appends a section (e.g. model estimates); the report prints it like the others."""
    from nextstep_trt.engines.doctor import Section, doctor_report, format_report

    sections = doctor_report() + [Section("model estimates").add("weights", "1.0 GiB")]
    assert format_report(sections).splitlines()[-2:] == ["model estimates:", "  " + "weights".ljust(
        max(len(label) for s in sections for label, _ in s.rows)) + "  1.0 GiB"]


@pytest.fixture
def art(tiny_artifacts, tmp_path):
    needs_rtx()
    return copy_artifacts(tiny_artifacts[0], tmp_path / "art")


def _fails(capsys, argv, match):
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nextstep-trt build: error: ") and match in lines[0], lines
    assert captured.out == ""


def _argv(art, *extra):
    return ["build", "--artifacts", str(art), "--precision", "fp32", "--flavor", "tensorrt-rtx",
            "--compute-capability", "8.9", *extra]


def test_build_bad_input_is_one_line_and_exit_2(capsys, art, monkeypatch):
    fp8 = _argv(art)
    fp8[fp8.index("fp32")], fp8[fp8.index("8.9")] = "fp8", "8.6"
    _fails(capsys, fp8, "fp8 engines need compute capability 8.9 or newer")
    _fails(capsys, _argv(art, "--graphs", "nope"), "has no nope graph")
    _fails(capsys, _argv(art, "--compute-capability", "9.0"), "cannot target compute capability 9.0")
    (art / "fp32" / "vae_encoder.onnx").unlink()
    _fails(capsys, _argv(art, "--graphs", "vae_encoder"), "vae_encoder.onnx is named in the manifest but missing")


def test_build_errors_keep_the_previous_engine(capsys, art, monkeypatch):
    import nextstep_trt.engines.cache as cache

    rec = build(art, "head_step")
    before, plan = listing(rec.folder.parent), (rec.folder / "engine.plan").read_bytes()
    monkeypatch.setattr(cache, "_write", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    _fails(capsys, _argv(art, "--graphs", "head_step", "--force"), "out of disk")
    monkeypatch.undo()
    path = art / "fp32" / "head_step.onnx"
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "Gemm")
    node.op_type = "NoSuchOp"
    onnx.save(model, path)
    _fails(capsys, _argv(art, "--graphs", "head_step"), f"refusing {path}: its bytes differ")   # not as validated
    manifest = json.loads((art / "manifest.json").read_text())
    entry = manifest["graphs"]["head_step"]["precisions"]["fp32"]
    entry["sha256"] = entry["hashes"]["fp32/head_step.onnx"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (art / "manifest.json").write_text(json.dumps(manifest))       # recorded so: only TensorRT can refuse it now
    _fails(capsys, _argv(art, "--graphs", "head_step"), f"cannot parse {path}: {node.name}: NoSuchOp")
    assert listing(rec.folder.parent) == before and (rec.folder / "engine.plan").read_bytes() == plan
