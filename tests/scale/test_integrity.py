"""Integrity checks pass on good exports and fail on flipped bytes and swapped weights."""
import json

import onnx
import pytest
from scale_helpers import SMALL, export_opts, relink_copy

from nextstep_trt.cli import main
from nextstep_trt.export.initializers import external_info
from nextstep_trt.export.integrity import check_graph_file
from nextstep_trt.export.lint import load_model
from nextstep_trt.export.lowmem import check_artifacts
from nextstep_trt.export.sources import WeightSources


def _flip_byte(model_dir, key: str) -> None:
    """Flip one byte inside tensor ``key`` of its shard."""
    from nextstep_trt.export.external import checkpoint_tensors
    from nextstep_trt.ref.weights import shard_files

    t = checkpoint_tensors(model_dir, shard_files(model_dir))[key]
    with open(t.file, "r+b") as f:
        f.seek(t.offset + 7)
        byte = f.read(1)
        f.seek(t.offset + 7)
        f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize("ck,graph", [("fp32", "fp32"), ("bf16", "fp32")])
def test_check_only_passes_then_fails_on_a_flipped_checkpoint_byte(ckpts, lowmem, tmp_path, capsys, ck, graph):
    """Linked: the flipped byte is the graph's byte too, so only the hashes recorded at export can tell.
    Converted: the graph's bytes no longer equal the checkpoint's."""
    model, art = relink_copy(ckpts[ck], lowmem[ck, graph], tmp_path)
    argv = ["export", "--model", str(model), "--out", str(art), "--check-only", "--dtype", graph,
            "--graphs", "backbone", *SMALL, "--report", str(tmp_path / "r.json")]
    assert main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is True
    capsys.readouterr()
    _flip_byte(model, "layers.1.mlp.down_proj.weight")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "model.layers.1.mlp.down_proj.weight" in err and len(err.strip().splitlines()) == 1
    assert ("changed since the export" in err) if graph == ck else ("differs from checkpoint" in err)


def test_swapped_weights_fail_the_weights_and_the_layer_check(ckpts, lowmem, tmp_path):
    """gate_proj and up_proj have the same shape; swapping where their bytes are must fail both checks."""
    model, art = relink_copy(ckpts["fp32"], lowmem["fp32", "fp32"], tmp_path)
    path = art / "fp32" / "backbone.onnx"
    proto = load_model(path)
    inits = {t.name: t for t in proto.graph.initializer}
    gate, up = (inits[f"model.layers.1.mlp.{n}_proj.weight"] for n in ("gate", "up"))
    gate_ext, up_ext = list(gate.external_data), list(up.external_data)
    for t, ext in ((gate, up_ext), (up, gate_ext)):
        del t.external_data[:]
        t.external_data.extend(ext)
    onnx.save(proto, path)
    from scale_helpers import small_profile

    from nextstep_trt.export.profile import graph_specs
    from nextstep_trt.ref.config import load_config

    spec = graph_specs(load_config(model), small_profile(), ("backbone",))["backbone"]
    report = check_graph_file(path, spec, None, WeightSources(model), layer=1)
    weights = next(c for c in report.checks if c.name == "weights")
    assert not weights.ok and "differs from checkpoint" in weights.detail
    assert not report.parity.ok and report.parity.failures()[0].metrics.rel_l2 > 0.01
    assert external_info(gate)[1] != external_info(up)[1]


def test_every_check_runs_and_passes_on_good_exports(ckpts, lowmem):
    for (ck, graph), art in lowmem.items():
        reports = check_artifacts(export_opts(ckpts[ck], art, dtype=graph))
        assert [r.graph for r in reports] == ["backbone"]
        names = [c.name for c in reports[0].checks]
        assert names == ["weights", "locations", "spec", "checker"] and reports[0].ok, reports[0].table()
        assert len(reports[0].parity.rows) == 3             # hidden state, new key, new value of one layer
