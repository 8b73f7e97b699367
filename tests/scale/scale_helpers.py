"""Helpers shared by the scale tests (a uniquely named module: `conftest` imports clash across folders)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SMALL = ["--resolutions", "32x32,64x64", "--steps", "2", "--max-text-tokens", "8", "--max-batch", "2"]
BACKBONE_SHAPES = ((2, 5, 0), (3, 1, 7), (1, 4, 6))       # (rows, seq, past), inside the SMALL profile


def small_profile():
    from nextstep_trt.export.profile import DeploymentProfile
    from nextstep_trt.ref.sampling import SamplerConfig

    return DeploymentProfile(max_batch=2, max_text_tokens=8, resolutions=((32, 32), (64, 64)),
                             t2i_sampler=SamplerConfig(steps=2, shift=1.0, use_norm=True),
                             edit_sampler=SamplerConfig(steps=2, shift=3.2, use_norm=True))


def export_opts(model_dir, out, graphs=("backbone",), low_memory=True, dtype="fp32", validate=True):
    from nextstep_trt.core.precision import Precision
    from nextstep_trt.export.run import ExportOptions

    return ExportOptions(Path(model_dir), Path(out), tuple(graphs), small_profile(), validate,
                         True if low_memory else None, low_memory=low_memory, dtype=Precision(dtype))


def run_graph(path, feeds: dict, outputs: list[str]) -> list[np.ndarray]:
    """ONNX Runtime on a graph of any dtype: external data read into memory, bf16 widened to float32."""
    from nextstep_trt.export.lint import load_model
    from nextstep_trt.export.spotcheck import run_graph as run

    return run(load_model(path), Path(path).parent, feeds, outputs)


def backbone_cases(model_dir) -> list[dict]:
    from nextstep_trt.export.components import backbone_feeds
    from nextstep_trt.ref.config import load_config

    cfg, rng = load_config(model_dir), np.random.default_rng(0)
    return [backbone_feeds(SimpleNamespace(config=cfg), None, *shape, rng) for shape in BACKBONE_SHAPES]


def relink_copy(model_dir: Path, art: Path, tmp: Path) -> tuple[Path, Path]:
    """Copies of a model folder and its artifacts whose linked shards are hard links to the copied shards."""
    model, out = tmp / "model", tmp / "art"
    shutil.copytree(model_dir, model)
    shutil.copytree(art, out)
    for link in out.glob("*/backbone.model-*.safetensors"):
        link.unlink()
        os.link(model / link.name.removeprefix("backbone."), link)
    return model, out
