"""The README's main job: `nextstep-trt demo` end to end on a fresh folder."""
import pytest
import json

from PIL import Image

from nextstep_trt.cli import main

pytestmark = pytest.mark.slow(seconds=40)      # idle seconds, roughly: scheduled first (tests/conftest.py)


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert " checks, 0 failed" in printed and "worst case per graph" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["parity"]["ok"] and {r["level"] for r in report["parity"]["rows"]} == {1, 2, 3}
    for name in ("onnxruntime.png", "torch.png"):
        assert Image.open(out / name).size == (64, 64)
    assert (out / "artifacts" / "manifest.json").is_file() and (out / "model" / "config.json").is_file()
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return
    graphs = {"backbone", "head_step", "head_sampler", "head_sampler_nocfg", "vae_decoder"}     # text to image
    assert {r["graph"] for r in report["engines"]} == graphs and all(r["plan_mib"] > 0 for r in report["engines"])
