"""Bad input to the low-memory export and to init-model: one line on stderr, exit 2, nothing good replaced."""
import pytest
import hashlib
import shutil
from collections import namedtuple

from scale_helpers import SMALL, relink_copy

from nextstep_trt.cli import main

pytestmark = pytest.mark.slow(seconds=40)      # idle seconds, roughly: scheduled first (tests/conftest.py)

Usage = namedtuple("Usage", "total used free")


def _run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


def _export(model, out, *extra):
    return ["export", "--model", str(model), "--out", str(out), "--low-memory", "--graphs", "backbone", *SMALL, *extra]


def _rewrite_tensor(model_dir, key, change) -> None:
    """Re-save the shard holding ``key`` with ``change(tensor)`` in its place."""
    import json

    from safetensors.torch import load_file, save_file

    shard = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"][key]
    state = load_file(str(model_dir / shard))
    state[key] = change(state[key])
    save_file(state, str(model_dir / shard), metadata={"format": "pt"})


def test_missing_shard(capsys, ckpts, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(ckpts["bf16"], model)
    shard = sorted(model.glob("model-*.safetensors"))[1]
    shard.unlink()
    code, err = _run(capsys, *_export(model, tmp_path / "a"))
    assert code == 2 and f"missing: {shard.name}" in err and len(err.splitlines()) == 1


def test_misshaped_tensor(capsys, ckpts, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(ckpts["bf16"], model)
    _rewrite_tensor(model, "layers.0.mlp.up_proj.weight", lambda t: t.t().contiguous())
    code, err = _run(capsys, *_export(model, tmp_path / "a", "--dtype", "bf16"))
    assert code == 2 and "wrong shape layers.0.mlp.up_proj.weight: [64, 128], expected [128, 64]" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "a" / "bf16").exists()


def test_tensor_of_another_dtype(capsys, ckpts, tmp_path):
    import torch

    model = tmp_path / "m"
    shutil.copytree(ckpts["bf16"], model)
    _rewrite_tensor(model, "layers.1.self_attn.k_proj.bias", lambda t: t.to(torch.float16))
    code, err = _run(capsys, *_export(model, tmp_path / "a", "--dtype", "bf16"))
    assert code == 2 and "layers.1.self_attn.k_proj.bias is F16" in err and "torch_dtype says BF16" in err


def test_export_refuses_a_full_disk_before_writing(capsys, ckpts, tmp_path, monkeypatch):
    """bf16 -> fp32 converts every backbone weight: the bytes needed and the bytes free are both named."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
    code, err = _run(capsys, *_export(ckpts["bf16"], tmp_path / "a", "--dtype", "fp32"))
    assert code == 2 and "not enough disk for the low-memory fp32 export" in err and "1.00 kB free" in err
    assert len(err.splitlines()) == 1 and not list((tmp_path / "a").glob("*/backbone*"))


def test_init_model_refuses_a_full_disk(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 1000, 1000))
    code, err = _run(capsys, "init-model", "--preset", "large", str(tmp_path / "big"))
    assert code == 2 and "not enough disk for init-model" in err and "29.9" in err and "1.00 kB free" in err
    assert not (tmp_path / "big").exists() and list(tmp_path.iterdir()) == []


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_interrupted_export_keeps_the_good_graph_and_restarts_cleanly(capsys, ckpts, lowmem, tmp_path, monkeypatch):
    model, art = relink_copy(ckpts["bf16"], lowmem["bf16", "bf16"], tmp_path)
    good, manifest = _sha(art / "bf16" / "backbone.onnx"), (art / "manifest.json").read_text()
    (art / ".export-backbone-killed").mkdir()                       # left by a run that was killed
    import nextstep_trt.export.metatrace as metatrace

    real = metatrace.place_weights

    def dies_half_way(wanted, *args):
        real(wanted[: len(wanted) // 2], *args)                     # some weights placed, then the failure
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metatrace, "place_weights", dies_half_way)
    code, err = _run(capsys, *_export(model, art, "--dtype", "bf16"))
    assert code == 2 and "No space left on device" in err
    assert _sha(art / "bf16" / "backbone.onnx") == good and (art / "manifest.json").read_text() == manifest
    assert not list(art.glob(".export-*"))                          # scratch (and the stale one) removed
    monkeypatch.setattr(metatrace, "place_weights", real)
    assert _run(capsys, *_export(model, art, "--dtype", "bf16"))[0] == 0
    assert _sha(art / "bf16" / "backbone.onnx") == good


def test_bf16_needs_low_memory(capsys, ckpts, tmp_path):
    code, err = _run(capsys, "export", "--model", str(ckpts["bf16"]), "--out", str(tmp_path / "a"), *SMALL,
                     "--dtype", "bf16")
    assert code == 2 and "needs --low-memory" in err
