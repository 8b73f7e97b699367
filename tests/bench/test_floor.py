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
    hoisted = sum(n for k, n in head.items() if ".cond_embed." in k or ".adaLN_modulation." in k)
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
    assert main(["floor", "--preset", "bench", "--bandwidth", "slow=1,fast=100@16", "--height", "256",
                 "--width", "256", "--batch", "1", "--precision", "bf16,int4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    cells = [line.split() for line in lines if line.startswith(("slow", "fast"))]
    rows = {(c[0], c[3 if c[2] == "?" else 4]): c[4 if c[2] == "?" else 5:] for c in cells}   # memory: "?" or "17.2 GB"
    assert [c[2:4] for c in cells if c[0] == "fast"][0] == ["17.2", "GB"]          # 16 x 2^30 bytes, decimal
    decode = {k: float(v[0]) for k, v in rows.items()}
    assert decode[("slow", "bf16")] == pytest.approx(100 * decode[("fast", "bf16")], rel=1e-2)   # ms ~ 1 / bandwidth
    assert decode[("fast", "int4")] < 0.5 * decode[("fast", "bf16")]
    assert rows[("fast", "int4")][-1] == "1" and rows[("slow", "int4")][-1] == "?"      # fits 16 GiB; no memory given
    assert main(["floor"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("H100 SXM", "RTX 4070", "RTX 4080", "L4 ")) and "one 16-bit scale" in out


def test_int4_and_int8_bytes_match_the_checkpoint(tiny_dir):
    """Block-wise: the issue's quantized linears at 4/8 bits + one fp16 scale per 32 weights, the rest bf16."""
    from nextstep_trt.engines.footprint import gpu_format, graph_bytes

    cfg, numel = load_config(tiny_dir), _numels(tiny_dir)
    quantized = {f"layers.{i}.{m}.weight" for i in (0, 1) for m in
                 ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    head_q = {"image_head.net.input_proj.weight"} | {f"image_head.net.res_blocks.{i}.mlp.{j}.weight"
                                                     for i in (0, 1) for j in (0, 2)}
    graph = {k: n for k, n in numel.items() if not k.startswith(("image_head.", "lm_head."))}
    head = {k: n for k, n in numel.items() if k.startswith("image_head.")}
    for precision, per_weight in (("int4", 0.5 + 2 / 32), ("int8", 1 + 2 / 32)):
        g = graph_bytes(cfg, gpu_format(precision))
        assert g["backbone"] == pytest.approx(sum(n * (per_weight if k in quantized else 2) for k, n in graph.items()))
        assert g["head"] == pytest.approx(sum(n * (per_weight if k in head_q else 2) for k, n in head.items()))
    assert graph_bytes(cfg, gpu_format("fp32"))["backbone"] == 4 * sum(graph.values())


def test_a_deployment_fits_when_weights_kv_and_reserve_fit():
    from nextstep_trt.engines.gpus import RESERVE, Gpu, fit_text, fits

    card = Gpu("card", 100.0, int(10e9), fp8=False)
    assert fits(card, "int4", 10e9 - RESERVE - 1e9, 1e9)
    assert not fits(card, "int4", 10e9 - RESERVE - 1e9 + 1, 1e9)
    assert not fits(card, "fp8", 1.0, 1.0)                                    # compute capability below 8.9
    assert "not card (no fp8)" in fit_text("fp8", 1.0, 1.0, (card,))


@pytest.mark.parametrize("argv, text", [(["--bandwidth", "x=-1"], "--bandwidth takes"),
                                        (["--precision", "int3"], "--precision takes"),
                                        (["--batch", "0"], "--batch takes"), (["--steps", "0"], ">= 1")])
def test_floor_bad_input(capsys, argv, text):
    assert main(["floor", *argv]) == 2
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
