"""kill -9 of export and quantize at several points (core/faults.py), then a rerun that leaves no debris; a second
run into a folder in use is refused naming the first; `doctor --artifacts` reports the lock holder and leftovers.

Killed runs are real processes (the installed `nextstep-trt`, SIGKILL at a named point); the reruns run in-process.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from integrity_helpers import one_line, run_cli

from nextstep_trt.core.faults import ENV

pytestmark = pytest.mark.slow(seconds=25)      # idle seconds, roughly: scheduled first (tests/conftest.py)

SCRIPT = Path(sys.executable).with_name("nextstep-trt")


def _debris(art: Path) -> list[str]:
    """What an interrupted run can leave: scratch folders, temporary files of atomic writes, write probes."""
    return sorted(p.name for pattern in (".export-*", "*.tmp", ".probe-*") for p in art.glob(pattern))


def _cli(argv: list[str], fault: str | None = None, **kw) -> subprocess.Popen:
    """The CLI as its own process, with a fault point armed."""
    cmd = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-c",
                                                  "import sys; from nextstep_trt.cli import main; sys.exit(main())"]
    env = dict(os.environ) | ({ENV: fault} if fault else {})
    env.pop("PYTEST_CURRENT_TEST", None)
    return subprocess.Popen(cmd + argv, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _killed_at(argv: list[str], point: str) -> str:
    """Run until the process SIGKILLs itself at ``point``; its stdout."""
    proc = _cli(argv, f"kill:{point}")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, err[-2000:])
    return out


def _doctor(capsys, art: Path) -> str:
    code, err, out = run_cli(capsys, ["doctor", "--artifacts", str(art)])
    assert code == 0, err
    return out


@pytest.fixture
def export_argv(tiny_dir, tmp_path):
    return ["export", "--model", str(tiny_dir), "--out", str(tmp_path / "art"), "--graphs", "head_step",
            "--resolutions", "32x32", "--steps", "3", "--max-text-tokens", "16", "--no-validate"]


def test_export_killed_at_several_points_then_a_clean_rerun(capsys, export_argv, tmp_path):
    art = tmp_path / "art"
    # 1. a run holding the folder (stopped after writing its graph into scratch): a second run is refused, doctor
    #    names the holder; then kill -9 of the holder
    holder = _cli(export_argv, "hold:written", stdin=subprocess.PIPE)
    try:
        seen = ""
        while "fault point written: holding" not in seen:       # stderr may carry library warnings first
            line = holder.stderr.readline()
            assert line, seen + holder.stderr.read()          # the holder exited before its fault point
            seen += line
        code, err, _ = run_cli(capsys, export_argv)
        assert code == 2 and one_line(err), err
        assert f"{art} is in use by `nextstep-trt export` (pid {holder.pid} on " in err
        report = _doctor(capsys, art)
        assert f"held by `nextstep-trt export` (pid {holder.pid}" in report
        assert "still running" in report and len(_debris(art)) == 1
        code, err, _ = run_cli(capsys, ["doctor", "--artifacts", str(art), "--clean"])
        assert code == 2 and "is in use by" in err                 # --clean never touches a live run's files
    finally:
        holder.kill()
        holder.communicate()
    assert holder.returncode == -signal.SIGKILL
    scratch = _debris(art)
    assert len(scratch) == 1 and scratch[0].startswith(".export-head_step-")
    report = _doctor(capsys, art)
    assert re.search(r"writer \(lock\) +none", report)
    assert f"{scratch[0]} (" in report and "stale): left by `nextstep-trt export`" in report
    assert "which is no longer running" in report
    # 2. killed while writing the manifest (its graph already in place): the earlier run's scratch is removed
    #    first; a half-written temporary file is left
    out = _killed_at(export_argv, "atomic:manifest.json")
    assert f"removed {scratch[0]}, left by an interrupted run" in out
    left = _debris(art)
    assert len(left) == 1 and left[0].startswith(".manifest.json.") and not (art / "manifest.json").exists()
    assert (art / "fp32" / "head_step.onnx").is_file()
    code, err, out = run_cli(capsys, ["generate", "--backend", "onnxruntime", "--model", export_argv[2],
                                      "--artifacts", str(art), "--prompt", "x", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "no manifest.json" in err               # never loads what was not recorded
    # 3. the rerun: everything left is removed, the graph installed and recorded, every file as recorded
    code, err, out = run_cli(capsys, export_argv)
    assert code == 0, err
    assert f"removed {left[0]}, left by an interrupted run" in out
    assert _debris(art) == []
    code, err, out = run_cli(capsys, ["verify", "--artifacts", str(art), "--integrity"])
    assert code == 0 and " 0 problem(s)" in out, err
    assert re.search(r"leftovers +none", _doctor(capsys, art))


def test_quantize_killed_at_several_points_then_a_clean_rerun(capsys, art, tiny_dir):
    argv = ["quantize", "--model", str(tiny_dir), "--artifacts", str(art), "--precision", "fp16",
            "--graphs", "head_step"]
    _killed_at(argv, "validated")                                  # graph written and validated, in scratch
    first = _debris(art)
    assert len(first) == 1 and (art / first[0] / "head_step.onnx").is_file()
    out = _killed_at(argv, "installed")                             # in place, not yet hashed or recorded
    assert f"removed {first[0]}, left by an interrupted run" in out and _debris(art) == []
    assert (art / "fp16" / "head_step.onnx").is_file()
    from nextstep_trt.core.errors import UserError
    from nextstep_trt.runtime.api import open_backend

    with pytest.raises(UserError, match="has no fp16 graph"):       # an unrecorded graph is never loaded
        open_backend("onnxruntime", artifacts=art, precision="fp16")
    code, err, _ = run_cli(capsys, argv)
    assert code == 0, err
    assert _debris(art) == []
    with open_backend("onnxruntime", artifacts=art, precision="fp16") as backend:
        assert backend.graph_precision["head_step"].value == "fp16"
    code, err, out = run_cli(capsys, ["verify", "--artifacts", str(art), "--integrity"])
    assert code == 0 and " 0 problem(s)" in out, err
