"""Helpers for the reference tests: parity checks that say which tensor failed, by how much and where."""
from __future__ import annotations

import pytest
import torch


def max_error(got: torch.Tensor, want: torch.Tensor, mask: torch.Tensor | None = None):
    """(max abs error, index of the worst element) where mask (broadcast over trailing dims) is set."""
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.double() - want.double()).abs()
    err = torch.where(torch.isnan(err), torch.full_like(err, float("inf")), err)  # NaN counts as a failure
    if mask is not None:
        m = mask.bool().reshape(mask.shape + (1,) * (err.dim() - mask.dim()))
        err = torch.where(m, err, torch.zeros_like(err))
    flat = int(err.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape))
    return float(err.max()), idx


def _assert_close(name: str, got, want, tol: float, dims: tuple[str, ...] = (), mask=None) -> float:
    err, idx = max_error(got, want, mask)
    where = ", ".join(f"{d}={i}" for d, i in zip(dims, idx)) or str(idx)
    assert err <= tol, (f"{name}: max abs error {err:.3e} > {tol:.0e} at {where} "
                        f"(got {float(got[idx]):.6g}, expected {float(want[idx]):.6g})")
    return err


@pytest.fixture
def assert_close():
    """assert_close(name, got, want, tol, dims=("row", "position", ...), mask=None) -> max error."""
    return _assert_close


@pytest.fixture(scope="module")
def tiny_random():
    """(config, NextStep, AutoEncoder) of the tiny config with seeded random weights, fp32, eval mode."""
    from nextstep_trt.ref.checkpoint import init_random
    from nextstep_trt.ref.config import tiny

    cfg = tiny()
    model, vae = init_random(cfg, seed=3)
    return cfg, model, vae
