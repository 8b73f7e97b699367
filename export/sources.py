"""Checkpoint tensors by key, read on demand: the model's safetensors shards and the VAE checkpoint (torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from nextstep_trt.ref.weights import shard_files

from .external import VAE_GRAPHS, StoredTensor, checkpoint_tensors, read_tensor, source_chunks


class WeightSources:
    """Where each graph's weights came from; nothing is read until a tensor is asked for."""

    def __init__(self, model_dir: str | Path, stored: dict[str, StoredTensor] | None = None):
        self.model_dir = Path(model_dir)
        self.stored = stored if stored is not None else checkpoint_tensors(self.model_dir, shard_files(self.model_dir))
        self._vae: dict[str, torch.Tensor] | None = None

    def vae_state(self) -> dict[str, torch.Tensor]:
        """The VAE state dict (small: ~0.3 GB for Large in fp32), loaded once."""
        if self._vae is None:
            from nextstep_trt.ref.checkpoint import _load_vae_state

            self._vae = _load_vae_state(self.model_dir / "vae")
        return self._vae

    def shape(self, graph: str, key: str) -> tuple[int, ...] | None:
        """The tensor's shape, or None when the checkpoint has no such key."""
        if graph in VAE_GRAPHS:
            t = self.vae_state().get(key)
            return None if t is None else tuple(t.shape)
        t = self.stored.get(key)
        return None if t is None else t.shape

    def chunks(self, graph: str, key: str, dtype: torch.dtype) -> Iterator[bytes]:
        """The tensor's bytes converted to ``dtype``, a chunk at a time."""
        if graph in VAE_GRAPHS:
            yield self.vae_state()[key].to(dtype).contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            return
        yield from source_chunks(self.stored[key], dtype)

    def tensor(self, graph: str, key: str) -> torch.Tensor:
        """The whole tensor in its stored dtype."""
        if graph in VAE_GRAPHS:
            return self.vae_state()[key]
        return read_tensor(self.stored[key])

    def state(self, graph: str, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """Every tensor under ``prefix`` (prefix stripped), rounded through ``dtype`` and returned in float32."""
        keys = self.vae_state() if graph in VAE_GRAPHS else self.stored
        return {k[len(prefix):]: self.tensor(graph, k).to(dtype).float() for k in keys if k.startswith(prefix)}
