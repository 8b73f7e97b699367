"""Fixtures of the integrity tests (helpers: integrity_helpers.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def art(tiny_artifacts, tmp_path) -> Path:
    """A private copy of the session's fp32 artifacts (new inodes: its first load hashes every file)."""
    out = tmp_path / "art"
    shutil.copytree(tiny_artifacts[0], out)
    return out
