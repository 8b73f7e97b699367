"""doctor: Python, ONNX Runtime, TensorRT flavours, driver/GPU, memory, build estimates and what works here."""
from __future__ import annotations

import json

HELP = {"doctor": "check this machine: packages, TensorRT flavours, GPU, memory, disk, and what will work here"}


def add_arguments(name: str, p) -> None:
    from .flags import comma_list


    p.add_argument("--artifacts", metavar="ART", help="artifacts folder: estimate the build peak of its graphs")
    p.add_argument("--graphs", type=comma_list, metavar="A,B", help="only these graphs (with --artifacts)")
    p.add_argument("--json", action="store_true", help="print the sections as JSON")
    p.add_argument("--model", metavar="DIR", help="model folder: memory and disk each step needs for this model")
    p.add_argument("--clean", action="store_true",
                   help="with --artifacts: remove what dead export/quantize runs left there (scratch, temporary files)")


def run(args) -> int:
    from nextstep_trt.engines.doctor import doctor_report, format_report, report_dict

    if args.clean:
        from nextstep_trt.core.errors import UserError
        from nextstep_trt.export.scratch import artifacts_lock

        if not args.artifacts:
            raise UserError("--clean needs --artifacts")
        with artifacts_lock(args.artifacts):        # taking the lock removes what dead runs left
            pass
    sections = doctor_report(args.artifacts, args.graphs)
    if args.model:
        from nextstep_trt.engines.estimate import model_sections

        sections += model_sections(args.model)
    print(json.dumps(report_dict(sections), indent=2) if args.json else format_report(sections))
    return 0
