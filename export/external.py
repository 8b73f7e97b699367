"""Checkpoint tensors as ONNX external data: safetensors offsets, hard links, tensor-by-tensor conversion (torch).

A safetensors file is an 8-byte header length, a JSON header giving each tensor's dtype, shape and byte range,
then the raw little-endian bytes: the same bytes ONNX external data holds. Where a graph initializer has the
checkpoint tensor's dtype, its external data points straight into the shard (hard-linked beside the graph, so
the location stays relative); otherwise the tensor is converted in row chunks into ``<graph>.data``.
"""
from __future__ import annotations

import errno
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from onnx import TensorProto

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.resources import require_disk

from .profile import SAMPLERS

CHUNK_BYTES = 1 << 26             # bytes read, converted or compared at a time
ALIGN = 4096                      # offsets in a written .data file (ONNX recommends page alignment for mmap)
CODES = {"F32": (TensorProto.FLOAT, torch.float32), "BF16": (TensorProto.BFLOAT16, torch.bfloat16),
         "F16": (TensorProto.FLOAT16, torch.float16)}
ONNX_TO_TORCH = {onnx_type: dt for onnx_type, dt in CODES.values()}
TORCH_TO_ONNX = {dt: onnx_type for onnx_type, dt in CODES.values()}


# graph -> (prefix of the wrapper module's parameter names, prefix of the checkpoint keys). VAE keys are those of
# vae/checkpoint.pt; the rest are keys of the sharded model. ``CastIO`` adds "inner." in front of every name.
PREFIXES = {"backbone": ("model.", ""), "head_step": ("head.", "image_head."),
            **{name: ("net.", "image_head.net.") for name in SAMPLERS},
            "vae_decoder": ("vae.", ""), "vae_encoder": ("vae.", "")}
VAE_GRAPHS = ("vae_decoder", "vae_encoder")


def checkpoint_key(graph: str, name: str) -> str | None:
    """The checkpoint key an initializer was named after; None for constants the exporter made (folded, derived)."""
    name = name.removeprefix("inner.")
    strip, add = PREFIXES[graph]
    return add + name[len(strip):] if name.startswith(strip) else None


@dataclass(frozen=True)
class StoredTensor:
    """Where one checkpoint tensor's bytes are."""

    key: str
    file: Path
    code: str                     # safetensors dtype code: F32, BF16, F16
    shape: tuple[int, ...]
    offset: int                   # from the start of the file
    length: int

    @property
    def torch_dtype(self) -> torch.dtype:
        return CODES[self.code][1]


def read_header(path: Path) -> dict[str, StoredTensor]:
    """Every tensor of one safetensors file, from its header; a UserError for a truncated or foreign file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > min(size - 8, 1 << 28):
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as err:
        raise UserError(f"{path}: not a safetensors file ({err})") from None
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if info["dtype"] not in CODES:
            raise UserError(f"{path}: {key} has dtype {info['dtype']}; supported: {', '.join(CODES)}")
        itemsize = torch.empty((), dtype=CODES[info["dtype"]][1]).element_size()
        if end - begin != math.prod(shape) * itemsize or 8 + n + end > size:
            raise UserError(f"{path}: {key} byte range {begin}..{end} does not fit its shape or the file")
        out[key] = StoredTensor(key, path, info["dtype"], shape, 8 + n + begin, end - begin)
    return out


def checkpoint_tensors(model_dir: Path, weight_map: dict[str, str]) -> dict[str, StoredTensor]:
    """key -> StoredTensor for every shard of the index (headers only; no tensor is read)."""
    out: dict[str, StoredTensor] = {}
    for shard in sorted(set(weight_map.values())):
        out |= read_header(model_dir / shard)
    return out


def check_stored(stored: dict[str, StoredTensor], shapes: dict[str, tuple[int, ...]], code: str, where: str) -> None:
    """Every expected tensor present with the config's shape and the checkpoint's dtype: one line naming the first."""
    for key, shape in shapes.items():
        t = stored.get(key)
        if t is None:
            raise UserError(f"{where}: tensor {key} is missing from the shards")
        if t.shape != tuple(shape):
            raise UserError(f"{where}: {key} has shape {list(t.shape)} in {t.file.name}; the config says {list(shape)}")
        if t.code != code:
            raise UserError(f"{where}: {key} is {t.code} in {t.file.name}; config.json's torch_dtype says {code}")


def byte_chunks(t: StoredTensor) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of about CHUNK_BYTES covering the tensor, on element boundaries."""
    itemsize = torch.empty((), dtype=t.torch_dtype).element_size()
    step = max(itemsize, CHUNK_BYTES // itemsize * itemsize)
    for start in range(0, t.length, step):
        yield t.offset + start, min(step, t.length - start)


def source_chunks(t: StoredTensor, dtype: torch.dtype) -> Iterator[bytes]:
    """The tensor's bytes converted to ``dtype``, a chunk at a time.

    Plain positioned reads, not safetensors' memory map: touched pages of a map count as resident memory, and a
    30 GB checkpoint read through one would look like 30 GB of RSS (``verify_offsets`` checks the offsets)."""
    fd = os.open(t.file, os.O_RDONLY)
    try:
        for offset, length in byte_chunks(t):
            data = os.pread(fd, length, offset)
            if len(data) != length:
                raise UserError(f"{t.file}: ends inside {t.key}")
            if t.torch_dtype == dtype:
                yield data
            else:
                yield torch.frombuffer(bytearray(data), dtype=t.torch_dtype).to(dtype).view(torch.uint8).numpy().tobytes()
    finally:
        os.close(fd)


def read_tensor(t: StoredTensor) -> torch.Tensor:
    """The whole tensor in its stored dtype (for small tensors and one layer's weights)."""
    with open(t.file, "rb") as f:
        f.seek(t.offset)
        data = bytearray(f.read(t.length))
    return torch.frombuffer(data, dtype=t.torch_dtype).reshape(t.shape)


def verify_offsets(stored: dict[str, StoredTensor]) -> list[str]:
    """Our header parsing against the safetensors library: the first bytes of every tensor must agree."""
    from safetensors import safe_open

    problems = []
    for file in sorted({t.file for t in stored.values()}):
        with safe_open(str(file), "pt") as handle:
            for t in (t for t in stored.values() if t.file == file):
                first = handle.get_slice(t.key)[0:1] if t.shape else handle.get_tensor(t.key).reshape(1)
                want = first.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                with open(file, "rb") as f:
                    f.seek(t.offset)
                    if f.read(len(want)) != want:
                        problems.append(f"{t.key}: bytes at offset {t.offset} of {file.name} are not the tensor's")
    return problems


@dataclass(frozen=True)
class Placement:
    """One initializer's external data."""

    name: str
    key: str
    location: str                 # relative to the graph's folder
    offset: int
    length: int
    linked: bool                  # True: bytes of a hard-linked shard; False: written into the .data file


def _link(src: Path, dest: Path) -> bool:
    """Hard-link ``src`` to ``dest``; False when the filesystem cannot (another device, no link support)."""
    try:
        os.link(src, dest)
        return True
    except OSError as err:
        if err.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            return False
        raise UserError(f"cannot link {src} to {dest}: {err.strerror}") from None


def plan_bytes(wanted: list[tuple[str, str, torch.dtype]], stored: dict[str, StoredTensor]) -> int:
    """Bytes ``place_weights`` writes for ``wanted`` (the tensors it converts or copies; links cost nothing)."""
    total = 0
    for _, key, dtype in wanted:
        total += math.prod(stored[key].shape) * torch.empty((), dtype=dtype).element_size() + ALIGN
    return total


def place_weights(wanted: list[tuple[str, str, torch.dtype]], stored: dict[str, StoredTensor], graph_dir: Path,
                  stem: str, link: bool = True) -> list[Placement]:
    """Put each (initializer, key, dtype) beside the graph: a link into its shard, or converted (``link`` False:
    copied) into ``stem.data``."""
    links: dict[Path, str | None] = {}
    data_name = f"{stem}.data"
    out, convert = [], []
    for name, key, dtype in wanted:
        t = stored[key]
        if link and t.torch_dtype == dtype:
            if t.file not in links:
                link = f"{stem}.{t.file.name}"
                links[t.file] = link if _link(t.file, graph_dir / link) else None
            if links[t.file] is not None:
                out.append(Placement(name, key, links[t.file], t.offset, t.length, True))
                continue
        convert.append((name, t, dtype))
    if convert:
        require_disk(graph_dir, plan_bytes([(n, t.key, d) for n, t, d in convert], stored), data_name)
        with open(graph_dir / data_name, "wb") as f:
            for name, t, dtype in convert:
                f.write(b"\0" * (-f.tell() % ALIGN))
                start = f.tell()
                for blob in source_chunks(t, dtype):
                    f.write(blob)
                out.append(Placement(name, t.key, data_name, start, f.tell() - start, False))
    return out


def describe(placements: list[Placement]) -> dict:
    """What the manifest records about where the weights are."""
    linked = [p for p in placements if p.linked]
    return {"initializers": len(placements), "linked": len(linked),
            "linked_bytes": sum(p.length for p in linked),
            "written_bytes": sum(p.length for p in placements if not p.linked),
            "files": sorted({p.location for p in placements})}
