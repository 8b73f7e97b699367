"""The bench's peer: our checkpoint as a Hugging Face Qwen2 folder equals our backbone in transformers (also when
the vocab must be padded), onnxruntime-genai's fp32 build equals our fp32 graph at a decode step, its int4 build is
MatMulNBits (quantized like our int4 graph, else block 32 at accuracy level 4), and the bench reports both side by
side with ours."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from nextstep_trt.bench.hf_folder import hf_vocab_size, write_hf_folder

pytest.importorskip("onnxruntime_genai")            # the `peer` extra (part of `full`)
TOL = 1e-5                                          # fp32, as tests/ref/test_backbone_hf.py


def _ours(model, ids):
    """Final-normed hidden states of our reference backbone on unpadded rows [B,L] -> [B,L,H]."""
    b = model.cfg
    past = [(torch.zeros(ids.shape[0], b.num_kv_heads, 0, b.head_dim),) * 2 for _ in range(b.num_layers)]
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)
    with torch.no_grad():
        h, _ = model.run_layers(model.embed_tokens(ids), positions, torch.ones_like(ids),
                                torch.zeros(ids.shape[0], 0, dtype=torch.int64), past)
    return h


def _hf(folder, ids):
    from transformers import Qwen2ForCausalLM

    hf = Qwen2ForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        out = hf(input_ids=ids, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1], out.logits


def test_hf_folder_equals_our_backbone(tiny_dir, tiny_bundle, tmp_path):
    info = write_hf_folder(tiny_dir, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and info["padded_rows"] == 0
    ids = torch.randint(0, 299, (2, 7), generator=torch.Generator().manual_seed(0))
    hidden, logits = _hf(tmp_path / "hf", ids)
    ours = _ours(tiny_bundle.model, ids)
    assert (hidden - ours).abs().max() <= TOL and ours.std() > 0.1
    assert (logits - tiny_bundle.model.lm_head(ours)).abs().max() <= TOL


def test_vocab_equal_to_a_linear_width_is_padded(tmp_path):
    """Vocab 320 = the MLP width: the builder would take gate/up for the lm_head, so the HF copy gets 384 rows."""
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder
    from nextstep_trt.ref.config import tiny

    cfg = tiny()
    cfg = replace(cfg, backbone=replace(cfg.backbone, intermediate_size=cfg.backbone.vocab_size))
    assert hf_vocab_size(cfg.backbone) == 384
    model, vae = init_random(cfg, seed=1)
    save_model_folder(tmp_path / "m", cfg, model, vae)
    info = write_hf_folder(tmp_path / "m", tmp_path / "hf")
    assert info["hf_vocab_size"] == 384 and info["padded_rows"] == 64 and "lm_head" in info["why_padded"]
    ids = torch.randint(0, 299, (1, 6), generator=torch.Generator().manual_seed(1))
    hidden, logits = _hf(tmp_path / "hf", ids)
    ours = _ours(model.eval(), ids)
    assert (hidden - ours).abs().max() <= TOL and logits.shape[-1] == 384
    assert (logits[..., :320] - model.lm_head(ours)).abs().max() <= TOL and logits[..., 320:].abs().max() == 0


@pytest.fixture(scope="module")
def peer_report(tiny_dir, tiny_artifacts, tmp_path_factory):
    """A bench run with the peer on a copy of the session's artifacts (the peer cache goes under ART/peer/)."""
    from nextstep_trt.bench.run import BenchOptions
    from nextstep_trt.bench.session import run_bench

    art = tmp_path_factory.mktemp("peer") / "art"
    shutil.copytree(tiny_artifacts[0], art)
    opts = BenchOptions(model=tiny_dir, artifacts=art, backends=("onnxruntime",), batches=(1,), height=32, width=32,
                        steps=3, cfg=2.0, bandwidth_mib=16, micro_calls=1, decode_pasts=(5, 40), decode_rounds=2,
                        decode_steps=2, peer=True, prompt="a red fox")
    return run_bench(opts, log=lambda *_: None), art


def test_peer_fp32_equals_ours_and_int4_is_quantized(peer_report):
    report, _ = peer_report
    assert report.peer["verified"] is True and report.peer["precisions"] == ["fp32", "int4"]
    assert report.peer["options"] == {"int4": {"accuracy_level": 4, "block_size": 32}}     # no int4 of ours here
    assert any("peer's fp32 build equals our fp32" in n for n in report.notes)
    for cell in report.steps:
        ours, p32, p4 = cell.get("ours", "fp32"), cell.get("peer", "fp32"), cell.get("peer", "int4")
        assert p32.rel_l2 <= 1e-6 and p32.max_abs <= 1e-5
        assert 1e-4 < p4.rel_l2 < 0.1 and p4.cosine > 0.99          # really quantized, still the same model
        assert p4.weight_bytes < 0.3 * p32.weight_bytes and ours.kv_bytes == p4.kv_bytes > 0
        assert all(t.ms > 0 and len(t.round_ms) == 2 for t in cell.timings)
    graph = onnx.load(report.peer["graphs"]["int4"], load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert len(nbits) == 10 and attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
    assert not [n for n in graph.node if n.op_type == "MatMul"]      # every linear is int4 (no lm_head: excluded)


def test_peer_rows_in_table_and_json(peer_report):
    from nextstep_trt.bench.tables import report_table

    report, _ = peer_report
    text = report_table(report)
    assert "decode step micro-benchmark" in text and "peer int4" in text and "ours fp32" in text
    data = json.loads(json.dumps(report.to_json()))
    assert [c["past"] for c in data["steps"]] == [5, 40]
    assert {t["label"] for t in data["steps"][0]["timings"]} == {"ours fp32", "peer fp32", "peer int4",
                                                                 "ours fp32 (control)", "peer fp32 (control)"}


def test_cached_builds_are_reused(peer_report, tiny_dir, monkeypatch):
    import subprocess

    from nextstep_trt.bench.peer import PeerOptions, build_peer

    _, art = peer_report
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the builder ran again"))
    path = build_peer(tiny_dir, art, "int4", PeerOptions())
    assert path.is_file() and path.parent.name == "int4-b32-acc4" and "peer" in path.parts


def test_a_peer_that_differs_from_ours_voids_its_targets():
    from nextstep_trt.bench.machine import describe_machine
    from nextstep_trt.bench.memory import Bandwidth
    from nextstep_trt.bench.results import BenchReport
    from nextstep_trt.bench.stability import LoadReading, SpreadRule, Stability
    from nextstep_trt.bench.step_phase import check_peer
    from nextstep_trt.bench.steps import StepCell, StepTiming

    def timing(source, rel):
        return StepTiming(f"{source} fp32", source, "fp32", 5, 2, 1.0, [1.0], 1, 1, 1.0, None, None, 0.99, rel, rel)

    st = Stability([None], 0, LoadReading([0.0], 2), SpreadRule())
    report = BenchReport(describe_machine(), Bandwidth(16, 5, 1, 1, 2), {"precisions": ["fp32"]},
                         steps=[StepCell(5, [timing("ours", 0.0), timing("peer", 3e-3)], st)])
    check_peer(report)
    assert report.peer["verified"] is False and any("conversion is wrong" in n for n in report.notes)
    assert np.isfinite(report.steps[0].timings[1].rel_l2)


def test_a_failing_build_is_one_line_leaves_no_scratch_and_frees_the_lock(tiny_dir, tmp_path, monkeypatch):
    import subprocess
    from types import SimpleNamespace

    from nextstep_trt.bench import step_phase
    from nextstep_trt.bench.peer import PeerOptions, build_peer, peer_root
    from nextstep_trt.core.errors import UserError

    art = tmp_path / "art"
    art.mkdir()

    def broken(cmd, stdout, **_):
        stdout.write("Traceback ...\nValueError: the builder broke\n")
        return SimpleNamespace(returncode=1)

    monkeypatch.setattr(subprocess, "run", broken)
    for _ in range(2):                                   # the second call takes the (released) lock again
        with pytest.raises(UserError, match="builder failed for int4-b32-acc4 .*ValueError: the builder broke"):
            build_peer(tiny_dir, art, "int4", PeerOptions(), log=lambda *_: None)
    root = peer_root(art, tiny_dir)
    assert (root / "hf" / "model.safetensors").is_file() and not list(root.glob("int4*"))
    assert not list(root.glob(".*.tmp"))
    bench = SimpleNamespace(opts=SimpleNamespace(peer=True, model=tiny_dir, artifacts=art, precisions=("fp32",),
                                                 peer_options=PeerOptions(), threads=1), log=lambda *_: None)
    graphs, info = step_phase.peer_graphs(bench, SimpleNamespace(config=None, data={"graphs": {}}))
    assert graphs == [] and set(info["failed"]) == {"fp32", "int4"} and info["precisions"] == []


def test_the_peer_is_quantized_like_our_graph_of_the_same_precision(tmp_path):
    """Unset peer options follow our graph's recipe and ONNX Runtime deployment; given ones win; fp32 and a missing
    graph fall back to block 32 at level 4 (the cache folder and the builder's command line say which)."""
    from types import SimpleNamespace

    from nextstep_trt.bench.peer import PeerOptions, build_name, builder_command
    from nextstep_trt.bench.step_phase import our_quantization

    entry = {"recipe": {"block_size": 128}, "deployments": {"onnxruntime": {"accuracy_level": 1}}}
    manifest = SimpleNamespace(data={"graphs": {"backbone": {"precisions": {"int4": entry, "fp32": {}}}}})
    assert our_quantization(manifest, "int4") == {"block_size": 128, "accuracy_level": 1}
    assert our_quantization(manifest, "fp32") == {} and our_quantization(manifest, "int8") == {}
    assert PeerOptions().matching(our_quantization(manifest, "int4")) == PeerOptions(1, 128)
    assert PeerOptions(block_size=64).matching(our_quantization(manifest, "int4")) == PeerOptions(1, 64)
    assert PeerOptions().matching({}) == PeerOptions(4, 32)
    cmd = builder_command(tmp_path, tmp_path, tmp_path, "int4", PeerOptions(1, 128))
    assert cmd[-3:] == ["exclude_lm_head=true", "accuracy_level=1", "block_size=128"]
    # one cache folder per model and builder version (one HF folder), one build folder per quantization
    assert [build_name(p, PeerOptions(1, 128)) for p in ("fp32", "int4")] == ["fp32", "int4-b128-acc1"]
    assert build_name("int8", PeerOptions(), tmp_path / "kv-scales-0123abcd.json") == "int8-b32-acc4-kv8-0123abcd"
