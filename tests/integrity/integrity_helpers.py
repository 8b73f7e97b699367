"""Helpers of the integrity tests: byte flips that keep a graph parseable, and the CLI run in-process."""
from __future__ import annotations

from pathlib import Path


def flip_in_largest_initializer(graph: Path, nbytes: int = 4096) -> str:
    """XOR ``nbytes`` in the middle of the graph's largest inline initializer; the graph still parses. Returns the
    initializer's name."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    t = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = graph.read_bytes()
    at = data.find(t.raw_data)
    assert at >= 0 and data.find(t.raw_data, at + 1) < 0 and len(t.raw_data) > nbytes
    start = at + len(t.raw_data) // 2 - nbytes // 2
    flipped = bytearray(data)
    flipped[start:start + nbytes] = bytes(b ^ 0x5A for b in flipped[start:start + nbytes])
    graph.write_bytes(bytes(flipped))
    onnx.load(str(graph))                  # still a valid graph: only the weights changed
    return t.name


def flip_bytes(path: Path, offset: int, nbytes: int = 4096) -> None:
    """XOR ``nbytes`` of a file from ``offset`` (its size and name unchanged)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        block = f.read(nbytes)
        f.seek(offset)
        f.write(bytes(b ^ 0x5A for b in block))


def gen_argv(art: Path, model: Path, out: Path, *extra: str) -> list[str]:
    """`generate --backend onnxruntime` at the tiny test profile."""
    return ["generate", "--backend", "onnxruntime", "--model", str(model), "--artifacts", str(art), "--prompt",
            "a cat", "--height", "32", "--width", "32", "--steps", "3", "--cfg", "2", "--quiet", "--out", str(out),
            *extra]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of the CLI run in-process."""
    from nextstep_trt.cli import main

    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err.strip(), captured.out


def one_line(err: str) -> bool:
    """A one-line error and no traceback."""
    return len(err.splitlines()) == 1 and "Traceback" not in err and "unexpected error" not in err
