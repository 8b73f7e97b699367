"""Shared fixtures: a tiny random-weight model folder in the official layout, built once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder written by the same code as `nextstep-trt init-tiny` (several shards, VAE checkpoint.pt)."""
    from nextstep_ref.checkpoint import init_random, save_model_folder
    from nextstep_ref.config import tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    model, vae = init_random(tiny(), seed=0)
    save_model_folder(out, tiny(), model, vae, max_shard_bytes=2**17)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dir):
    from nextstep_ref.checkpoint import load_model

    return load_model(tiny_dir)
