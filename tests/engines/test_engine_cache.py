"""The engine cache: what changes the key, what is refused, and that a failed build never replaces a good plan."""
import dataclasses
import errno
import json

import numpy as np
import onnx
import pytest
from engine_helpers import build, copy_artifacts, listing, needs_rtx, rerecord, rtx
from onnx import numpy_helper

from nextstep_trt.core.errors import UserError
from nextstep_trt.engines.cache import cache_key, key_inputs
from nextstep_trt.export.manifest import Manifest, sha256_file
from nextstep_trt.runtime.plans import check_plan, find_plan


@pytest.fixture
def art(tiny_artifacts, tmp_path):
    needs_rtx()
    return copy_artifacts(tiny_artifacts[0], tmp_path / "art")


def _key(art, graph="head_step", precision="fp32", manifest=None, opts=None, target=None):
    o, t = rtx()
    return cache_key(key_inputs(manifest or Manifest.load(art), graph, precision, opts or o, target or t))


def _edit_weight(path, external=False):
    """Change one weight of a graph (optionally moving the weights into external data first)."""
    model = onnx.load(path)
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    if not external:
        arr = numpy_helper.to_array(init).copy()
        arr.flat[0] += 1.0
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, path, save_as_external_data=external, location=f"{path.name}.data", size_threshold=1024)
    rerecord(path.parents[1], path.stem)


def test_key_is_stable_and_changes_with_each_input(art):
    base = _key(art)
    assert _key(art) == base
    o, t = rtx()
    changed = {
        "opt level": _key(art, opts=dataclasses.replace(o, opt_level=4)),
        "workspace": _key(art, opts=dataclasses.replace(o, workspace_bytes=2**30)),
        "builder flag": _key(art, opts=dataclasses.replace(o, extra_flags=("STRICT_NANS",))),
        "compute capability": _key(art, target=dataclasses.replace(t, compute_capability="12.0")),
        "flavour": _key(art, target=dataclasses.replace(t, flavor="tensorrt", gpu="NVIDIA L4")),
        "version": _key(art, target=dataclasses.replace(t, version="1.0.0")),
    }
    manifest = Manifest.load(art)
    entry = manifest.data["graphs"]["head_step"]
    entry["precisions"]["fp16"] = dict(entry["precisions"]["fp32"])
    changed["precision"] = _key(art, precision="fp16", manifest=manifest)
    entry["precisions"]["fp16"]["recipe"] = {"exclude": ["adaLN"]}
    changed["quantization recipe"] = _key(art, precision="fp16", manifest=manifest)
    entry["spec"]["profiles"][0]["dims"][0]["max"] += 1
    changed["profile"] = _key(art, manifest=manifest)
    assert base not in changed.values() and len(set(changed.values())) == len(changed), changed
    # where the timing cache lives does not change the engine
    assert _key(art, opts=dataclasses.replace(o, timing_cache=art / "elsewhere.cache")) == base


def test_key_hashes_the_onnx_bytes_and_external_data(art):
    path = art / "fp32" / "head_step.onnx"
    base = _key(art)
    _edit_weight(path)
    edited = _key(art)
    assert edited != base
    _edit_weight(path, external=True)               # same weights, now in head_step.onnx.data
    data = path.parent / "head_step.onnx.data"
    outside = _key(art)
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 1
    data.write_bytes(bytes(raw))
    rerecord(art, "head_step")
    assert _key(art) not in (outside, edited, base)


def _tamper(folder, **target):
    m = json.loads((folder / "manifest.json").read_text())
    m["target"].update(target)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("field,value,reason", [("version", "1.0.0", "version differs"),
                                                ("flavor", "tensorrt", "flavour differs"),
                                                ("compute_capability", "8.6", "compute capability differs")])
def test_a_plan_for_another_tensorrt_or_gpu_is_refused(art, field, value, reason):
    rec = build(art, "head_step")
    _, target = rtx()
    assert check_plan(rec.folder, target)["key"] == rec.manifest["key"]
    _tamper(rec.folder, **{field: value})
    with pytest.raises(UserError, match=reason):
        check_plan(rec.folder, target)
    with pytest.raises(UserError, match=f"refusing .*{reason}"):
        build(art, "head_step")                     # the cache never silently reuses it
    with pytest.raises(UserError, match=reason):
        find_plan(art, "head_step", "fp32", target, sha256_file(art / "fp32" / "head_step.onnx"))


def test_a_truncated_or_corrupted_plan_is_refused(art):
    rec = build(art, "head_step")
    plan = rec.folder / "engine.plan"
    good = plan.read_bytes()
    _, target = rtx()
    plan.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="truncated"):
        check_plan(rec.folder, target)
    with pytest.raises(UserError, match="truncated"):
        build(art, "head_step")
    plan.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    with pytest.raises(UserError, match="sha256 does not match"):
        check_plan(rec.folder, target)
    rebuilt = build(art, "head_step", force=True)
    assert not rebuilt.cached and check_plan(rebuilt.folder, target)


def test_find_plan_ignores_plans_of_another_onnx_graph(art):
    rec = build(art, "head_step")
    _, target = rtx()
    sha = sha256_file(art / "fp32" / "head_step.onnx")
    assert find_plan(art, "head_step", "fp32", target, sha) == rec.folder / "engine.plan"
    with pytest.raises(UserError, match="built from another version of the ONNX graph"):
        find_plan(art, "head_step", "fp32", target, "0" * 64)
    with pytest.raises(UserError, match="no fp32 vae_decoder engine"):
        find_plan(art, "vae_decoder", "fp32", target, sha)


def _intact(rec, before):
    _, target = rtx()
    assert check_plan(rec.folder, target)["plan_sha256"] == rec.manifest["plan_sha256"]
    assert listing(rec.folder.parent) == before


def test_an_unparseable_graph_leaves_the_previous_plan(art):
    rec = build(art, "head_step")
    before = listing(rec.folder.parent)
    path = art / "fp32" / "head_step.onnx"
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "Gemm")
    node.op_type = "NoSuchOp"
    onnx.save(model, path)
    rerecord(art, "head_step")                      # recorded as exported: the parser, not integrity, refuses it
    with pytest.raises(UserError, match=f"cannot parse .*{node.name}: NoSuchOp"):
        build(art, "head_step")
    _intact(rec, before)


def test_a_builder_exception_or_full_disk_leaves_the_previous_plan(art, monkeypatch):
    import nextstep_trt.engines.cache as cache

    rec = build(art, "head_step")
    before = listing(rec.folder.parent)

    def explode(*args, **kwargs):
        raise RuntimeError("builder crashed")

    monkeypatch.setattr(cache, "build_plan", explode)
    with pytest.raises(RuntimeError, match="builder crashed"):
        build(art, "head_step", force=True)        # same key: the good plan is the one at risk
    _intact(rec, before)
    monkeypatch.undo()

    def full_disk(tmp, *args):
        (tmp / "engine.plan").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "_write", full_disk)
    with pytest.raises(UserError, match="out of disk .*previous engine is untouched"):
        build(art, "head_step", force=True)
    _intact(rec, before)
