"""The committed lock is what CI installs: every pin inside pyproject.toml's ranges, the environment equal to it,
`pip check` clean, and the base (edge) install resolvable from it without torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
UNLOCKED_EXTRAS = {"trt"}          # standard TensorRT does not install here (its libraries come from outside)


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
            assert m, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(m[1])] = m[2]
    return pins


def _declared() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = [("base", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        out += [(extra, Requirement(r)) for r in reqs if extra not in UNLOCKED_EXTRAS]
    return [(e, r) for e, r in out if canonicalize_name(r.name) != "nextstep-trt"]


def test_every_declared_dependency_is_pinned_inside_its_range():
    pins = _lock()
    for extra, req in _declared():
        name = canonicalize_name(req.name)
        assert name in pins, f"[{extra}] {req} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"[{extra}] constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {req}"


def test_this_environment_is_the_lock_and_pip_check_is_clean():
    """Every installed distribution (but the project and pip's own tools) is pinned, at the pinned version."""
    pins, wrong = _lock(), []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in {"nextstep-trt", "pip", "setuptools", "wheel"}:
            continue
        if pins.get(name) != dist.version.split("+")[0]:
            wrong.append(f"{name} {dist.version} (lock: {pins.get(name, 'not pinned')})")
    assert not wrong, "the environment differs from constraints.txt: " + "; ".join(sorted(wrong))
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_base_install_resolves_from_the_lock_without_torch(tmp_path):
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), "-e", str(ROOT), "-c", str(ROOT / "constraints.txt")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    names = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
             for i in json.loads(report.read_text())["install"]}
    assert "torch" not in names and "onnxruntime" in names, sorted(names)
    pins = _lock()
    off = [f"{n} {v}" for n, v in names.items() if n != "nextstep-trt" and pins.get(n) != v]
    assert not off, f"the base install resolved packages outside the lock: {off}"
