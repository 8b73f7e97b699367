"""The roofline's byte counts against the tensors of a saved checkpoint, and `nextstep-trt floor`."""
from __future__ import annotations

import math

import pytest
from safetensors import safe_open

from nextstep_trt.bench.roofline import decode_step_bytes, floor_estimate, sampler_token_bytes
from nextstep_trt.cli import main
from nextstep_trt.ref.config import load_config


def _numels(model_dir) -> dict[str, int]:
    """Element count of every tensor in the model's safetensors shards (read from the files, not the key map)."""
    out = {}
    for shard in sorted(model_dir.glob("model-*.safetensors")):
        with safe_open(shard, "np") as f:
            for key in f.keys():
                out[key] = math.prod(f.get_slice(key).get_shape())
    return out


def test_decode_and_sampler_bytes_match_the_checkpoint(tiny_dir):
    cfg, numel = load_config(tiny_dir), _numels(tiny_dir)
    bb, rows, capacity = cfg.backbone, 4, 37
    streamed = sum(n for k, n in numel.items() if k.startswith(("layers.", "norm.", "image_in_projector.",
                                                                  "image_out_projector.")))
    kv = 2 * bb.num_layers * rows * bb.num_kv_heads * capacity * bb.head_dim
    assert decode_step_bytes(cfg, rows, capacity) == 4 * (streamed + rows * bb.hidden_size + kv)
    head = {k: n for k, n in numel.items() if k.startswith("image_head.")}
    hoisted = sum(n for k, n in head.items() if ".cond_embed." in k)
    per_step = sum(head.values()) - hoisted - sum(n for k, n in head.items() if ".time_embed." in k)
    assert sampler_token_bytes(cfg, 7, fused=False) == 4 * 7 * sum(head.values())
    assert sampler_token_bytes(cfg, 7, fused=True, weight_bytes=2) == 2 * (7 * per_step + hoisted)


def test_floor_adds_decode_steps_and_sampler_calls(tiny_dir):
    cfg = load_config(tiny_dir)
    f = floor_estimate(cfg, 100.0, tokens=16, prompt=8, steps=5, batch=2)
    dec = decode_step_bytes(cfg, 4, 24, 2, 2) / 100e9
    smp = sampler_token_bytes(cfg, 5, True, 2) / 100e9
    assert f["request_s"] == pytest.approx(15 * dec + 16 * smp)
    assert f["s_per_image"] == pytest.approx(f["request_s"] / 2)
    assert f["decode_step_ms"] == pytest.approx(dec * 1e3)


def test_floor_cli(capsys):
    assert main(["floor", "--preset", "bench", "--bandwidth", "slow=1,fast=100", "--height", "256",
                 "--width", "256", "--batch", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: float(line.split()[3]) for line in lines if line.startswith(("slow", "fast"))}
    assert rows["slow"] == pytest.approx(100 * rows["fast"], rel=1e-2)       # decode ms scales with 1 / bandwidth
    assert main(["floor"]) == 0 and "H100 SXM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, text", [(["--bandwidth", "x=-1"], "--bandwidth takes"),
                                        (["--batch", "0"], "--batch takes"), (["--steps", "0"], ">= 1")])
def test_floor_bad_input(capsys, argv, text):
    assert main(["floor", *argv]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
