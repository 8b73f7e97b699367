"""Bad files and options on the command line: one line naming the file or option, exit 2, no image written
(issue 17's examples, through the CLI as a user meets them)."""
from __future__ import annotations

import json
import shutil
import struct

import pytest

from nextstep_trt.cli import main


def _generate(model, out, *extra, prompt="a fox"):
    return main(["generate", "--model", str(model), "--prompt", prompt, "--height", "32", "--width", "32",
                 "--steps", "1", "--quiet", "--out", str(out), *extra])


def _one_line(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    assert len(err.splitlines()) == 1 and "unexpected error" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


@pytest.fixture
def model(tiny_dir, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(tiny_dir, out)
    return out


def _shard(model):
    return sorted(model.glob("model-*.safetensors"))[0]


def _flip_header(path):
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF                       # inside the JSON header, right after the 8-byte length
    path.write_bytes(bytes(raw))


def _huge_header(path):
    raw = bytearray(path.read_bytes())
    raw[:8] = struct.pack("<Q", 2**60)
    path.write_bytes(bytes(raw))


def _cut_inside_header(path):
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(raw[: 8 + length // 2])


@pytest.mark.parametrize("damage,needle", [(_flip_header, "damaged safetensors header"),
                                           (_huge_header, "claims a 1152921504606846976-byte header"),
                                           (_cut_inside_header, "-byte header; the file has")],
                         ids=["flipped", "huge-length", "truncated"])
def test_a_damaged_shard_is_named(capsys, model, tmp_path, damage, needle):
    shard = _shard(model)
    damage(shard)
    _one_line(capsys, _generate(model, tmp_path / "o.png"), shard.name, needle)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("text,needle", [('{"hidden_size": "64"}', "'hidden_size' must be an integer"),
                                         ("[1, 2]", "must hold a JSON object, not list"),
                                         ("{not json", "config.json")],
                         ids=["wrong-type", "not-an-object", "not-json"])
def test_a_bad_config_json_is_named(capsys, model, tmp_path, text, needle):
    path = model / "config.json"
    if text.startswith('{"'):
        text = json.dumps(json.loads(path.read_text()) | json.loads(text))
    path.write_text(text)
    _one_line(capsys, _generate(model, tmp_path / "o.png"), needle)


@pytest.mark.parametrize("extra,prompt,needle", [(["--seed", "-1"], "a fox", "seed -1 is outside 0.."),
                                                 ([], "bad \udcff\udcfe", "--prompt is not valid UTF-8"),
                                                 (["--cfg", "inf"], "a fox", "cfg"),
                                                 (["--precision", "int4"], "a fox",
                                                  "--precision int4: the torch backend is the fp32 reference"),
                                                 (["--precision", "int9"], "a fox", "unknown precision 'int9'")],
                         ids=["seed", "prompt-bytes", "cfg-inf", "torch-int4", "precision-typo"])
def test_bad_options_are_refused_before_the_model_loads(capsys, tmp_path, extra, prompt, needle):
    missing = tmp_path / "no-model-here"            # options are checked first: the folder is never read
    _one_line(capsys, _generate(missing, tmp_path / "o.png", *extra, prompt=prompt), needle)


def test_out_naming_a_directory_is_refused_before_generating(capsys, tiny_dir, tmp_path):
    (tmp_path / "pictures").mkdir()
    _one_line(capsys, _generate(tiny_dir, tmp_path / "pictures"), "--out", "pictures")
