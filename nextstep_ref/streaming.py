"""Random-weight model folders written tensor by tensor, for models too big to hold in memory (torch).

Each tensor has its own generator, seeded from (seed, key), so a tensor's values do not depend on the order it
is written in. Shards are written in the safetensors format directly (header first, then each tensor's bytes
streamed in row chunks): ``safetensors.torch.save_file`` needs a whole shard in memory, 5 GB here.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir
from nextstep_trt.core.resources import require_disk, size_text

from .config import NextStepConfig, model_config_dict, vae_config_dict
from .tokenizer import build_tokenizer, save_tokenizer
from .weights import INDEX_NAME, index_json, model_shapes, plan_shards, shard_name, vae_shapes

DEFAULT_SHARD_BYTES = 5 * 10**9
CHUNK_ELEMENTS = 1 << 24          # values generated at a time (64 MB in fp32); fixed, so results are reproducible
SYNC_BYTES = 1 << 30              # flush written pages to disk and drop them from the page cache this often
# dtype flag -> (torch dtype, safetensors code, config.json torch_dtype)
DTYPES = {"fp32": (torch.float32, "F32", "float32"), "bf16": (torch.bfloat16, "BF16", "bfloat16"),
          "fp16": (torch.float16, "F16", "float16")}
SAFETENSORS_CODES = {code: dt for dt, code, _ in DTYPES.values()}
TORCH_DTYPE_NAMES = {name: dt for dt, _, name in DTYPES.values()}


def torch_dtype(flag: str) -> torch.dtype:
    """'fp32' | 'bf16' | 'fp16' -> torch dtype."""
    if flag not in DTYPES:
        raise UserError(f"unknown dtype {flag!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[flag][0]


def tensor_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one tensor, from the model seed and the tensor's key."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{key}".encode()).digest()[:8], "little") >> 1


def _rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, elements per row): dim 0 against the rest; a 1-D tensor is rows of one element."""
    return (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (math.prod(shape), 1)


def random_chunks(key: str, shape: tuple[int, ...], seed: int) -> Iterator[torch.Tensor]:
    """The tensor's float32 values in row chunks of at most CHUNK_ELEMENTS values.

    Biases ~ 0.1 N(0,1); norm scales ~ 1 + 0.2 N(0,1); embeddings ~ N(0,1); other weights ~ U(-b, b) with
    b = 1/sqrt(fan_in), PyTorch's default Linear/Conv bound (perturbed norms and biases, as in ``init_random``).
    """
    gen = torch.Generator().manual_seed(tensor_seed(seed, key))
    rows, per_row = _rows(shape)
    step = max(1, CHUNK_ELEMENTS // per_row)
    bound = 1.0 / math.sqrt(per_row)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        chunk_shape = (n, *shape[1:]) if len(shape) > 1 else (n,)
        if key.endswith("bias"):
            yield 0.1 * torch.randn(chunk_shape, generator=gen)
        elif len(shape) == 1:
            yield 1.0 + 0.2 * torch.randn(chunk_shape, generator=gen)
        elif "embed_tokens" in key:
            yield torch.randn(chunk_shape, generator=gen)
        else:
            yield (2 * torch.rand(chunk_shape, generator=gen) - 1) * bound


def random_tensor(key: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The whole tensor (for small tensors and tests); equals the concatenated ``random_chunks``."""
    return torch.cat([c.to(dtype) for c in random_chunks(key, shape, seed)]).reshape(shape)


def safetensors_header(entries: list[tuple[str, str, tuple[int, ...]]], itemsize: int) -> bytes:
    """The 8-byte length plus JSON header of a safetensors file holding ``entries`` (key, code, shape) in order."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, code, shape in entries:
        nbytes = math.prod(shape) * itemsize
        header[key] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)                      # the data section starts 8-byte aligned
    return struct.pack("<Q", len(blob)) + blob


def _drop_cache(f) -> None:
    f.flush()
    os.fdatasync(f.fileno())
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def write_random_shard(path: Path, shapes: dict[str, tuple[int, ...]], flag: str, seed: int) -> int:
    """Write one safetensors shard of random tensors, one chunk in memory at a time; returns its data bytes."""
    dtype, code, _ = DTYPES[flag]
    itemsize = torch.empty((), dtype=dtype).element_size()
    written = since_sync = 0
    with open(path, "wb") as f:
        f.write(safetensors_header([(k, code, s) for k, s in shapes.items()], itemsize))
        for key, shape in shapes.items():
            for chunk in random_chunks(key, shape, seed):
                data = chunk.to(dtype).contiguous().view(-1).view(torch.uint8).numpy()
                f.write(memoryview(data))
                written += data.nbytes
                since_sync += data.nbytes
                if since_sync >= SYNC_BYTES:
                    _drop_cache(f)
                    since_sync = 0
        _drop_cache(f)
    return written


def weight_bytes(cfg: NextStepConfig, flag: str) -> tuple[int, int]:
    """(AR model bytes, VAE bytes) of a model folder at a dtype."""
    itemsize = torch.empty((), dtype=torch_dtype(flag)).element_size()
    return tuple(sum(math.prod(s) for s in shapes.values()) * itemsize
                 for shapes in (model_shapes(cfg), vae_shapes(cfg.vae)))


def _write_vae(vae_dir: Path, cfg: NextStepConfig, flag: str, seed: int) -> None:
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text(json.dumps(vae_config_dict(cfg.vae), indent=2) + "\n")
    state = {k: random_tensor(k, s, seed + 7, torch_dtype(flag)) for k, s in vae_shapes(cfg.vae).items()}
    torch.save(state, vae_dir / "checkpoint.pt")


def init_model_folder(out_dir: str | Path, cfg: NextStepConfig, flag: str = "bf16", seed: int = 0,
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES, log: Callable[[str], None] = print) -> Path:
    """Write a random-weight model folder in the official layout, streamed; it appears complete or not at all."""
    out_dir = Path(out_dir)
    itemsize = torch.empty((), dtype=torch_dtype(flag)).element_size()
    model_b, vae_b = weight_bytes(cfg, flag)
    require_disk(out_dir, model_b + vae_b, f"init-model ({flag} weights {size_text(model_b)} + VAE {size_text(vae_b)})")
    shapes = model_shapes(cfg)
    shards = plan_shards(((k, math.prod(s) * itemsize) for k, s in shapes.items()), max_shard_bytes)
    with atomic_dir(out_dir) as tmp:
        config = model_config_dict(cfg) | {"torch_dtype": DTYPES[flag][2]}
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        weight_map = {}
        for i, keys in enumerate(shards):
            name, start = shard_name(i, len(shards)), time.perf_counter()
            nbytes = write_random_shard(tmp / name, {k: shapes[k] for k in keys}, flag, seed)
            weight_map |= dict.fromkeys(keys, name)
            log(f"wrote {name}: {len(keys)} tensors, {size_text(nbytes)} in {time.perf_counter() - start:.1f} s")
        (tmp / INDEX_NAME).write_text(json.dumps(index_json(weight_map, model_b), indent=2))
        save_tokenizer(build_tokenizer(cfg.tokens, cfg.backbone.vocab_size), tmp)
        _write_vae(tmp / "vae", cfg, flag, seed)
    return out_dir
