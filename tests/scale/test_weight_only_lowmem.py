"""`quantize --precision int4 --low-memory` on the tiny bf16 checkpoint (issue 18 point 6): the backbone streamed
from the shards holds exactly the codes the in-memory path makes from the same weights, passes level 1 whole,
keeps no link to the shards, refuses a wrong code before installing anything, and its TensorRT graph builds."""
import hashlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nextstep_trt.cli import main
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest

pytestmark = pytest.mark.slow(seconds=40)      # idle seconds, roughly: scheduled first (tests/conftest.py)

BLOCK = 16


def _quantize(model_dir, art, low_memory: bool, bundle=None):
    from nextstep_trt.engines.precision.options import QuantizeOptions
    from nextstep_trt.engines.precision.run import quantize_all
    from nextstep_trt.engines.precision.weightonly_lowmem import quantize_low_memory

    opts = QuantizeOptions(model_dir, art, Precision.INT4, ("backbone",), block_size=BLOCK, low_memory=low_memory)
    return quantize_low_memory(opts, log=lambda *_: None) if low_memory else \
        quantize_all(opts, bundle, log=lambda *_: None)


@pytest.fixture(scope="module")
def pair(ckpts, ordinary, tmp_path_factory):
    """(streamed, in-memory) int4 backbones of the bf16 checkpoint, each in its own copy of the fp32 export."""
    from nextstep_trt.ref.checkpoint import load_model

    root = tmp_path_factory.mktemp("int4-lowmem")
    low, mem = (shutil.copytree(ordinary["bf16"], root / name) for name in ("low", "mem"))
    _quantize(ckpts["bf16"], low, True)
    _quantize(ckpts["bf16"], mem, False, load_model(ckpts["bf16"]))
    return low, mem


def _codes(art) -> dict[tuple, tuple]:
    """{checkpoint keys of a linear: (packed codes, scales)} of the int4 backbone's MatMulNBits nodes."""
    entry = Manifest.load(art).entry("backbone", Precision.INT4)
    params = {q["node"]: tuple(q["params"]) for q in entry["recipe"]["quantized"]}
    model = onnx.load(art / "int4" / "backbone.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {params[n.name]: (inits[n.input[1]], inits[n.input[2]])
            for n in model.graph.node if n.op_type == "MatMulNBits"}


def test_streamed_codes_equal_the_in_memory_path(pair):
    low, mem = (_codes(a) for a in pair)
    assert len(low) == 8 and set(low) == set(mem)        # per layer the fused q/k/v, o_proj, fused gate/up, down
    for keys, (b, s) in low.items():
        assert np.array_equal(b, mem[keys][0]) and np.array_equal(s, mem[keys][1]), keys


def test_streamed_graph_passes_level_one_whole(pair, ckpts):
    """The whole streamed ONNX Runtime graph against the reference over every profile case (what quantize
    validates without --low-memory), not only its layer spot check."""
    from nextstep_trt.export.validate import ort_runner, validate_graph
    from nextstep_trt.ref.checkpoint import load_model

    low, _ = pair
    manifest = Manifest.load(low)
    entry = manifest.entry("backbone", Precision.INT4)
    assert entry["low_memory"] and entry["validation"]["ok"]
    assert {r.split()[0] for r in [entry["validation"]["worst_case"]]} == {"layer"}     # the spot check ran
    spec = manifest.spec("backbone", Precision.INT4)
    report = validate_graph(load_model(ckpts["bf16"]), spec, ort_runner(low / "int4" / "backbone.onnx", spec),
                            manifest.profile, Precision.INT4)
    assert report.rows and report.ok, report.table()


def test_deployments_are_self_contained_and_checked(pair):
    low, _ = pair
    entry = Manifest.load(low).entry("backbone", Precision.INT4)
    folder = low / "int4"
    assert all(p.stat().st_nlink == 1 and "safetensors" not in p.name for p in folder.iterdir())
    for name in ("backbone.onnx", "backbone.trt.onnx"):
        model = onnx.load(folder / name, load_external_data=False)
        locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations and all((folder / loc).is_file() for loc in locations), name
    trt = onnx.load(folder / "backbone.trt.onnx", load_external_data=False)
    assert max(o.version for o in trt.opset_import if o.domain in ("", "ai.onnx")) >= 21
    assert sum(n.op_type == "DequantizeLinear" for n in trt.graph.node) == 8
    assert entry["deployments"]["check"]["same_codes_and_scales"] and entry["trt_parse"]["ok"]
    assert set(entry["hashes"]) == {f"int4/{p.name}" for p in folder.iterdir()}


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_wrong_code_is_refused_and_the_installed_pair_kept(pair, ckpts, tmp_path, monkeypatch, capsys):
    from nextstep_trt.engines.precision import weightonly_stream
    from nextstep_trt.engines.precision.blockquant import Quantized, quantize

    art = shutil.copytree(pair[0], tmp_path / "art")
    before = {p.name: _sha(p) for p in (art / "int4").iterdir()}

    def one_code_off(w, bits, block, clip=None):
        qw = quantize(w, bits, block, clip)
        q = qw.q.copy()
        q[0, 0] += 1 if q[0, 0] < 0 else -1
        return Quantized(q, qw.scale, bits, block)

    monkeypatch.setattr(weightonly_stream, "quantize", one_code_off)
    code = main(["quantize", "--model", str(ckpts["bf16"]), "--artifacts", str(art), "--precision", "int4",
                 "--graphs", "backbone", "--block-size", str(BLOCK), "--low-memory"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "steps from its source" in err, err
    assert {p.name: _sha(p) for p in (art / "int4").iterdir()} == before
    assert not [p for p in art.iterdir() if p.name.startswith(".scratch")]


@pytest.mark.parametrize("flags,message", [
    (["--precision", "fp8", "--low-memory"], "--low-memory applies to --precision int8 or int4 only"),
    (["--precision", "int4", "--low-memory", "--method", "awq"], "does not go with --method awq"),
    (["--precision", "int8", "--low-memory", "--sensitivity"], "does not go with --sensitivity"),
    (["--precision", "int4", "--low-memory", "--exclude", "layers.*.o_proj"],
     "--exclude 'layers.*.o_proj' match(es) no parameter"),
])
def test_low_memory_refuses_what_needs_the_model_in_memory(ckpts, tmp_path, capsys, flags, message):
    code = main(["quantize", "--model", str(ckpts["bf16"]), "--artifacts", str(tmp_path)] + flags)
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_streamed_tensorrt_graph_builds_with_tensorrt_rtx(pair, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed (pip install tensorrt-rtx)")
    art = shutil.copytree(pair[0], tmp_path / "art")
    assert main(["build", "--artifacts", str(art), "--precision", "int4", "--graphs", "backbone",
                 "--flavor", "tensorrt-rtx", "--compute-capability", "8.9"]) == 0
    plans = list((art / "engines" / "backbone" / "int4").glob("*/engine.plan"))
    assert len(plans) == 1 and plans[0].stat().st_size > 0
