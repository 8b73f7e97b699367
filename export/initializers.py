"""Initializers: their bytes, streamed from ONNX external data or taken from the proto, and byte-identical copies
stored once (torch-free)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import onnx
from onnx import TensorProto, numpy_helper

READ_BYTES = 1 << 26


def external_info(t: TensorProto) -> tuple[str, int, int]:
    """(location, offset, length) of an external initializer."""
    info = {e.key: e.value for e in t.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def tensor_bytes(t: TensorProto, graph_dir: Path) -> Iterator[bytes]:
    """An initializer's bytes, streamed from its external file or taken from the proto."""
    if t.data_location != TensorProto.EXTERNAL:
        yield t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
        return
    location, offset, length = external_info(t)
    with open(graph_dir / location, "rb") as f:
        f.seek(offset)
        while length > 0:
            block = f.read(min(length, READ_BYTES))
            if not block:
                raise EOFError(f"{location} ends before {t.name}'s data does")
            length -= len(block)
            yield block


class GraphBytes:
    """An initializer's bytes, read n at a time from its external file or from the proto."""

    def __init__(self, t: TensorProto, graph_dir: Path):
        self.file, self.data, self.pos = None, b"", 0
        if t.data_location == TensorProto.EXTERNAL:
            location, offset, self.left = external_info(t)
            self.file = open(graph_dir / location, "rb")
            self.file.seek(offset)
        else:
            self.data = b"".join(tensor_bytes(t, graph_dir))
            self.left = len(self.data)

    def read(self, n: int) -> bytes:
        n = min(n, self.left)
        out = self.file.read(n) if self.file else self.data[self.pos:self.pos + n]
        self.pos, self.left = self.pos + len(out), self.left - len(out)
        return out

    def __enter__(self) -> "GraphBytes":
        return self

    def __exit__(self, *exc) -> None:
        if self.file:
            self.file.close()


def dedupe_initializers(model: onnx.ModelProto) -> int:
    """Store byte-identical initializers once; returns how many copies were dropped."""
    seen: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in model.graph.initializer:
        key = (init.data_type, tuple(init.dims), init.raw_data) if init.raw_data else None
        if key is not None and key in seen:
            rename[init.name] = seen[key]
            continue
        if key is not None:
            seen[key] = init.name
        keep.append(init)
    if rename:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    return len(rename)
