"""Level-1 parity at export time: ONNX Runtime (CPU) against the PyTorch reference on several shapes per graph."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_ref.checkpoint import ModelBundle
from nextstep_trt.metrics import compare
from nextstep_trt.precision import Precision
from nextstep_trt.report import ParityReport, ParityRow
from nextstep_trt.tolerances import graph_bound
from runtime.ort_session import make_session

from .components import COMPONENTS
from .profile import DeploymentProfile
from .spec import GraphSpec


Runner = Callable[[dict], dict]   # feeds -> outputs of one graph


def ort_runner(onnx_path: Path, spec: GraphSpec) -> Runner:
    """Run a graph file in ONNX Runtime (CPU)."""
    session = make_session(onnx_path)
    return lambda feeds: dict(zip(spec.output_names, session.run(spec.output_names, feeds)))


def validate_graph(bundle: ModelBundle, spec: GraphSpec, run: Runner, profile: DeploymentProfile,
                   precision: Precision = Precision.FP32, seed: int = 0) -> ParityReport:
    """Run every validation case through ``run`` and the reference; one row per (case, output tensor)."""
    component = COMPONENTS[spec.name]
    report = ParityReport()
    for case in component.cases(bundle, spec, profile, np.random.default_rng(seed)):
        spec.check_inputs(case.feeds)
        got = run(case.feeds)
        ref = component.run_reference(bundle, spec, case.feeds)
        for name in spec.output_names:
            m = compare(ref[name], np.asarray(got[name]).astype(np.float32))
            bound = graph_bound(spec.name, precision, name)
            report.add(ParityRow(1, spec.name, Precision(precision).value, case.label, name, m, bound,
                                 bound.violations(m)))
    return report
