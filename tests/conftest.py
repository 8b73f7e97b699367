"""Shared fixtures: a tiny random-weight model folder in the official layout, built once per session."""
from __future__ import annotations

import os

import pytest
from session_share import shared

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `-n 2` on 2 cores: one thread per worker (and per CLI subprocess it starts); two workers with two torch
    # threads each oversubscribe the cores, and small linears then run 20-50x slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Files marked ``slow(seconds=...)`` first, longest first (a stable sort): `-n 2 --dist loadfile`
    (pyproject.toml) hands out whole files in this order, so the two workers end together instead of one running
    the README's blocks alone at the end."""
    def cost(item) -> float:
        mark = item.get_closest_marker("slow")
        return -mark.kwargs.get("seconds", 1) if mark else 0

    items.sort(key=cost)



@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder written by the same code as `nextstep-trt init-tiny` (several shards, VAE checkpoint.pt)."""
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder
    from nextstep_trt.ref.config import tiny

    def make(root):
        model, vae = init_random(tiny(), seed=0)
        save_model_folder(root / "tiny", tiny(), model, vae, max_shard_bytes=2**17)
        return root / "tiny"

    return shared(tmp_path_factory, "models", make)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dir):
    from nextstep_trt.ref.checkpoint import load_model

    return load_model(tiny_dir)


TEST_RESOLUTIONS = ((32, 32), (48, 32), (64, 64))


def make_test_profile():
    """The profile tests export with: the issue's resolutions, 3 sampler steps, batch up to 4."""
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.ref.sampling import SamplerConfig

    return DeploymentProfile(max_batch=4, max_text_tokens=16, resolutions=TEST_RESOLUTIONS,
                             t2i_sampler=SamplerConfig(steps=3, shift=1.0, use_norm=True),
                             edit_sampler=SamplerConfig(steps=3, shift=3.2, use_norm=True))


@pytest.fixture(scope="session")
def tiny_profile():
    """The DeploymentProfile the session's artifacts were exported with."""
    return make_test_profile()


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_dir, tiny_bundle, tmp_path_factory):
    """Every fp32 graph of the tiny model, exported and validated once per session; yields (folder, report)."""
    from nextstep_trt.export.run import ExportOptions, export_all

    def make(root):
        report = export_all(ExportOptions(tiny_dir, root / "art", profile=make_test_profile()), tiny_bundle,
                            log=lambda *_: None)
        return root / "art", report

    return shared(tmp_path_factory, "artifacts", make)
