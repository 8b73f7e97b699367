"""One unit system in every report: core.resources' byte and count formatters (decimal, three significant digits),
and doctor / floor printing only those units, with sensible precision on the tiny model."""
from __future__ import annotations

import re

import pytest

from nextstep_trt.cli import main
from nextstep_trt.core.resources import count_text, size_text

BINARY = re.compile(r"\b[KMGT]iB\b")
ZERO = re.compile(r"(?<![\d.])0\.0+ [kMGT]?B\b")          # "0.00 GB", "0.0 MB": a size too small for its unit


@pytest.mark.parametrize("nbytes, text", [(0, "0 B"), (512, "512 B"), (999, "999 B"), (1000, "1.00 kB"),
                                          (1234, "1.23 kB"), (356e6, "356 MB"), (999.7e6, "1.00 GB"),
                                          (12 * 2**30, "12.9 GB"), (29.83e9, "29.8 GB"), (99.96e6, "100 MB"),
                                          (2.5e12, "2.50 TB")])
def test_size_text(nbytes, text):
    assert size_text(nbytes) == text


@pytest.mark.parametrize("n, text", [(0, "0"), (980, "980"), (612_345, "612 k"), (999_999, "1.00 M"),
                                     (102e6, "102 M"), (14.9e9, "14.9 B")])
def test_count_text(n, text):
    assert count_text(n) == text


def test_doctor_on_the_tiny_model_uses_one_unit_system(capsys, tiny_dir, tiny_artifacts):
    assert main(["doctor", "--model", str(tiny_dir), "--artifacts", str(tiny_artifacts[0])]) == 0
    out = capsys.readouterr().out
    assert "decimal: 1 GB = 10^9 bytes" in out
    assert not BINARY.findall(out) and not ZERO.findall(out), (BINARY.findall(out), ZERO.findall(out))
    head = next(line for line in out.splitlines() if line.startswith(f"model {tiny_dir}"))
    assert re.search(r"\(\d+(\.\d+)? [kM]? ?parameters", head) and "0.00 B" not in head, head
    sizes = dict(re.findall(r"\n  (.+?)\s+RAM ~(\d\S* [kMG]?B), disk", out))
    assert sizes["export (ordinary, whole model in memory)"].endswith(" MB")        # python + torch + the weights
    assert all(v.endswith((" MB", " GB")) for k, v in sizes.items() if "build" in k or k.startswith("precision"))


def test_floor_uses_one_unit_system(capsys):
    assert main(["floor", "--preset", "tiny", "--precision", "fp32,int4"]) == 0
    out = capsys.readouterr().out
    assert not BINARY.findall(out) and not ZERO.findall(out), out
    assert "12.9 GB" in out and "1.50 GB reserve" in out                 # the RTX 4070's 12 GiB, the reserve
