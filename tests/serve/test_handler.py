"""The server's batch handler without Triton: one loop per (height, width, steps) group, one sampler call per token
for the whole batch, and a bad request fails alone."""
import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.runtime.loop import Request, run_request
from nextstep_trt.serve.handler import BatchRunner, open_runner


def req(prompt="a red fox", **values):
    """Triton-style inputs for one image: [1,1] arrays typed as the model declares them."""
    types = {"height": np.int32, "width": np.int32, "steps": np.int32, "seed": np.int64, "cfg": np.float32,
             "cfg_img": np.float32}
    out = {"prompt": np.array([[prompt.encode()]], dtype=object)} if prompt is not None else {}
    for k, v in values.items():
        if k == "negative_prompt":
            out[k] = np.array([[v.encode()]], dtype=object)
        elif k == "image":
            out[k] = v[None]
        else:
            out[k] = np.array([[v]], dtype=types[k])
    return out


@pytest.fixture(scope="module")
def runner(tiny_artifacts, tiny_dir):
    r = open_runner(tiny_artifacts[0], tiny_dir, threads=1)
    yield r
    r.close()


def _solo(runner: BatchRunner, prompt, h, w, seed, cfg=7.5, steps=3, negative=""):
    opts = GenerationOptions(height=h, width=w, steps=steps, cfg=cfg, negative_prompt=negative)
    return run_request(runner.backend, runner.tokenizer, Request([prompt], opts, seeds=[seed]),
                       max_tokens=runner.limits.max_prompt_tokens)[0]


def test_groups_run_as_one_loop_each_with_one_sampler_call_per_token(runner, monkeypatch):
    calls = []
    sample = runner.backend.sample
    monkeypatch.setattr(runner.backend, "sample", lambda cond, *a: calls.append(cond.shape[0]) or sample(cond, *a))
    requests = [req(seed=1, height=32, width=32), req(seed=2, height=48, width=32), req(seed=3, height=32, width=32),
                req("a long prompt about a small boat", seed=4, height=32, width=32, cfg=2.0)]
    loops = runner.loops
    out = runner.execute(requests)
    assert runner.loops - loops == 2
    # 32x32: 4 tokens for 3 images (cond rows 2x3); 48x32: 6 tokens for 1 image
    assert sorted(calls) == [2] * 6 + [6] * 4
    assert [o.shape for o in out] == [(1, 32, 32, 3), (1, 48, 32, 3), (1, 32, 32, 3), (1, 32, 32, 3)]
    # A batch of 6 CFG rows against a solo run's 2: ONNX Runtime's CPU GEMMs pick kernels by row count and ISA, so
    # the float results may differ in the last bits (on an AVX-512 VM one channel of one pixel rounded to the next
    # level; on AVX2 they were identical). A wrong grouping (rows mixed up) would change the image outright.
    for k, (prompt, seed, cfg) in ((0, ("a red fox", 1, 7.5)), (3, ("a long prompt about a small boat", 4, 2.0))):
        diff = np.abs(out[k][0].astype(int) - _solo(runner, prompt, 32, 32, seed, cfg))
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (k, diff.max(), (diff > 0).mean())


BAD = [
    ({"prompt": None}, "missing input 'prompt'"),
    ({"height": 40}, "height 40 is not a multiple of 16"),
    ({"height": 128, "width": 128}, "outside the exported profile"),
    ({"height": 64, "width": 32}, None),     # inside the side ranges, 8 tokens <= 16: valid
    ({"steps": 4}, "steps 4 is outside 1..3"),
    ({"cfg": 0.5}, "is outside [1, 100]"),
    ({"cfg": float("nan")}, "is outside [1, 100]"),
    ({"seed": -1}, "seed -1 is outside"),
    ({"prompt": "x" * 5000}, "prompt is 5000 bytes; the cap is 2048"),
    ({"prompt": "cat " * 200}, "over the budget of 64"),
    ({"prompt": "   "}, "the prompt is empty"),
]


@pytest.mark.parametrize("change,message", BAD)
def test_bad_request_fails_alone(runner, change, message):
    change = dict(change)
    prompt = change.pop("prompt", "a red fox")
    good = req(seed=7, height=32, width=32)
    bad = req(prompt, **{"height": 32, "width": 32, **change})
    out = runner.execute([good, bad, good])
    assert np.array_equal(out[0], out[2]) and out[0].shape == (1, 32, 32, 3)
    if message is None:
        assert isinstance(out[1], np.ndarray)
    else:
        assert isinstance(out[1], UserError) and message in str(out[1]), out[1]


def test_requests_of_different_guidance_layouts_run_in_their_own_loops(runner, monkeypatch):
    """cfg = 1 builds one row per image (no unconditional row); it cannot share a loop with cfg > 1."""
    rows = []
    sample = runner.backend.sample
    monkeypatch.setattr(runner.backend, "sample", lambda cond, *a: rows.append(cond.shape[0]) or sample(cond, *a))
    loops = runner.loops
    out = runner.execute([req(seed=1, height=32, width=32, cfg=1.0), req(seed=2, height=32, width=32, cfg=3.0),
                          req(seed=3, height=32, width=32, cfg=1.0)])
    assert runner.loops - loops == 2
    assert sorted(rows) == [2] * 4 + [2] * 4        # cfg=1: 2 images x 1 row; cfg=3: 1 image x 2 rows
    assert np.array_equal(out[0][0], _solo(runner, "a red fox", 32, 32, 1, cfg=1.0))


def test_fewer_steps_run_through_head_step(runner):
    out = runner.execute([req(seed=3, steps=2, height=32, width=32), req(seed=3, height=32, width=32)])
    assert np.array_equal(out[0][0], _solo(runner, "a red fox", 32, 32, 3, steps=2))
    assert np.abs(out[0].astype(int) - out[1]).max() > 10
    assert any("head_step" in n for n in runner.backend.notices)


def test_edit_runner_takes_size_from_the_image(tiny_artifacts, tiny_dir):
    from nextstep_trt.runtime.cases import source_image

    r = open_runner(tiny_artifacts[0], tiny_dir, edit=True, threads=1)
    try:
        out = r.execute([req("make it blue", image=source_image(48, 32), seed=1),
                         req("make it blue", image=source_image(48, 32)[:, :, :2].copy(), seed=1)])
    finally:
        r.close()
    assert out[0].shape == (1, 48, 32, 3)
    assert isinstance(out[1], UserError) and "uint8 [H, W, 3]" in str(out[1])
