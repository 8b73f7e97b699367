"""The int8 KV cache of the ONNX Runtime int4 backbone (`quantize --kv-cache int8`): ONNX Runtime's kernel writes
the codes our numpy quantizer computes and attends the dequantized cache; the manifest types the ONNX Runtime file's
cache int8 and leaves the TensorRT file float; levels 1-3 meet the int4 bounds through the runtime, which keeps an
int8 cache that the kernel writes in place; the bench reads a quarter of the cache bytes; misuse is one line."""
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from test_precision_graphs import CachedReference
from test_weight_only import backbone_steps, store_no_kv

from nextstep_trt.cli import main
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_kvcache import HEADROOM, QMAX, dequantize, quantize, read_scales

pytestmark = pytest.mark.slow(seconds=30)


def _gqa_model(batch, heads, kv_heads, dim, capacity):
    """One GroupQueryAttention node with an int8 per-channel cache, as quantize_cache writes it."""
    f, i8 = TensorProto.FLOAT, TensorProto.INT8
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tot", "", "", "", "", "", "ks",
                                                    "vs"], ["o", "prk", "prv"], domain="com.microsoft",
                            num_heads=heads, kv_num_heads=kv_heads, k_quant_type="PER_CHANNEL",
                            v_quant_type="PER_CHANNEL", kv_cache_bit_width=8)
    vi = helper.make_tensor_value_info
    inputs = [vi("q", f, [batch, 1, heads * dim]), vi("k", f, [batch, 1, kv_heads * dim]),
              vi("v", f, [batch, 1, kv_heads * dim]), vi("pk", i8, [batch, kv_heads, capacity, dim]),
              vi("pv", i8, [batch, kv_heads, capacity, dim]), vi("sl", TensorProto.INT32, [batch]),
              vi("tot", TensorProto.INT32, []), vi("ks", f, [kv_heads * dim]), vi("vs", f, [kv_heads * dim])]
    graph = helper.make_graph([node], "gqa", inputs, [vi("o", f, None), vi("prk", i8, None), vi("prv", i8, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft",
                                                                                                   1)])


def test_the_kernel_writes_our_codes_and_attends_the_dequantized_cache():
    """Independent of the graph rewrite: one kernel call against numpy (codes bit-equal, ties included; attention
    as softmax(q k^T / sqrt(D)) v over the dequantized cache)."""
    b, h, kvh, d, past = 2, 4, 2, 16, 5
    rng = np.random.default_rng(0)
    scales = {n: rng.uniform(0.01, 0.1, kvh * d).astype(np.float32) for n in ("k", "v")}
    k = rng.standard_normal((b, 1, kvh * d)).astype(np.float32) * 3
    k[0, 0, :8] = (np.arange(8) - 3.5) * scales["k"][:8]                      # exact ties: rounded to even
    v = rng.standard_normal((b, 1, kvh * d)).astype(np.float32) * 3
    q = rng.standard_normal((b, 1, h * d)).astype(np.float32)
    cache = {n: rng.integers(-127, 128, (b, kvh, past + 1, d)).astype(np.int8) for n in ("k", "v")}
    session = ort.InferenceSession(_gqa_model(b, h, kvh, d, past + 1).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out, pk, pv = session.run(None, {"q": q, "k": k, "v": v, "pk": cache["k"], "pv": cache["v"],
                                     "sl": np.full(b, past, np.int32), "tot": np.array(past + 1, np.int32),
                                     "ks": scales["k"], "vs": scales["v"]})
    for new, written, s in ((k, pk, scales["k"]), (v, pv, scales["v"])):
        want = quantize(new.reshape(b, kvh, 1, d), s)[:, :, 0]
        assert np.array_equal(written[:, :, past], want)
    assert np.array_equal(pk[:, :, :past], cache["k"][:, :, :past])
    keys, values = dequantize(pk, scales["k"]), dequantize(pv, scales["v"])          # [B,KVH,C,D]
    qh = q.reshape(b, h, d)
    expect = np.empty_like(qh)
    for r in range(b):
        for head in range(h):
            g = head // (h // kvh)
            logits = keys[r, g] @ qh[r, head] / np.sqrt(d)
            w = np.exp(logits - logits.max())
            expect[r, head] = (w / w.sum()) @ values[r, g]
    assert np.abs(out.reshape(b, h, d) - expect).max() < 1e-4


@pytest.fixture(scope="module")
def art(tiny_artifacts, tiny_dir, tmp_path_factory):
    """The session's fp32 artifacts (copied) plus the int4 backbone with an int8 cache, made and validated by the
    CLI as a user would."""
    out = tmp_path_factory.mktemp("kv_cache") / "art"
    shutil.copytree(tiny_artifacts[0], out, ignore=shutil.ignore_patterns("engines"))
    assert main(["quantize", "--model", str(tiny_dir), "--artifacts", str(out), "--precision", "int4",
                 "--graphs", "backbone", "--block-size", "32", "--kv-cache", "int8"]) == 0
    return out


def test_the_manifest_types_the_onnx_runtime_cache_int8_and_keeps_the_tensorrt_file_float(art, tiny_bundle):
    manifest, layers = Manifest.load(art), tiny_bundle.config.backbone.num_layers
    entry = manifest.entry("backbone", Precision.INT4)
    ort_file = entry["deployments"]["onnxruntime"]
    assert ort_file["kv_cache"]["dtype"] == "int8" and entry["validation"]["ok"]
    calibration = entry["recipe"]["calibration"]
    assert calibration["samples"] > 10 and calibration["method"].startswith("the KV cache's max |x|")
    assert len(ort_file["io_dtypes"]) == 6 * layers and set(ort_file["io_dtypes"].values()) == {"int8"}
    assert manifest.spec("backbone", Precision.INT4, "onnxruntime").tensor("past_key.0").dtype == "int8"
    assert manifest.spec("backbone", Precision.INT4).tensor("past_key.0").dtype == "float32"   # TensorRT, engines
    types = {f: {v.name: v.type.tensor_type.elem_type for v in onnx.load(art / "int4" / f).graph.input}
             for f in ("backbone.onnx", "backbone.trt.onnx")}
    assert types["backbone.onnx"]["past_value.1"] == TensorProto.INT8
    assert types["backbone.trt.onnx"]["past_value.1"] == TensorProto.FLOAT
    scales = read_scales(art / "int4" / "backbone.onnx")
    bb = tiny_bundle.config.backbone
    assert sorted(scales) == sorted(f"past_{k}.{i}" for k in ("key", "value") for i in range(layers))
    assert all(s.shape == (bb.num_kv_heads * bb.head_dim,) and (s > 0).all() for s in scales.values())
    assert not read_scales(art / "fp32" / "backbone.onnx")


def test_levels_1_to_3_meet_the_int4_bounds_through_the_int8_cache(art, tiny_bundle):
    from nextstep_trt.runtime.api import open_backend
    from nextstep_trt.runtime.reference import LiveReference
    from nextstep_trt.runtime.verify import verify_backend

    reference = CachedReference(LiveReference(tiny_bundle, Manifest.load(art).profile))
    with open_backend("onnxruntime", artifacts=art, precision="int4") as backend:
        report = verify_backend(backend, reference, "int4", log=lambda *_: None)
    assert report.ok, report.worst_per_graph().table()
    assert {r.level for r in report.rows} == {1, 2, 3}
    assert not [n for n in report.notes if "fp16" in n]              # int4 graphs have no fp16 ops to caveat
    new_kv = [r.metrics.max_abs for r in report.rows
              if r.level == 1 and r.metrics is not None and r.tensor.startswith("new_")]
    assert new_kv and max(new_kv) > 1e-3                       # the K/V really went through int8 codes


def test_the_runtime_keeps_an_int8_cache_that_the_kernel_writes_in_place(art, monkeypatch):
    """The cache is int8 codes close to the fp32 graph's K/V; with the cache's own copy of the new K/V switched
    off, the conds are unchanged: the kernel itself stored them, in int8, through the in-place binding."""
    from nextstep_trt.runtime.api import open_backend

    with open_backend("onnxruntime", artifacts=art, precision="fp32") as b32:
        fp32 = backbone_steps(b32)
        cache32 = {n: a.copy() for n, a in b32.cache.buffers.items()}
    with open_backend("onnxruntime", artifacts=art, precision="int4") as b4:
        int4 = backbone_steps(b4)
        scales = read_scales(art / "int4" / "backbone.onnx")
        assert b4.cache.dtype == np.int8 and all(a.dtype == np.int8 for a in b4.cache.buffers.values())
        for name, codes in b4.cache.buffers.items():
            want, got = cache32[name][:, :, :7], dequantize(codes, scales[name])[:, :, :7]
            assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want), name
            assert np.abs(codes).max() <= QMAX and np.abs(codes).max() > QMAX / HEADROOM / 4, name
    cos = (fp32 * int4).sum(-1) / np.linalg.norm(fp32, axis=-1) / np.linalg.norm(int4, axis=-1)
    assert cos.min() > 0.99 and not np.allclose(fp32, int4, atol=1e-4)

    store_no_kv(monkeypatch)
    with open_backend("onnxruntime", artifacts=art, precision="int4") as b4:
        assert np.array_equal(backbone_steps(b4), int4)


def test_the_bench_step_reads_a_quarter_of_the_cache_bytes(art, tiny_dir):
    from nextstep_trt.bench.steps import StepGraph, StepOptions, time_decode_steps
    from nextstep_trt.ref.config import load_config

    cfg = load_config(tiny_dir)
    graphs = [StepGraph(f"ours {p}", "ours", p, art / p / "backbone.onnx", cfg) for p in ("fp32", "int4")]
    cells = time_decode_steps(graphs, StepOptions(pasts=(9,), rounds=1, steps=1), 10.0, None)
    fp32, int4 = cells[0].get("ours", "fp32"), cells[0].get("ours", "int4")
    assert int4.kv_bytes * 4 == fp32.kv_bytes > 0
    assert 0.99 < int4.cosine < 1.0


@pytest.mark.parametrize("flags,said", [
    (["--precision", "fp8", "--kv-cache", "int8"], "applies to --precision int8 or int4"),
    (["--precision", "int4", "--kv-cache", "int8", "--low-memory"], "--kv-cache int8 does not go with --low-memory"),
    (["--precision", "int4", "--kv-cache", "int8", "--graphs", "head_step"], "applies to the backbone graph"),
])
def test_misuse_is_one_line_and_exit_2(art, tiny_dir, capsys, flags, said):
    before = (art / "manifest.json").read_text()
    code = main(["quantize", "--model", str(tiny_dir), "--artifacts", str(art), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and said in err, err
    assert (art / "manifest.json").read_text() == before


def test_the_peer_gets_the_same_int8_cache_and_computes_the_same_step(art, tiny_dir):
    """onnxruntime-genai's int4 build with our scales as its kv_cache_scale_file: an int8 cache like ours (same
    bytes read), the same cond within the int4 bound of each other; the fp32 peer build keeps a float cache."""
    pytest.importorskip("onnxruntime_genai")                     # the `peer` extra (part of `full`)
    from nextstep_trt.bench.peer import PeerOptions, build_peer, kv_scale_file
    from nextstep_trt.bench.step_phase import _projector, our_cache_scales
    from nextstep_trt.bench.steps import StepGraph, StepOptions, time_decode_steps

    manifest = Manifest.load(art)
    cfg, scales = manifest.config, our_cache_scales(manifest, "int4")
    assert scales and not our_cache_scales(manifest, "fp32") and not our_cache_scales(manifest, "int8")
    kv = kv_scale_file(art, scales, cfg.backbone.num_layers)
    assert kv_scale_file(art, scales, cfg.backbone.num_layers) == kv                 # named by content
    path = build_peer(tiny_dir, art, "int4", PeerOptions(), log=lambda *_: None, kv_scales=kv)
    assert path.parent.name == f"int4-b32-acc4-{kv.stem.replace('kv-scales', 'kv8')}"
    types = {i.name: i.type.tensor_type.elem_type for i in onnx.load(path, load_external_data=False).graph.input}
    assert types["past_key_values.0.key"] == TensorProto.INT8
    graphs = [StepGraph("ours int4", "ours", "int4", art / "int4" / "backbone.onnx", cfg),
              StepGraph("peer int4", "peer", "int4", path, cfg, project=_projector(tiny_dir), scales=scales)]
    cell = time_decode_steps(graphs, StepOptions(pasts=(9,), rounds=1, steps=1), 10.0, None)[0]
    ours, peer = cell.get("ours", "int4"), cell.get("peer", "int4")
    assert peer.kv_bytes == ours.kv_bytes > 0 and peer.cosine > 0.99


@pytest.mark.parametrize("file,dtype", [("backbone.onnx", "int8"), ("backbone.trt.onnx", "float32")])
def test_inspect_lints_each_deployment_file_against_its_own_cache_type(art, capsys, file, dtype):
    code = main(["inspect", str(art / "int4" / file), "--manifest", str(art / "manifest.json"), "--graph",
                 "backbone"])
    out = capsys.readouterr().out
    past = next(line.split() for line in out.splitlines() if "past_value.1" in line)
    assert code == 0 and past[2] == dtype and "lint: 0 error(s)" in out, out


def test_an_int8_cache_has_its_own_row_in_the_tolerance_table():
    from nextstep_trt.core.errors import UserError
    from nextstep_trt.core.precision import KVCache
    from nextstep_trt.core.tolerances import INT4_BACKBONE, INT8_BACKBONE, graph_bound

    int8_kv = graph_bound("backbone", Precision.INT8, "new_key.0", KVCache.INT8)
    assert int8_kv.rel_l2 > INT8_BACKBONE.rel_l2 and int8_kv.mean_cosine < INT8_BACKBONE.mean_cosine
    assert graph_bound("backbone", Precision.INT4, "cond", KVCache.INT8) == INT4_BACKBONE
    assert graph_bound("backbone", Precision.INT8, "cond") == INT8_BACKBONE
    with pytest.raises(UserError, match="int8 KV cache"):
        graph_bound("head_step", Precision.INT4, "v", KVCache.INT8)


def test_int8_weights_with_an_int8_cache_install_against_their_own_row(art, tiny_dir, tmp_path, capsys):
    """On the tiny model the cache's rounding takes int8's level 1 past the weight-only int8 row (measured, see
    core/tolerances.py), so this install passes only because its own row is the one checked."""
    work = tmp_path / "art"
    shutil.copytree(art, work)
    code = main(["quantize", "--model", str(tiny_dir), "--artifacts", str(work), "--precision", "int8",
                 "--graphs", "backbone", "--block-size", "32", "--kv-cache", "int8"])
    out = capsys.readouterr().out
    entry = Manifest.load(work).entry("backbone", Precision.INT8)
    assert code == 0 and entry["validation"]["ok"], out
    assert entry["validation"]["worst_rel_l2"] > 0.03                 # beyond the int8 weight-only row's rel-L2
    assert entry["deployments"]["onnxruntime"]["kv_cache"]["dtype"] == "int8"


def test_scales_are_read_from_external_data_too(art, tmp_path):
    """A big graph's scales (Large: 1,024 per layer and kind) go to its external data file with the weights."""
    from onnx import numpy_helper

    from nextstep_trt.export.exporter import save

    model = onnx.load(art / "int4" / "backbone.onnx")
    for t in model.graph.initializer:
        if t.name.startswith("kv_cache/"):                    # Large-sized: over save()'s 1 KiB inline threshold
            t.CopyFrom(numpy_helper.from_array(np.tile(numpy_helper.to_array(t), 16), t.name))
    want = read_scales(model)
    save(model, tmp_path / "backbone.onnx", external_data=True)
    stored = onnx.load(tmp_path / "backbone.onnx", load_external_data=False)
    assert all(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer
               if t.name.startswith("kv_cache/"))
    got = read_scales(tmp_path / "backbone.onnx")
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_mark_intermediates_reads_the_int8_cache_and_compares_only_float_tensors(art, tiny_bundle):
    from nextstep_trt.engines.precision.intermediates import worst_layers
    from nextstep_trt.runtime.reference import LiveReference

    manifest = Manifest.load(art)
    (report,) = worst_layers(manifest, LiveReference(tiny_bundle, manifest.profile), Precision.INT4)
    names = {n.name for n in onnx.load(art / "fp32" / "backbone.onnx").graph.node}
    assert report.graph == "backbone" and report.worst.node in names and report.worst.metrics.rel_l2 > 1e-3
    assert not [r for r in report.rows if r.tensor.startswith(("new_key", "new_value"))]    # int8 codes: skipped
    assert all(np.isfinite(r.metrics.rel_l2) for r in report.rows)
