"""Level-1 parity at export time: ONNX Runtime (CPU) against the PyTorch reference on several shapes per graph."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_trt.core.level1 import check_level1
from nextstep_trt.core.tolerances import has_mean_bound
from nextstep_trt.core.precision import KVCache, Precision
from nextstep_trt.core.report import ParityReport
from nextstep_trt.export.ort_session import make_session
from nextstep_trt.ref.checkpoint import ModelBundle

from .components import COMPONENTS
from .ort_attention import in_place_outputs, run_rows
from .profile import DeploymentProfile
from .spec import GraphSpec

Runner = Callable[[dict], dict]   # feeds -> outputs of one graph


def ort_runner(onnx_path: Path, spec: GraphSpec) -> Runner:
    """Run a graph file in ONNX Runtime (CPU); a graph with ONNX Runtime's fused attention (its in-place cache
    outputs) runs a call that continues a cache row by row (``run_rows``)."""
    session = make_session(onnx_path)

    def once(feeds: dict) -> dict:
        return dict(zip(spec.output_names, session.run(spec.output_names, feeds)))

    fused = in_place_outputs([o.name for o in session.get_outputs()])
    return (lambda feeds: run_rows(once, feeds)) if fused else once


def validate_graph(bundle: ModelBundle, spec: GraphSpec, run: Runner, profile: DeploymentProfile,
                   precision: Precision = Precision.FP32, seed: int = 0,
                   progress: Callable[[str], None] | None = None, kv_cache: KVCache = KVCache.FP32) -> ParityReport:
    """Run every validation case through ``run`` and the reference, one case at a time; one row per (case, output
    tensor), then the per-tensor means the precision's bounds ask for (``kv_cache``: the graph's cache type, which
    picks its bounds). ``progress`` hears each case."""
    def checked(feeds: dict) -> dict:
        spec.check_inputs(feeds)
        return {k: np.asarray(v).astype(np.float32) for k, v in run(feeds).items()}

    cases = COMPONENTS[spec.name].level1_references(bundle, spec, profile, np.random.default_rng(seed), progress,
                                                    redraw=has_mean_bound(spec.name, precision))
    return check_level1(spec.name, precision, cases, checked, kv_cache)
