"""The flow-matching SDE sampler, CFG and schedules against numbers worked out by hand with plain floats.

Official update (HF heads ``sample``): score = (t v - x) / (1 - t), drift = v + (1 - t) score,
x <- x + drift dt + sqrt(2 (1 - t)) sqrt(dt) xi. The expected values below use that form directly.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nextstep_trt.ref.head import FlowMatchingHead, token_norm
from nextstep_trt.ref.sampler import combine_cfg, run_sampler, sample_token
from nextstep_trt.ref.sampling import CfgSchedule, Guidance, SamplerConfig, SamplerVariant, cfg_at

# v = a x + b per branch (cond, uncond1, uncond2)
A = {"c": 0.8, "u": -0.3, "u2": 0.5}
B = {"c": 0.25, "u": -0.6, "u2": 0.1}


def hand_grid(variant: str, n: int, shift: float) -> tuple[list[float], list[float]]:
    """(times of the SDE steps, their dt); for gh also the final deterministic step, returned separately below."""
    def s(t):
        return t / (shift - (shift - 1) * t)
    if variant == "hf":
        ts = [s(k / n) for k in range(n)] + [1.0]
        return ts[:-1], [ts[k + 1] - ts[k] for k in range(n)]
    ts = [s(0.96 * k / (n - 1)) for k in range(n)]
    return ts, [ts[k + 1] - ts[k] for k in range(n - 1)]


def hand_velocity(x: float, g: float, g_img: float | None) -> float:
    vc, vu = A["c"] * x + B["c"], A["u"] * x + B["u"]
    if g_img is None:
        return vu + g * (vc - vu)
    vu2 = A["u2"] * x + B["u2"]
    return vu2 + g_img * (vu - vu2) + g * (vc - vu)


def hand_sampler(variant, n, shift, xi: list[float], g, g_img=None) -> float:
    """One scalar element; xi[0] is the initial x, xi[k+1] the noise of SDE step k."""
    ts, dts = hand_grid(variant, n, shift)
    x = xi[0]
    for k, dt in enumerate(dts):
        t = ts[k]
        v = hand_velocity(x, g, g_img)
        score = (t * v - x) / (1 - t)
        drift = v + (1 - t) * score
        x = x + drift * dt + math.sqrt(2 * (1 - t)) * math.sqrt(dt) * xi[k + 1]
    if variant == "gh":
        x = x + 0.04 * hand_velocity(x, g, g_img)
    return x


def branch_velocity(rows: int, calls: list):
    """velocity_fn for run_sampler (numpy or torch): branch r of the stacked x gets v = A[r] x + B[r]."""
    names = ["c", "u", "u2"][:rows]

    def fn(x, k):
        calls.append(k)
        chunks = [x[i * (x.shape[0] // rows):(i + 1) * (x.shape[0] // rows)] for i in range(rows)]
        for c in chunks[1:]:
            assert (c == chunks[0]).all(), "every branch must see the same x"
        out = [A[n] * c + B[n] for n, c in zip(names, chunks)]
        return torch.cat(out) if isinstance(x, torch.Tensor) else np.concatenate(out)
    return fn


NOISE = [[0.3, -1.2], [1.1, 0.4], [-0.7, 0.9], [0.2, -0.5]]  # [slot][row], D = 1


@pytest.mark.parametrize("kind", ["torch", "numpy"])
@pytest.mark.parametrize("variant,n,shift", [("hf", 2, 1.0), ("hf", 2, 3.0), ("gh", 3, 1.0), ("gh", 3, 3.0),
                                             ("gh", 2, 1.0)])
@pytest.mark.parametrize("edit", [False, True], ids=["2-way", "3-way"])
def test_run_sampler_hand_computed(variant, n, shift, edit, kind):
    g = [2.0, 4.5]
    g_img = [1.5, 2.0] if edit else None
    arr = (lambda v: torch.tensor(v, dtype=torch.float64)) if kind == "torch" else (lambda v: np.array(v, np.float64))
    noise = arr(NOISE[:n + 1])[..., None]                                     # [N+1,B,1]
    sampler = SamplerConfig(steps=n, shift=shift, variant=SamplerVariant(variant))
    calls = []
    guidance = Guidance.TEXT_IMAGE if edit else Guidance.TEXT
    out = run_sampler(branch_velocity(3 if edit else 2, calls), noise, sampler, guidance, arr(g),
                      None if g_img is None else arr(g_img))
    assert calls == list(range(n))  # N velocity evaluations, in order
    assert tuple(out.shape) == (2, 1)
    for row in range(2):
        want = hand_sampler(variant, n, shift, [s[row] for s in NOISE[:n + 1]], g[row],
                            None if g_img is None else g_img[row])
        got = float(out[row, 0])
        assert abs(got - want) < 1e-12, f"{variant} N={n} shift={shift} row {row}: {got} != {want} (hand)"


def test_hand_numbers_two_step_hf_shift1():
    """The hand sampler itself, checked on one case by explicit arithmetic (t = 0, 0.5; dt = 0.5, 0.5)."""
    x0, xi1, xi2, g = 0.3, 1.1, -0.7, 2.0
    v = lambda x: (A["u"] * x + B["u"]) + g * ((A["c"] - A["u"]) * x + B["c"] - B["u"])  # noqa: E731
    x1 = x0 + (v(x0) - x0) * 0.5 + math.sqrt(2.0) * math.sqrt(0.5) * xi1          # t=0: drift = v - x
    x2 = x1 + (1.5 * v(x1) - x1) * 0.5 + math.sqrt(1.0) * math.sqrt(0.5) * xi2    # t=.5: drift = 1.5 v - x
    assert abs(hand_sampler("hf", 2, 1.0, [x0, xi1, xi2], g) - x2) < 1e-12
    # shift 3 moves the middle time to 0.5 / (3 - 2 * 0.5) = 0.25
    assert hand_grid("hf", 2, 3.0) == ([0.0, 0.25], [0.25, 0.75])


def test_run_sampler_deterministic():
    noise = torch.randn(4, 3, 16, generator=torch.Generator().manual_seed(0))
    sampler = SamplerConfig(steps=3, shift=2.0)
    fn = lambda x, k: torch.sin(x * (k + 1)) + 0.1 * x  # noqa: E731
    a = run_sampler(fn, noise, sampler, Guidance.TEXT, torch.full((3,), 3.0))
    b = run_sampler(fn, noise.clone(), sampler, Guidance.TEXT, torch.full((3,), 3.0))
    assert torch.equal(a, b)
    c = run_sampler(fn, noise + 1e-3, sampler, Guidance.TEXT, torch.full((3,), 3.0))
    assert not torch.equal(a, c)


def hand_layer_norm(values: list[float]) -> list[float]:
    mu = sum(values) / len(values)
    var = sum((r - mu) ** 2 for r in values) / len(values)
    return [(r - mu) / math.sqrt(var + 1e-6) for r in values]


def test_use_norm_is_layer_norm_without_affine():
    noise = torch.tensor([[[0.5, -1.0, 2.0, 0.25]], [[0.1, 0.2, -0.3, 0.4]]], dtype=torch.float64)  # [2,1,4]
    raw = [hand_sampler("hf", 1, 1.0, [noise[0, 0, i].item(), noise[1, 0, i].item()], 3.0) for i in range(4)]
    want = hand_layer_norm(raw)
    assert max(abs(a - b) for a, b in zip(raw, want)) > 0.1  # the norm changes the numbers
    out = run_sampler(branch_velocity(2, []), noise, SamplerConfig(steps=1, shift=1.0, use_norm=True),
                      Guidance.TEXT, torch.tensor([3.0], dtype=torch.float64), norm=token_norm)
    for i in range(4):
        assert abs(float(out[0, i]) - want[i]) < 1e-9, (i, float(out[0, i]), want[i])
    # the reference token_norm itself: no affine, eps 1e-6, biased variance
    x = [3.0, -1.0, 0.5, 0.0]
    got = token_norm(torch.tensor([x], dtype=torch.float64))[0].tolist()
    assert max(abs(a - b) for a, b in zip(got, hand_layer_norm(x))) < 1e-12


def test_combine_cfg_hand_numbers():
    v = torch.tensor([[1.0, 2.0], [0.5, -1.0],      # cond rows (B = 2)
                      [0.0, 1.0], [1.5, 0.0]])      # uncond rows
    out = combine_cfg(v, Guidance.TEXT, torch.tensor([3.0, 2.0]))
    # row 0: 0 + 3 (1 - 0) = 3;  1 + 3 (2 - 1) = 4.  row 1: 1.5 + 2 (0.5 - 1.5) = -0.5;  0 + 2 (-1 - 0) = -2
    assert out.tolist() == [[3.0, 4.0], [-0.5, -2.0]]

    v3 = torch.tensor([[2.0], [1.0], [0.5]])        # cond, uncond1 (image + negative), uncond2 (negative only)
    out3 = combine_cfg(v3, Guidance.TEXT_IMAGE, torch.tensor([4.0]), torch.tensor([1.5]))
    # 0.5 + 1.5 (1 - 0.5) + 4 (2 - 1) = 5.25
    assert out3.tolist() == [[5.25]]
    # cfg = cfg_img = 1 gives the conditional velocity
    assert combine_cfg(v3, Guidance.TEXT_IMAGE, torch.tensor([1.0]), torch.tensor([1.0])).tolist() == [[2.0]]
    # no guidance: the one branch as it is
    assert combine_cfg(torch.tensor([[2.0], [7.0]]), Guidance.NONE).tolist() == [[2.0], [7.0]]


def test_cfg_schedules():
    assert [cfg_at(7.5, k, 4, CfgSchedule.CONSTANT) for k in range(4)] == [7.5] * 4
    # linear: 1 + (cfg - 1) (N - k) / N, decaying towards 1
    assert [cfg_at(3.0, k, 4, CfgSchedule.LINEAR) for k in range(4)] == [3.0, 2.5, 2.0, 1.5]
    assert cfg_at(5.0, 3, 8, CfgSchedule.LINEAR) == 1.0 + 4.0 * 5 / 8


class FakeHead(torch.nn.Module):
    """v = 0.5 x + 2 t + c[:, 0]: checks the time grid and the condition rows sample_token passes."""

    def forward(self, x, t, c):
        assert t.shape == (x.shape[0],) and torch.all(t == t[0])
        return 0.5 * x + 2.0 * t[:, None].to(x.dtype) + c[:, :1]


@pytest.mark.parametrize("use_norm", [False, True])
def test_sample_token_passes_time_grid_and_conditions(use_norm):
    cond = torch.tensor([[0.3, 9.0], [-0.2, 9.0]], dtype=torch.float64)        # [cond | uncond], B = 1
    xi = [[0.4, -1.0, 2.0], [-0.8, 0.1, 0.6], [1.3, -0.4, 0.2]]                  # [slot][feature], N = 2
    noise = torch.tensor(xi, dtype=torch.float64)[:, None]                     # [3,1,3]
    out = sample_token(FakeHead(), cond, noise, SamplerConfig(steps=2, shift=3.0, use_norm=use_norm),
                       Guidance.TEXT, torch.tensor([2.5]))
    ts, dts = hand_grid("hf", 2, 3.0)
    want = []
    for i in range(3):
        x = xi[0][i]
        for k, (t, dt) in enumerate(zip(ts, dts)):
            vc, vu = 0.5 * x + 2 * t + 0.3, 0.5 * x + 2 * t - 0.2
            v = vu + 2.5 * (vc - vu)
            x = x + (v + (1 - t) * (t * v - x) / (1 - t)) * dt + math.sqrt(2 * (1 - t) * dt) * xi[k + 1][i]
        want.append(x)
    if use_norm:
        want = hand_layer_norm(want)
    assert out.shape == (1, 3)
    for i in range(3):
        assert abs(float(out[0, i]) - want[i]) < 1e-9, (i, float(out[0, i]), want[i])


def test_sample_token_with_real_head(tiny_random):
    cfg, model, _ = tiny_random
    head = model.image_head
    assert isinstance(head, FlowMatchingHead)
    gen = torch.Generator().manual_seed(7)
    cond = torch.randn(4, cfg.head.cond_dim, generator=gen)                    # [cond x 2 | uncond x 2]
    noise = torch.randn(4, 2, cfg.token_dim, generator=gen)
    sampler = SamplerConfig(steps=3, shift=1.0, use_norm=False)
    g = torch.full((2,), 2.0)
    with torch.no_grad():
        a = sample_token(head, cond, noise, sampler, Guidance.TEXT, g)
        b = sample_token(head, cond, noise.clone(), sampler, Guidance.TEXT, g)
        c = sample_token(head, cond, torch.randn(noise.shape, generator=gen), sampler, Guidance.TEXT, g)
    assert a.shape == (2, cfg.token_dim)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    assert torch.isfinite(a).all()
