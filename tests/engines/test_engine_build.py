"""TensorRT-RTX builds every fp32 graph of the tiny model for compute capability 8.9 (no GPU needed); the built
engines' I/O and profiles match the spec; an unchanged graph is a cache hit."""
import time

import pytest
from engine_helpers import build, copy_artifacts, needs_rtx

from nextstep_trt.export.manifest import Manifest, sha256_file
from nextstep_trt.export.profile import GRAPHS


@pytest.fixture(scope="module")
def built(tiny_artifacts, tmp_path_factory):
    """(artifacts copy, {graph: EngineRecord}) after building every fp32 graph once."""
    needs_rtx()
    art = copy_artifacts(tiny_artifacts[0], tmp_path_factory.mktemp("build") / "art")
    return art, {g: build(art, g) for g in Manifest.load(art).graphs}


def test_every_fp32_graph_builds_for_cc_89(built):
    import tensorrt_rtx

    art, records = built
    assert set(records) == set(GRAPHS)
    for graph, rec in records.items():
        m = rec.manifest
        plan = rec.folder / "engine.plan"
        assert not rec.cached and plan.stat().st_size == m["plan_bytes"] > 10_000
        assert sha256_file(plan) == m["plan_sha256"]
        assert m["target"] == {"flavor": "tensorrt-rtx", "version": tensorrt_rtx.__version__,
                               "compute_capability": "8.9", "gpu": None}
        assert rec.folder.parent == art / "engines" / graph / "fp32" and rec.folder.name == m["key"][:16]


def test_engine_io_matches_the_spec(built):
    art, records = built
    manifest = Manifest.load(art)
    for graph, rec in records.items():
        spec = manifest.spec(graph)
        io = {r["name"]: r for r in rec.manifest["io"]}
        assert [n for n, r in io.items() if r["mode"] == "input"] == spec.input_names
        assert [n for n, r in io.items() if r["mode"] == "output"] == spec.output_names
        for t in spec.inputs + spec.outputs:
            assert io[t.name]["dtype"] == t.dtype, (graph, t.name)
            assert io[t.name]["shape"] == [-1 if isinstance(a, str) else a for a in t.axes], (graph, t.name)


def test_engine_profiles_match_the_spec(built):
    art, records = built
    manifest = Manifest.load(art)
    for graph, rec in records.items():
        spec = manifest.spec(graph)
        profiles = rec.manifest["profiles"]
        assert [p["name"] for p in profiles] == [p.name for p in spec.profiles]
        for stored, prof in zip(profiles, spec.profiles):
            for t in spec.inputs:
                want = {w: list(t.shape(prof.sizes(w))) for w in ("min", "opt", "max")}
                assert stored["shapes"][t.name] == want, (graph, prof.name, t.name)


def test_backbone_has_a_prefill_and_a_decode_profile(built):
    art, records = built
    spec = Manifest.load(art).spec("backbone")
    cap, seq_max = spec.attrs["kv_capacity"], spec.attrs["max_prompt_tokens"]
    prefill, decode = records["backbone"].manifest["profiles"]
    rows_max = spec.envelope()["rows"].max
    assert prefill["name"] == "prefill" and decode["name"] == "decode"
    # TensorRT-RTX accepted the prefill profile with an empty cache (past min = 0) as the spec states it
    assert prefill["shapes"]["past_mask"] == {"min": [1, 0], "opt": [2, cap], "max": [rows_max, cap]}
    assert prefill["shapes"]["input_ids"] == {"min": [1, 1], "opt": [2, min(64, seq_max)], "max": [rows_max, seq_max]}
    assert decode["shapes"]["input_ids"] == {"min": [1, 1], "opt": [2, 1], "max": [rows_max, 1]}
    assert decode["shapes"]["past_key.0"]["min"][2] == 1 and decode["shapes"]["past_key.0"]["max"][2] == cap


def test_an_unchanged_graph_is_not_rebuilt(built):
    art, records = built
    for graph, first in records.items():
        plan = first.folder / "engine.plan"
        mtime = plan.stat().st_mtime_ns
        start = time.perf_counter()
        again = build(art, graph)
        assert again.cached and again.folder == first.folder and again.manifest["key"] == first.manifest["key"]
        assert time.perf_counter() - start < 1.0 and plan.stat().st_mtime_ns == mtime


def test_build_cli_reports_cache_hits(built, capsys):
    from nextstep_trt.cli import main

    art, records = built
    assert main(["build", "--artifacts", str(art), "--precision", "fp32", "--compute-capability", "8.9",
                 "--flavor", "tensorrt-rtx"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["graph", "precision", "flavor", "cc", "seconds", "plan_mib", "cached", "key"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == set(records)
    for graph, cells in rows.items():
        assert cells[1:4] == ["fp32", "tensorrt-rtx", "8.9"] and cells[6] == "yes"
        assert cells[7] == records[graph].manifest["key"][:16]


def test_the_builder_checks_network_io_against_the_spec(built):
    """A spec that disagrees with the graph (here: a retyped input) is refused before building."""
    from nextstep_trt.core.errors import UserError
    from nextstep_trt.engines.builder import check_network_io
    from nextstep_trt.export.trt_check import trt_parse

    art, _ = built
    manifest = Manifest.load(art)
    parsed = trt_parse(manifest.path("head_step"))
    spec = manifest.spec("head_step")
    assert len(check_network_io(spec, parsed.inputs, parsed.outputs)) == 4
    with pytest.raises(UserError, match=r"head_step.x: the network has float32 \[-1, 16\], the spec says float16"):
        check_network_io(spec.with_dtypes({"x": "float16"}), parsed.inputs, parsed.outputs)
