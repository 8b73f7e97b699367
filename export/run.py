"""The export command's work: trace each graph, write it atomically, validate it, record it in the manifest."""
from __future__ import annotations

from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport
from nextstep_trt.core.resources import require_disk
from nextstep_trt.ref.checkpoint import ModelBundle, load_model

from .components import COMPONENTS
from .exporter import save, trace
from .install import ExportOptions, check_writable, export_disk_need, install_graph
from .manifest import Manifest
from .profile import graph_specs
from .scratch import artifacts_lock
from .spec import GraphSpec
from .validate import ort_runner, validate_graph


def export_graph(bundle: ModelBundle, spec: GraphSpec, opts: ExportOptions, manifest: Manifest,
                 log=print) -> ParityReport:
    """Trace, then write, validate and install the graph (see ``install_graph``), saying each stage."""
    module = COMPONENTS[spec.name].module(bundle, spec)
    log(f"  {spec.name}: tracing and cleaning (dynamo exporter, opset {opts.opset})")
    model, sizes, seconds = trace(module, spec, opts.opset)
    log(f"  {spec.name}: traced in {seconds:.1f} s; writing, linting" + (", validating" if opts.validate else ""))
    holder = [model]                         # popped by write(), so the proto is freed once saved
    del model

    def write(scratch: Path) -> list[Path]:
        return save(holder.pop(), scratch / f"{spec.name}.onnx", opts.external_data)

    def validate(path: Path) -> ParityReport:
        if not opts.validate:
            return ParityReport()
        return validate_graph(bundle, spec, ort_runner(path, spec), opts.profile,
                              progress=lambda case: log(f"  {spec.name}: validating case {case}"))

    return install_graph(spec, sizes, seconds, write, validate, opts.out_dir, manifest)


def export_all(opts: ExportOptions, bundle: ModelBundle | None = None, log=print) -> ParityReport:
    """Export every requested graph of a model folder into ``opts.out_dir``."""
    if opts.low_memory:
        from .lowmem import export_low_memory

        return export_low_memory(opts, log)
    if Precision(opts.dtype) != Precision.FP32:
        raise UserError(f"--dtype {Precision(opts.dtype).value} needs --low-memory (the ordinary export writes fp32)")
    bundle = bundle or load_model(opts.model_dir, with_tokenizer=False)
    specs = graph_specs(bundle.config, opts.profile, opts.graphs)
    check_writable(opts.out_dir)
    require_disk(opts.out_dir, export_disk_need(bundle.config, opts.profile, specs, opts.out_dir),
                 f"the export of {', '.join(specs)}")          # a full disk is refused before tracing
    with artifacts_lock(opts.out_dir, log):                  # one writer per folder; removes dead runs' scratch
        manifest = Manifest.open_for_export(opts.out_dir, bundle.config, opts.profile, opts.model_dir)
        report = ParityReport()
        for name, spec in specs.items():
            graph_report = export_graph(bundle, spec, opts, manifest, log)
            rec = manifest.entry(name)
            log(f"exported {name}: {rec['bytes'] / 2**20:.2f} MiB in {rec['seconds']:.1f} s"
                + (f", validated on {rec['validation']['cases']} shapes" if opts.validate else ", not validated"))
            report.extend(graph_report)
    return report
