"""Level-1 parity at export time: ONNX Runtime (CPU) against the PyTorch reference on several shapes per graph."""
from __future__ import annotations

from pathlib import Path

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


def validate_graph(bundle: ModelBundle, spec: GraphSpec, onnx_path: Path, profile: DeploymentProfile,
                   precision: Precision = Precision.FP32, seed: int = 0) -> ParityReport:
    """Run every validation case through ORT and the reference; one row per (case, output tensor)."""
    component = COMPONENTS[spec.name]
    session = make_session(onnx_path)
    report = ParityReport()
    for case in component.cases(bundle, spec, profile, np.random.default_rng(seed)):
        spec.check_inputs(case.feeds)
        got = dict(zip(spec.output_names, session.run(spec.output_names, case.feeds)))
        ref = component.run_reference(bundle, spec, case.feeds)
        for name in spec.output_names:
            m = compare(ref[name], got[name].astype(np.float32))
            bound = graph_bound(spec.name, precision, name)
            report.add(ParityRow(1, spec.name, Precision(precision).value, case.label, name, m, bound,
                                 bound.violations(m)))
    return report
