"""The ``nextstep-trt`` CLI in-process on the torch backend: init-tiny, generate, edit and bad inputs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from nextstep_trt.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    assert main(["init-tiny", str(out), "--seed", "0"]) == 0
    assert (out / "config.json").is_file() and (out / "vae" / "config.json").is_file()
    return out


def generate(model_dir, out, *extra, prompt="x", height=32, width=48):
    return main(["generate", "--model", str(model_dir), "--prompt", prompt, "--height", str(height),
                 "--width", str(width), "--steps", "2", "--cfg", "2", "--quiet", "--out", str(out), *extra])


def test_generate_writes_png_and_settings(model_dir, tmp_path, capsys):
    out = tmp_path / "F.png"
    assert generate(model_dir, out) == 0
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (48, 32) and img.mode == "RGB"  # W x H
        pixels = np.asarray(img)
    assert pixels.std() > 0  # not a blank image
    settings = json.loads((tmp_path / "F.json").read_text())
    assert settings["options"]["height"] == 32 and settings["options"]["width"] == 48
    assert settings["options"]["steps"] == 2 and settings["options"]["cfg"] == 2.0
    assert settings["outputs"] == [str(out)]
    assert "wrote" in capsys.readouterr().out


def test_same_seed_same_bytes(model_dir, tmp_path):
    paths = [tmp_path / f"s{i}.png" for i in range(3)]
    assert generate(model_dir, paths[0], "--seed", "3") == 0
    assert generate(model_dir, paths[1], "--seed", "3") == 0
    assert generate(model_dir, paths[2], "--seed", "4") == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_edit_writes_image(model_dir, tmp_path):
    src = tmp_path / "in.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(src)  # resized to 32 x 48
    out = tmp_path / "edited.png"
    code = main(["edit", "--model", str(model_dir), "--prompt", "Add a hat", "--image", str(src), "--height", "32",
                 "--width", "48", "--steps", "2", "--quiet", "--out", str(out)])
    assert code == 0
    with Image.open(out) as img:
        assert img.size == (48, 32)
    assert json.loads((tmp_path / "edited.json").read_text())["options"]["shift"] == 3.2  # edit defaults


def assert_user_error(capsys, code, *needles):
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(err.splitlines()) == 1, f"expected one line, got: {err!r}"
    assert "error:" in err and "unexpected error" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


@pytest.mark.parametrize("flags,needles", [
    ({"prompt": ""}, ["empty"]),
    ({"prompt": "   "}, ["empty"]),
    ({"height": 40}, ["height 40"]),
    ({"extra": ["--cfg", "0.5"]}, ["cfg"]),
    ({"extra": ["--steps", "0"]}, ["steps"]),
], ids=["empty", "blank", "height-40", "cfg-0.5", "steps-0"])
def test_bad_inputs(model_dir, tmp_path, capsys, flags, needles):
    out = tmp_path / "bad.png"
    code = generate(model_dir, out, *flags.get("extra", []), prompt=flags.get("prompt", "x"),
                    height=flags.get("height", 32))
    assert_user_error(capsys, code, *needles)
    assert not out.exists()


def test_missing_model_folder(tmp_path, capsys):
    code = generate(tmp_path / "nowhere", tmp_path / "o.png")
    assert_user_error(capsys, code, "nowhere")


def test_folder_missing_vae_config(model_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "vae" / "config.json").unlink()
    code = generate(broken, tmp_path / "o.png")
    assert_user_error(capsys, code, "vae/config.json")


def test_edit_missing_image(model_dir, tmp_path, capsys):
    code = main(["edit", "--model", str(model_dir), "--prompt", "Add a hat", "--image", str(tmp_path / "no.png"),
                 "--height", "32", "--width", "32", "--steps", "2", "--quiet", "--out", str(tmp_path / "e.png")])
    assert_user_error(capsys, code, "no.png")
