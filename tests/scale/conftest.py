"""Streamed model folders and low-memory exports of the tiny model, built once per session."""
from __future__ import annotations

from pathlib import Path

import pytest
from scale_helpers import export_opts
from session_share import shared


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Tiny model folders written by the streaming init-model, fp32 and bf16 (several shards each)."""
    from nextstep_trt.ref.config import tiny
    from nextstep_trt.ref.streaming import init_model_folder

    def make(root):
        return {d: init_model_folder(root / d, tiny(), d, seed=3, max_shard_bytes=2**17, log=lambda *_: None)
                for d in ("fp32", "bf16")}

    return shared(tmp_path_factory, "ckpt", make)


@pytest.fixture(scope="session")
def ordinary(ckpts, tmp_path_factory) -> dict[str, Path]:
    """The ordinary export (whole model in memory, fp32) of each checkpoint."""
    from nextstep_trt.export.run import export_all

    def make(root):
        for d, model_dir in ckpts.items():
            export_all(export_opts(model_dir, root / d, ("backbone", "head_step", "head_sampler"), low_memory=False,
                                   validate=False),
                       log=lambda *_: None)
        return {d: root / d for d in ckpts}

    return shared(tmp_path_factory, "ordinary", make)


@pytest.fixture(scope="session")
def lowmem(ckpts, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Low-memory exports, keyed (checkpoint dtype, graph dtype): two linked, one converted."""
    from nextstep_trt.export.lowmem import export_low_memory

    def make(root):
        out = {}
        for ck, graph, graphs in (("fp32", "fp32", ("backbone", "head_step", "head_sampler")),
                                  ("bf16", "bf16", ("backbone", "head_sampler")),
                                  ("bf16", "fp32", ("backbone",))):
            out[ck, graph] = root / f"{ck}-{graph}"
            export_low_memory(export_opts(ckpts[ck], out[ck, graph], graphs, dtype=graph), log=lambda *_: None)
        return out

    return shared(tmp_path_factory, "lowmem", make)
