"""Paths read from a manifest, a golden folder, a Triton repository, config.json or a safetensors index stay inside
their root: '..', absolute paths and symlinks that leave it are refused with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from integrity_helpers import gen_argv, one_line, run_cli

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.paths import inside


def test_inside_rules(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("x")
    (root / "sub" / "f.txt").write_text("x")
    (root / "in_link").symlink_to(root / "sub" / "f.txt")
    (root / "out_link").symlink_to(tmp_path / "outside.txt")
    assert inside(root, "sub/f.txt", "t") == root / "sub" / "f.txt"
    assert inside(root, "in_link", "t") == root / "in_link"            # a link that stays inside is fine
    for bad, why in (("../outside.txt", "'..' part"), ("sub/../../outside.txt", "'..' part"),
                     (str(tmp_path / "outside.txt"), "absolute path"), ("out_link", "a symlink leaves"),
                     ("", "not a file path"), (5, "not a file path"), ("a\0b", "not a file path")):
        with pytest.raises(UserError, match=why):
            inside(root, bad, "t")
    with pytest.raises(UserError, match="hidden"):
        inside(root, ".export-x-1/g.onnx", "t", hidden=False)
    assert inside(root, "out_link", "t", follow_links=False) == root / "out_link"   # as written only


def _set_file(art: Path, graph: str, value: str) -> None:
    path = art / "manifest.json"
    data = json.loads(path.read_text())
    data["graphs"][graph]["precisions"]["fp32"]["file"] = value
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "scratch"])
def test_manifest_path_escape_is_refused(capsys, art, tiny_dir, tmp_path, kind):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(art / "fp32" / "vae_decoder.onnx", elsewhere / "vae_decoder.onnx")   # a loadable graph out there
    if kind == "dotdot":
        _set_file(art, "vae_decoder", "../elsewhere/vae_decoder.onnx")
        why = "leaves"
    elif kind == "absolute":
        _set_file(art, "vae_decoder", str(elsewhere / "vae_decoder.onnx"))
        why = "absolute path"
    elif kind == "symlink":
        (art / "fp32" / "vae_decoder.onnx").unlink()
        (art / "fp32" / "vae_decoder.onnx").symlink_to(elsewhere / "vae_decoder.onnx")
        why = "a symlink leaves the folder"
    else:
        (art / ".export-vae_decoder-x").mkdir()
        shutil.copy(art / "fp32" / "vae_decoder.onnx", art / ".export-vae_decoder-x" / "vae_decoder.onnx")
        _set_file(art, "vae_decoder", ".export-vae_decoder-x/vae_decoder.onnx")
        why = "hidden file or folder"
    out = tmp_path / "x.png"
    code, err, _ = run_cli(capsys, gen_argv(art, tiny_dir, out))
    assert code == 2 and one_line(err) and why in err and "vae_decoder" in err, err
    assert not out.exists()


def _golden(root: Path, graphs: dict) -> Path:
    root.mkdir()
    (root / "golden.json").write_text(json.dumps({"format": 1, "fingerprint": "f", "graphs": graphs,
                                                  "loop_cases": []}))
    return root


def test_golden_paths_stay_inside(tmp_path):
    from nextstep_trt.runtime.golden import GoldenReference

    with pytest.raises(UserError, match="unknown graph '../../etc'"):
        GoldenReference(_golden(tmp_path / "g1", {"../../etc": {"spec": {}, "cases": ["a"]}}))
    outside = tmp_path / "outside"
    outside.mkdir()
    np.savez(outside / "case_0.npz", **{"in/latents": np.zeros(2, np.float32)})
    g2 = _golden(tmp_path / "g2", {"vae_decoder": {"spec": {}, "cases": ["a"]}})
    (g2 / "level1").mkdir()
    (g2 / "level1" / "vae_decoder").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UserError, match="a symlink leaves the folder"):
        GoldenReference(g2).level1(SimpleNamespace(name="vae_decoder"))


def test_golden_damaged_files_are_named(tmp_path):
    from nextstep_trt.runtime.golden import GoldenReference

    g = _golden(tmp_path / "g", {"vae_decoder": {"spec": {}, "cases": ["a", "b"]}})
    (g / "level1" / "vae_decoder").mkdir(parents=True)
    (g / "level1" / "vae_decoder" / "case_0.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match="case_0.npz is not a readable npz file"):
        GoldenReference(g).level1(SimpleNamespace(name="vae_decoder"))
    np.savez(g / "level1" / "vae_decoder" / "case_0.npz", **{"in/x": np.zeros(1)})
    with pytest.raises(UserError, match="case_1.npz is missing from the golden folder"):
        GoldenReference(g).level1(SimpleNamespace(name="vae_decoder"))
    (g / "golden.json").write_text('["format"]')
    with pytest.raises(UserError, match="golden.json must hold a JSON object"):
        GoldenReference(g)
    (g / "golden.json").write_text(json.dumps({"format": 1, "graphs": [], "loop_cases": []}))
    with pytest.raises(UserError, match="'graphs' must be an object"):
        GoldenReference(g)


@pytest.fixture(scope="module")
def repo(tiny_artifacts, tiny_dir, tmp_path_factory):
    """A Triton repository written by `triton-repo` (hard links), with a stale scratch folder in the artifacts."""
    from nextstep_trt.serve.repo import RepoOptions, write_repo

    art = tmp_path_factory.mktemp("repo-src") / "art"
    shutil.copytree(tiny_artifacts[0], art)
    (art / ".export-backbone-dead").mkdir()
    (art / ".export-backbone-dead" / "backbone.onnx").write_bytes(b"junk")
    out = tmp_path_factory.mktemp("repo") / "repo"
    write_repo(RepoOptions(art, tiny_dir, out, edit=False, warmup=False))
    return out / "nextstep_t2i"


def test_repo_takes_no_scratch_and_stamps_its_copy(repo):
    art = repo / "assets" / "artifacts"
    assert not list(art.glob(".export-*")) and not (art / ".lock").exists()
    from nextstep_trt.export.manifest import Manifest

    manifest = Manifest.load(art)
    rels = [rel for g in manifest.data["graphs"].values() for rel in g["precisions"]["fp32"]["hashes"]]
    assert rels and all(manifest.hashes.cached(art / rel) is not None for rel in rels)   # the server only stats


@pytest.mark.parametrize("key,value,why", [
    ("artifacts", "../../elsewhere", "'..' part"),
    ("model_dir", "/etc", "absolute path"),
    ("artifacts", "", "not a file path"),
])
def test_repo_parameters_stay_inside(repo, key, value, why):
    from nextstep_trt.serve.triton_model import asset

    params = {"artifacts": "assets/artifacts", "model_dir": "assets/model", "link": "hardlink", key: value}
    with pytest.raises(UserError, match=why):
        asset(repo, params, key)
    assert asset(repo, {"artifacts": "assets/artifacts"}, "artifacts") == repo / "assets" / "artifacts"


def test_repo_link_leaving_the_model_folder(repo, tmp_path):
    from nextstep_trt.serve.triton_model import asset

    model = tmp_path / "model"
    shutil.copytree(repo, model, symlinks=True)
    shutil.rmtree(model / "assets" / "model")
    (model / "assets" / "model").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UserError, match="a symlink leaves the folder"):
        asset(model, {"model_dir": "assets/model", "link": "hardlink"}, "model_dir")
    shutil.rmtree(model / "assets" / "artifacts")
    (model / "assets" / "artifacts").symlink_to(repo / "assets" / "artifacts", target_is_directory=True)
    with pytest.raises(UserError, match="a symlink leaves the folder"):
        asset(model, {"artifacts": "assets/artifacts", "link": "hardlink"}, "artifacts")
    # a repository written with --link symlink: the artifacts link is the operator's choice; its files are checked
    # by the linked folder's own manifest
    assert asset(model, {"artifacts": "assets/artifacts", "link": "symlink"}, "artifacts").is_dir()


def test_model_folder_paths_stay_inside(tiny_dir, tmp_path):
    from nextstep_trt.ref.config import load_config
    from nextstep_trt.ref.weights import shard_files

    m = tmp_path / "m"
    shutil.copytree(tiny_dir, m)
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps(cfg | {"vae_name_or_path": "../elsewhere"}))
    with pytest.raises(UserError, match="vae_name_or_path: ../elsewhere leaves"):
        load_config(m)
    (m / "config.json").write_text(json.dumps(cfg))
    index = json.loads((m / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "/etc/passwd"
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="model.safetensors.index.json: shard: /etc/passwd is an absolute path"):
        shard_files(m)
