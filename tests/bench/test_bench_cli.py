"""`nextstep-trt bench` from the command line: the table, --json, --profile, and bad input in one line (exit 2)."""
from __future__ import annotations

import json

from nextstep_trt.cli import main


def _bench(tiny_dir, tiny_artifacts, *extra):
    return ["bench", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0]), "--height", "32", "--width",
            "32", "--steps", "3", "--cfg", "2", "--bandwidth-mib", "32", "--peer", "off", "--decode-past", "8",
            "--decode-rounds", "1", "--decode-steps", "2", *extra]


def _one_line_error(capsys, argv, text):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert text in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_cli_table_json_and_profile(capsys, tiny_dir, tiny_artifacts, tmp_path):
    out, prof = tmp_path / "bench.json", tmp_path / "prof"
    argv = _bench(tiny_dir, tiny_artifacts, "--backends", "torch,onnxruntime", "--batch", "2", "--json", str(out),
                  "--profile", str(prof), "--profile-tokens", "2")
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "per stage" in text and "targets" in text and "onnxruntime fp32" in text and "ours fp32" in text
    data = json.loads(out.read_text())
    assert [r["batch"] for r in data["runs"]] == [2, 2]
    assert list(prof.glob("ort_backbone_*.json")) and list(prof.glob("ort_head_sampler_*.json"))
    assert (prof / "torch_trace.json").is_file() and (prof / "ort_summary.txt").read_text().strip()
    assert set(data["profile_files"]) >= {str(prof / "torch_trace.json"), str(prof / "ort_summary.txt")}


def test_cli_unknown_backend(capsys, tiny_dir, tiny_artifacts):
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--backends", "torch,onnxruntim"), "unknown backend")


def test_cli_batch_above_profile(capsys, tiny_dir, tiny_artifacts):
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--batch", "1,5"), "exceeds the exported max batch 4")


def test_cli_bad_precision_list_and_decode_flags(capsys, tiny_dir, tiny_artifacts):
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--precision", "fp32,fp32"), "distinct")
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--precision", "fp32,int3"), "unknown precision")
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--decode-past", "0"), "--decode-past takes")
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--max-spread", "1"), "--max-spread must be > 1")


def test_cli_bad_batch_and_missing_artifacts(capsys, tiny_dir, tiny_artifacts):
    _one_line_error(capsys, _bench(tiny_dir, tiny_artifacts, "--batch", "one"), "--batch takes")
    _one_line_error(capsys, ["bench", "--model", str(tiny_dir), "--backends", "onnxruntime"], "need --artifacts")


def test_every_bench_and_floor_flag_has_a_help_text():
    from nextstep_trt.cli import _available, build_parser

    parser = build_parser(_available())
    subs = next(a for a in parser._actions if a.choices and "bench" in a.choices).choices
    for command in ("bench", "floor"):
        missing = [a.dest for a in subs[command]._actions if not a.help]
        assert not missing, (command, missing)
