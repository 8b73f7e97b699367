"""Shared helpers of the engine tests: copy the session's artifacts, build with TensorRT-RTX for a named GPU."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


def needs_rtx():
    """tensorrt_rtx, or skip: these tests build real engines with it (no GPU needed)."""
    return pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")


def copy_artifacts(src: Path, dst: Path) -> Path:
    """A private copy of an artifacts folder (tests write engines and break graphs in it)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("engines"))
    return dst


def rtx(cc: str = "8.9", **options):
    """(BuildOptions, Target) for TensorRT-RTX ahead of time for compute capability ``cc``."""
    from nextstep_trt.engines.builder import BuildOptions, resolve_target

    opts = BuildOptions("tensorrt-rtx", cc, **options)
    return opts, resolve_target(opts)


def build(art: Path, graph: str, precision: str = "fp32", force: bool = False, cc: str = "8.9", **options):
    """build_engine with TensorRT-RTX for ``cc``."""
    from nextstep_trt.engines.cache import build_engine

    opts, target = rtx(cc, **options)
    return build_engine(art, graph, precision, opts, target, force)


def listing(folder: Path) -> list[str]:
    """Every entry of a folder, hidden ones included (a failed build must leave no temporary folder)."""
    return sorted(p.name for p in folder.iterdir())


def rerecord(art: Path, graph: str, precision: str = "fp32") -> None:
    """Record a graph's edited bytes in the manifest, as a re-export would (else integrity refuses them first)."""
    from nextstep_trt.export.filecheck import graph_files
    from nextstep_trt.export.manifest import Manifest

    manifest = Manifest.load(art)
    entry = manifest.entry(graph, precision)
    path = art / entry["file"]
    entry["hashes"] = manifest.hash_files(graph_files(path))
    entry["sha256"] = entry["hashes"][entry["file"]]
    manifest.save()
