"""Model folders: exact save/load round trips, tampered checkpoints fail with a UserError naming the problem."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.checkpoint import init_random, load_model, save_model_folder
from nextstep_trt.ref.config import bench, config_from_dicts, large, model_config_dict, tiny, vae_config_dict

INDEX = "model.safetensors.index.json"


def assert_same_state(loaded: torch.nn.Module, original: torch.nn.Module, what: str):
    a, b = loaded.state_dict(), original.state_dict()
    assert set(a) == set(b), f"{what}: key sets differ: {sorted(set(a) ^ set(b))[:5]}"
    for k in b:
        assert a[k].dtype == b[k].dtype, f"{what} {k}: dtype {a[k].dtype} != {b[k].dtype}"
        assert torch.equal(a[k], b[k]), f"{what} {k}: values differ"


@pytest.mark.parametrize("vae_format", ["pt", "safetensors"])
def test_round_trip_exact(tmp_path, vae_format):
    cfg = tiny()
    model, vae = init_random(cfg, seed=11)
    out = save_model_folder(tmp_path / "m", cfg, model, vae, max_shard_bytes=2**16, vae_format=vae_format)
    index = json.loads((out / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1, "the tiny checkpoint should span several shards"
    assert set(index["weight_map"]) == set(model.state_dict())
    vae_file = out / "vae" / ("checkpoint.pt" if vae_format == "pt" else "model.safetensors")
    assert vae_file.is_file()
    assert not (out / "vae" / ("model.safetensors" if vae_format == "pt" else "checkpoint.pt")).exists()
    bundle = load_model(out)
    assert bundle.config == cfg
    assert_same_state(bundle.model, model, "model")
    assert_same_state(bundle.vae, vae, "vae")
    # and the loaded modules are not the saved objects (really read from disk)
    assert bundle.model is not model and bundle.model.lm_head.weight.data_ptr() != model.lm_head.weight.data_ptr()


@pytest.fixture
def copy_of(tiny_dir, tmp_path):
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_dir, dst)
    return dst


def shard_of(folder: Path, key: str) -> Path:
    return folder / json.loads((folder / INDEX).read_text())["weight_map"][key]


def rewrite_shard(folder: Path, key: str, edit) -> None:
    """Load the shard holding ``key``, apply edit(tensors) in place, write it back and fix the index."""
    path = shard_of(folder, key)
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if k in tensors or v != path.name}
    index["weight_map"].update({k: path.name for k in tensors})
    (folder / INDEX).write_text(json.dumps(index))


def load_error(folder: Path) -> str:
    with pytest.raises(UserError) as info:
        load_model(folder, with_tokenizer=False)
    return str(info.value)


def test_missing_key(copy_of):
    key = "layers.1.self_attn.k_proj.bias"
    rewrite_shard(copy_of, key, lambda t: t.pop(key))
    msg = load_error(copy_of)
    assert "missing" in msg and key in msg


def test_extra_key(copy_of):
    key = "layers.0.mlp.up_proj.weight"
    rewrite_shard(copy_of, key, lambda t: t.__setitem__("layers.0.mlp.surprise.weight", torch.zeros(3)))
    msg = load_error(copy_of)
    assert "unexpected" in msg and "layers.0.mlp.surprise.weight" in msg


def test_wrong_shape(copy_of):
    key = "image_in_projector.weight"
    rewrite_shard(copy_of, key, lambda t: t.__setitem__(key, torch.zeros(64, 17)))
    msg = load_error(copy_of)
    assert "shape" in msg and key in msg and "17" in msg


def test_ignored_gen_pos_embed_is_accepted(copy_of):
    key = "norm.weight"
    rewrite_shard(copy_of, key, lambda t: t.__setitem__("gen_pos_embed", torch.zeros(1, 4, 64)))
    bundle = load_model(copy_of, with_tokenizer=False)
    assert "gen_pos_embed" not in bundle.model.state_dict()


def test_missing_shard(copy_of):
    path = shard_of(copy_of, "lm_head.weight")
    path.unlink()
    msg = load_error(copy_of)
    assert path.name in msg


def test_vae_missing_key(copy_of):
    pt = copy_of / "vae" / "checkpoint.pt"
    state = torch.load(pt, weights_only=True)
    state.pop("decoder.mid.attn_1.q.bias")
    torch.save(state, pt)
    msg = load_error(copy_of)
    assert "decoder.mid.attn_1.q.bias" in msg



def _set_marker(path):
    Path(path).write_text("unpickled!")
    return {}


class Evil:
    """Unpickling this with weights_only=False would call _set_marker (arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_set_marker, (str(self.marker),))


def test_vae_pickle_with_code_is_refused(copy_of, tmp_path):
    marker = tmp_path / "marker.txt"
    pt = copy_of / "vae" / "checkpoint.pt"
    state = torch.load(pt, weights_only=True)
    state["payload"] = Evil(marker)
    torch.save(state, pt)
    msg = load_error(copy_of)
    assert "checkpoint.pt" in msg
    assert not marker.exists(), "the VAE checkpoint was unpickled with weights_only=False"


def test_vae_file_missing(copy_of):
    (copy_of / "vae" / "checkpoint.pt").unlink()
    assert "checkpoint.pt" in load_error(copy_of)


@pytest.mark.parametrize("preset", [tiny, large, bench], ids=["tiny", "large", "bench"])
def test_config_json_round_trip(preset):
    cfg = preset()
    model = json.loads(json.dumps(model_config_dict(cfg)))
    vae = json.loads(json.dumps(vae_config_dict(cfg.vae)))
    back = config_from_dicts(model, vae)
    assert back == cfg
    assert back.fingerprint() == cfg.fingerprint()
    # official field names are used
    assert model["num_hidden_layers"] == cfg.backbone.num_layers and model["boi"] == cfg.tokens.boi
    assert model["image_placeholder_id"] == cfg.tokens.placeholder and model["fm_head_dim"] == cfg.head.dim
    assert vae["ch_mult"] == list(cfg.vae.ch_mult) and vae["scaling_factor"] == cfg.vae.scaling_factor


def test_config_json_large_defaults():
    """A nearly empty config takes Large's values; Flux's ``scale_factor`` spelling is read."""
    cfg = config_from_dicts({}, {"scale_factor": 0.3611})
    assert cfg.backbone == large().backbone and cfg.head == large().head
    assert cfg.vae.scaling_factor == 0.3611
