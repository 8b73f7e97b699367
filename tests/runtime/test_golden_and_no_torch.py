"""Record goldens with torch; verify engines against them, and generate images, with torch unavailable."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from nextstep_trt.cli import main

pytestmark = pytest.mark.slow(seconds=60)      # idle seconds, roughly: scheduled first (tests/conftest.py)

NO_TORCH = "import sys; sys.modules['torch'] = None\nfrom nextstep_trt.cli import main\nsys.exit(main({argv!r}))"


def run_without_torch(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH.format(argv=argv)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def golden(tiny_artifacts, tiny_dir, tmp_path_factory):
    art, _ = tiny_artifacts
    out = tmp_path_factory.mktemp("golden") / "g"
    assert main(["record", "--model", str(tiny_dir), "--artifacts", str(art), "--out", str(out)]) == 0
    return out


def test_verify_against_golden_without_torch(golden, tiny_artifacts, tmp_path):
    art, _ = tiny_artifacts
    report = tmp_path / "r.json"
    proc = run_without_torch(["verify", "--golden", str(golden), "--artifacts", str(art), "--report", str(report)])
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data["ok"] and {r["level"] for r in data["rows"]} == {1, 2, 3}


def test_tampered_golden_fails_with_exit_1(golden, tiny_artifacts, tmp_path, capsys):
    art, _ = tiny_artifacts
    bad = tmp_path / "bad"
    shutil.copytree(golden, bad)
    case = bad / "level1" / "head_step" / "case_0.npz"
    with np.load(case) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["out/v"] = arrays["out/v"] + 1e-3
    np.savez(case, **arrays)
    assert main(["verify", "--golden", str(bad), "--artifacts", str(art), "--levels", "1"]) == 1
    err = capsys.readouterr().err
    assert "level 1 head_step [fp32] rows=1: v: rel_l2" in err


def test_golden_inputs_load_into_polygraphy(golden, tiny_artifacts):
    art, _ = tiny_artifacts
    proc = subprocess.run([sys.executable, "-m", "polygraphy", "run", str(art / "fp32" / "head_step.onnx"),
                           "--onnxrt", "--load-inputs", str(golden / "level1" / "head_step" / "inputs.json")],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "No module named polygraphy.__main__" in proc.stderr:
        proc = subprocess.run([shutil.which("polygraphy"), "run", str(art / "fp32" / "head_step.onnx"), "--onnxrt",
                               "--load-inputs", str(golden / "level1" / "head_step" / "inputs.json")],
                              capture_output=True, text=True)
    assert proc.returncode == 0 and "PASSED" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_onnxruntime_generate_without_torch(tiny_artifacts, tiny_dir, tmp_path):
    art, _ = tiny_artifacts
    out = tmp_path / "x.png"
    proc = run_without_torch(["generate", "--backend", "onnxruntime", "--model", str(tiny_dir), "--artifacts",
                              str(art), "--prompt", "a cat", "--height", "32", "--width", "32", "--steps", "3",
                              "--cfg", "2", "--quiet", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    from PIL import Image

    assert Image.open(out).size == (32, 32)


@pytest.mark.parametrize("argv,needs", [
    (["generate", "--backend", "torch", "--prompt", "a cat", "--height", "32", "--width", "32", "--steps", "2"],
     "torch"),
    (["generate", "--backend", "onnxruntime", "--prompt", "a cat", "--noise", "official", "--height", "32",
      "--width", "32", "--steps", "3"], "torch"),
    (["export", "--out", "{tmp}/art"], "torch"),
    (["demo", "--out", "{tmp}/demo"], "torch"),
])
def test_the_edge_install_names_the_extra_a_command_needs(tiny_artifacts, tiny_dir, tmp_path, argv, needs):
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--model", str(tiny_dir)] * (argv[0] != "demo")
    if argv[0] == "generate":
        argv += ["--artifacts", str(tiny_artifacts[0]), "--out", str(tmp_path / "x.png")]
    proc = run_without_torch(argv)
    assert proc.returncode == 2, proc.stderr
    assert f'pip install -e ".[{needs}]" -c constraints.txt' in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr


def test_options_are_refused_before_anything_loads(tiny_dir, tmp_path):
    """Without torch, a bad --height still gets its own message: the check runs before the model (and torch)."""
    base = ["generate", "--backend", "torch", "--model", str(tiny_dir), "--prompt", "a cat", "--out"]
    for extra, message in [(["--height", "60"], "height 60 is not a positive multiple of 16"),
                           (["--seed", "-1"], "seed -1 is outside 0..9223372036854775807"),
                           (["--cfg", "inf"], "cfg inf is outside [1, 100]"),
                           (["--steps", "100000"], "steps 100000 is outside 1..1000")]:
        proc = run_without_torch(base + [str(tmp_path / "x.png")] + extra)
        assert proc.returncode == 2 and message in proc.stderr, (extra, proc.stderr)
    proc = run_without_torch(base + [str(tmp_path)])
    assert proc.returncode == 2 and "must name a .png file" in proc.stderr
    folder = tmp_path / "dir.png"
    folder.mkdir()
    proc = run_without_torch(base + [str(folder)])
    assert proc.returncode == 2 and "is a folder" in proc.stderr, proc.stderr
