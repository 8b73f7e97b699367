"""Artifacts run only with the checkpoint they were exported from: another --model of the same architecture is
refused naming both folders (CLI, API, server); a folder holding only configs and tokenizer is checked on those,
and the run says so."""
from __future__ import annotations

import json
import shutil

import pytest
from integrity_helpers import gen_argv, one_line, run_cli

from nextstep_trt.core.errors import UserError


@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """The tiny architecture with other random weights (seed 1): config.json is identical, only the bytes differ."""
    from nextstep_trt.ref.checkpoint import init_random, save_model_folder
    from nextstep_trt.ref.config import tiny

    out = tmp_path_factory.mktemp("other") / "other"
    model, vae = init_random(tiny(), seed=1)
    save_model_folder(out, tiny(), model, vae, max_shard_bytes=2**17)
    return out


def test_same_architecture_other_weights_is_refused_naming_both(capsys, tiny_artifacts, tiny_dir, other_weights,
                                                                tmp_path):
    art = tiny_artifacts[0]
    assert json.loads((other_weights / "config.json").read_text()) == json.loads((tiny_dir / "config.json").read_text())
    out = tmp_path / "x.png"
    code, err, _ = run_cli(capsys, gen_argv(art, other_weights, out))
    assert code == 2 and one_line(err), err
    assert f"was exported from {tiny_dir.resolve()}, but --model {other_weights} differs" in err
    assert "safetensors has other bytes" in err and not out.exists()
    from nextstep_trt.runtime.api import open_backend
    from nextstep_trt.serve.handler import open_runner

    with pytest.raises(UserError, match="differs"):
        open_backend("onnxruntime", other_weights, art)          # the Python API
    with pytest.raises(UserError, match="differs"):
        open_runner(art, other_weights)                           # the server's model
    code, err, _ = run_cli(capsys, ["verify", "--artifacts", str(art), "--model", str(other_weights),
                                    "--levels", "1"])
    assert code == 2 and "differs" in err, err


def _config_only(src, dst):
    """What `triton-repo` copies of a model folder: configs and tokenizer files, no weights."""
    from nextstep_trt.ref.identity import model_files

    for rel, kind in model_files(src).items():
        if kind != "weights":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, dst / rel)
    return dst


def test_a_weightless_folder_is_checked_on_configs_and_tokenizer(capsys, tiny_artifacts, tiny_dir, tmp_path):
    small = _config_only(tiny_dir, tmp_path / "small")
    assert not list(small.rglob("*.safetensors")) and not list(small.rglob("checkpoint.pt"))
    code, err, out = run_cli(capsys, gen_argv(tiny_artifacts[0], small, tmp_path / "ok.png"))
    assert code == 0, err
    assert f"note: {small} holds no weights (the graphs carry them): its config and tokenizer match" in out
    data = (small / "tokenizer.json").read_bytes()
    assert b'"[PAD]"' in data
    (small / "tokenizer.json").write_bytes(data.replace(b'"[PAD]"', b'"[PAX]"', 1))   # same size, other bytes
    code, err, _ = run_cli(capsys, gen_argv(tiny_artifacts[0], small, tmp_path / "x.png"))
    assert code == 2 and one_line(err) and "tokenizer.json has other bytes" in err, err
