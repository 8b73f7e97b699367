"""Shared fixtures: a tiny random-weight model folder in the official layout, built once per session."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A folder written by the same code as `nextstep-trt init-tiny` (several shards, VAE checkpoint.pt)."""
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder
    from nextstep_trt.ref.config import tiny

    out = tmp_path_factory.mktemp("models") / "tiny"
    model, vae = init_random(tiny(), seed=0)
    save_model_folder(out, tiny(), model, vae, max_shard_bytes=2**17)
    return out


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

    out = tmp_path_factory.mktemp("artifacts") / "art"
    report = export_all(ExportOptions(tiny_dir, out, profile=make_test_profile()), tiny_bundle, log=lambda *_: None)
    return out, report
