"""Run the three parity levels of a backend against a reference source (live torch or a golden folder)."""
from __future__ import annotations

import numpy as np

from nextstep_trt.core.level1 import check_level1
from nextstep_trt.core.tolerances import has_mean_bound
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import CPU_BF16_NOTE, CPU_FP16_NOTE, ParityReport
from nextstep_trt.ref.prompt import scatter_image_tokens

from .backend import Backend
from .loop import encode_images
from .parity import compare_level2, compare_level3, run_trace

CPU_BACKENDS = ("onnxruntime", "onnx-reference")


def verify_backend(backend: Backend, reference, precision: Precision, levels=(1, 2, 3), log=print) -> ParityReport:
    """``reference`` offers level1(spec), cases(), level2(case), level3(case)."""
    precision = Precision(precision)
    report = ParityReport()
    if precision is not Precision.FP32 and not precision.weight_only and backend.name in CPU_BACKENDS:
        report.notes.append(CPU_BF16_NOTE if backend.name == "onnx-reference" else CPU_FP16_NOTE)
    report.notes += [f"note: {n}" for n in backend.notices]
    at = getattr(backend, "graph_precision", {})   # graphs without a graph at ``precision`` run at fp32
    if 1 in levels:
        for graph in backend.specs:
            if at.get(graph, precision) != precision:
                continue
            spec, run, cache = backend.level1_view(graph)
            report.extend(check_level1(graph, precision, reference.level1(spec, has_mean_bound(graph, precision)),
                                       run, cache))
            log(f"level 1: {graph} checked")
    for case in reference.cases() if {2, 3} & set(levels) else []:
        if 2 in levels:
            ref2 = reference.level2(case)
            got2 = run_trace(backend, case, forced=ref2.tokens, image_tokens=case.image_tokens)
            report.extend(compare_level2(case.label, precision, ref2, got2))
        if 3 in levels:
            ref3 = reference.level3(case)
            image_tokens = None
            if case.source_image is not None:
                source = encode_images(backend, np.repeat(case.source_image, case.prompt.batch, axis=0))
                image_tokens = scatter_image_tokens(case.prompt, source)
            got3 = run_trace(backend, case, image_tokens=image_tokens, decode=True)
            report.extend(compare_level3(case.label, precision, ref3, got3))
        log(f"levels 2-3: {case.label} checked")
    return report
