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


def test_every_flag_of_every_command_has_a_help_text_and_one_default():
    """Every flag says what it does and shows its default exactly once (argparse's formatter adds "(default: X)"
    unless the help already says it), switches and required flags excepted."""
    import argparse

    from nextstep_trt.cli import HelpFormatter, _available, build_parser

    parser = build_parser(_available())
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"bench", "floor", "generate", "export", "quantize", "serve"} <= set(subs)
    for command, sub in subs.items():
        formatter = HelpFormatter(command)
        for a in (a for a in sub._actions if a.option_strings and a.dest != "help"):
            text = formatter._expand_help(a) if a.help else ""
            shown = text.count("(default")
            has_default = not (a.required or a.default in (None, argparse.SUPPRESS, []) or isinstance(a.default, bool))
            assert a.help and shown == (1 if has_default else shown) and shown <= 1, (command, a.dest, text)
