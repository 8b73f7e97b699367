"""Every backend refuses graph bytes that differ from what the manifest recorded at validation, naming the file;
later loads only stat files whose stamps are unchanged (counted hash calls, not timings)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from integrity_helpers import flip_bytes, flip_in_largest_initializer, gen_argv, one_line, run_cli

from nextstep_trt.core.errors import UserError


@pytest.fixture(scope="module")
def ext_art(tiny_artifacts, tiny_dir, tiny_bundle, tiny_profile, tmp_path_factory):
    """The session's artifacts with vae_decoder re-exported with external data (`export --external-data`)."""
    from nextstep_trt.export.run import ExportOptions, export_all

    out = tmp_path_factory.mktemp("ext") / "art"
    shutil.copytree(tiny_artifacts[0], out)
    export_all(ExportOptions(tiny_dir, out, ("vae_decoder",), tiny_profile, validate=False, external_data=True),
               tiny_bundle, log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def bf16_art(tiny_artifacts, tiny_dir, tiny_bundle, tmp_path_factory):
    """The session's artifacts plus a bf16 head_step graph (run by the onnx-reference backend on the CPU)."""
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.engines.precision.run import QuantizeOptions, quantize_all

    out = tmp_path_factory.mktemp("bf16") / "art"
    shutil.copytree(tiny_artifacts[0], out)
    quantize_all(QuantizeOptions(tiny_dir, out, Precision.BF16, ("head_step",), validate=False), tiny_bundle,
                 log=lambda *_: None)
    return out


@pytest.fixture
def hash_calls(monkeypatch):
    """Names of the files hashed in full from now on; stamps are trusted at once (no racy window)."""
    from nextstep_trt.core import digests

    calls: list[str] = []
    real = digests.sha256_file
    monkeypatch.setattr(digests, "RACY_NS", 0)
    monkeypatch.setattr(digests, "sha256_file", lambda p, *a: calls.append(Path(p).name) or real(p, *a))
    return calls


def test_onnxruntime_refuses_a_flipped_initializer(capsys, art, tiny_dir, tmp_path):
    graph = art / "fp32" / "vae_decoder.onnx"
    flip_in_largest_initializer(graph)
    out = tmp_path / "x.png"
    code, err, _ = run_cli(capsys, gen_argv(art, tiny_dir, out))
    assert code == 2 and one_line(err), err
    assert f"refusing {graph}: its bytes differ from those validated at export" in err
    assert not out.exists()


def test_a_flip_hidden_behind_restored_timestamps_is_still_found(capsys, art, tiny_dir, tmp_path):
    from nextstep_trt.runtime.ort_backend import OrtBackend

    OrtBackend(art).close()                            # every file hashed and stamped
    graph = art / "fp32" / "vae_decoder.onnx"
    st = graph.stat()
    flip_in_largest_initializer(graph)
    os.utime(graph, ns=(st.st_atime_ns, st.st_mtime_ns))   # same size and mtime; the ctime still moves
    code, err, _ = run_cli(capsys, gen_argv(art, tiny_dir, tmp_path / "x.png"))
    assert code == 2 and f"refusing {graph}" in err


def test_external_data_flip_is_refused(capsys, ext_art, tiny_dir, tmp_path):
    data = ext_art / "fp32" / "vae_decoder.onnx.data"
    entry = json.loads((ext_art / "manifest.json").read_text())["graphs"]["vae_decoder"]["precisions"]["fp32"]
    assert set(entry["hashes"]) == {"fp32/vae_decoder.onnx", "fp32/vae_decoder.onnx.data"}
    assert data.stat().st_size > 2 * (ext_art / "fp32" / "vae_decoder.onnx").stat().st_size   # the weights
    code, err, _ = run_cli(capsys, gen_argv(ext_art, tiny_dir, tmp_path / "ok.png"))
    assert code == 0, err
    flip_bytes(data, data.stat().st_size // 2)
    out = tmp_path / "x.png"
    code, err, _ = run_cli(capsys, gen_argv(ext_art, tiny_dir, out))
    assert code == 2 and one_line(err) and f"refusing {data}: its bytes differ" in err, err
    assert not out.exists()


def test_onnx_reference_backend_refuses_a_flipped_bf16_graph(bf16_art):
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.runtime.api import open_backend
    from nextstep_trt.runtime.onnx_reference_backend import ReferenceBackend

    with open_backend("onnxruntime", artifacts=bf16_art, precision="bf16") as backend:
        assert isinstance(backend, ReferenceBackend) and backend.graph_precision["head_step"] is Precision.BF16
    graph = bf16_art / "bf16" / "head_step.onnx"
    flip_in_largest_initializer(graph, 1024)
    with pytest.raises(UserError, match=f"refusing {graph}: its bytes differ"):
        open_backend("onnxruntime", artifacts=bf16_art, precision="bf16")


def test_second_load_only_stats(art, hash_calls):
    from nextstep_trt.runtime.ort_backend import OrtBackend

    manifest = json.loads((art / "manifest.json").read_text())
    files = sorted(Path(rel).name for g in manifest["graphs"].values() for rel in g["precisions"]["fp32"]["hashes"])
    OrtBackend(art).close()
    assert sorted(hash_calls) == files               # a copied folder: new inodes, every file hashed once
    hash_calls.clear()
    OrtBackend(art).close()
    assert hash_calls == []                          # stamps unchanged: stat only
    graph = art / "fp32" / "head_step.onnx"
    graph.write_bytes(graph.read_bytes())            # same bytes rewritten: new mtime/ctime
    OrtBackend(art).close()
    assert hash_calls == ["head_step.onnx"]          # only that file is hashed again (and still matches)


def test_a_stamp_taken_right_after_a_change_is_not_trusted(tmp_path, monkeypatch):
    from nextstep_trt.core import digests

    monkeypatch.setattr(digests, "RACY_NS", 3600 * 10**9)     # every stamp in this test counts as racy
    f = tmp_path / "f.bin"
    f.write_bytes(b"x" * 1000)
    first = digests.HashCache(tmp_path / ".integrity.json")
    first.sha256(f)
    assert first.save() and first.hashed == [f]
    again = digests.HashCache(tmp_path / ".integrity.json")
    assert again.cached(f) is None                   # the file may have changed within the same clock tick
    monkeypatch.setattr(digests, "RACY_NS", 0)
    assert again.cached(f) == hashlib.sha256(b"x" * 1000).hexdigest()


def test_verify_integrity_hashes_everything_and_names_the_file(capsys, art, tiny_dir):
    manifest = json.loads((art / "manifest.json").read_text())
    n = sum(len(g["precisions"]["fp32"]["hashes"]) for g in manifest["graphs"].values())
    code, err, out = run_cli(capsys, ["verify", "--artifacts", str(art), "--integrity"])
    assert code == 0, err
    code, err, out = run_cli(capsys, ["verify", "--artifacts", str(art), "--integrity", "--model", str(tiny_dir)])
    assert code == 0 and f"integrity: {n} artifact files, " in out and " 0 problem(s)" in out, out
    hashed = int(out.split("artifact files, ")[1].split()[0])
    assert hashed > n                                # in full despite fresh stamps: graphs and the model's files
    data = art / "fp32" / "backbone.onnx"
    flip_in_largest_initializer(data)
    code, err, out = run_cli(capsys, ["verify", "--artifacts", str(art), "--integrity"])
    assert code == 1 and f"integrity: {data}: its bytes differ" in err and one_line(err), err


def test_tensorrt_plan_is_hashed_once_then_stamped(tmp_path, hash_calls):
    """The plan check of the TensorRT backend (runtime/plans.py) takes the same stamps (no GPU needed for it)."""
    from nextstep_trt.runtime.plans import Target, check_plan

    folder = tmp_path / "art" / "engines" / "head_step" / "fp32" / "0123456789abcdef"
    folder.mkdir(parents=True)
    plan = os.urandom(50_000)
    (folder / "engine.plan").write_bytes(plan)
    target = Target("tensorrt-rtx", "1.7", "8.9")
    (folder / "manifest.json").write_text(json.dumps({"target": target.to_dict(), "plan_bytes": len(plan),
                                                      "plan_sha256": hashlib.sha256(plan).hexdigest()}))
    check_plan(folder, target)
    check_plan(folder, target)
    assert hash_calls == ["engine.plan"]
    flip_bytes(folder / "engine.plan", 1000)
    with pytest.raises(UserError, match="sha256 does not match"):
        check_plan(folder, target)
    (folder / "manifest.json").write_text("[1]")
    with pytest.raises(UserError, match="must hold a JSON object"):
        check_plan(folder, target)
