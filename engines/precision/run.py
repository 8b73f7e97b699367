"""The quantize command's work: calibrate once, make each precision graph, validate it, install it atomically."""
from __future__ import annotations

import importlib.metadata as md
import time
from pathlib import Path

import onnx

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport
from nextstep_trt.export.initializers import dedupe_initializers
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.scratch import artifacts_lock
from nextstep_trt.ref.checkpoint import ModelBundle, load_model

from .autocast import FP16_SAFE_MAX, cast_summary, mixed_precision
from .calibrate import DEFAULT_PROMPTS, read_prompts
from .fp8 import E4M3_MAX, FP8_EXCLUDE, FP8_GRAPHS, choose_linears, insert_qdq
from .keep import keep_fp32
from .naming import check_globs
from .overflow import OverflowProbe, OverflowReport
from .options import QuantizeOptions, calibrate, install_each, validation_text
from .ranges import RangeCollector, Runner
from .weightonly_run import quantize_weight_only

__all__ = ["QuantizeOptions", "overflow_reports", "quantize_all", "select_graphs"]


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "unknown"


def select_graphs(manifest: Manifest, precision: Precision, asked: tuple[str, ...] | None, log=print) -> list[str]:
    """The graphs to make; fp8 refuses VAE graphs named explicitly and skips them otherwise."""
    if precision is Precision.FP32:
        raise UserError("fp32 graphs come from `nextstep-trt export`; quantize makes fp16, bf16, fp8, int8 or int4")
    names = list(asked) if asked else manifest.graphs
    for name in names:
        manifest.path(name)                                   # a UserError when the fp32 graph is missing
    if precision is Precision.FP8 or precision.weight_only:
        p = precision.value
        vae = [n for n in names if n not in FP8_GRAPHS]
        if asked and vae:
            raise UserError(f"{p} is made for the backbone and head graphs only; {', '.join(vae)} stays "
                            "bf16/fp32 (design.md §3): drop it from --graphs")
        for name in vae:
            log(f"{name}: no {p} graph (the VAE stays bf16/fp32; an {p} deployment runs its fp32 graph)")
        names = [n for n in names if n in FP8_GRAPHS]
    if not names:
        raise UserError(f"no graph to make at {precision.value}")
    return names


def _make(model: onnx.ModelProto, opts: QuantizeOptions, ranges: RangeCollector | None, choices: list | None,
          source: Path) -> tuple[onnx.ModelProto, dict]:
    """One precision graph and its recipe."""
    if opts.precision is Precision.FP8:
        out, quantized = insert_qdq(model, choices, ranges.amax)
        done = {q["node"] for q in quantized}
        never = {"reason": "its activation was 0 on every calibration input"}
        kept = [c.to_dict() | ({} if c.reason else never) for c in choices if c.node not in done]
        return out, {"tool": f"nextstep-trt fp8 pass (onnx-graphsurgeon {_version('onnx-graphsurgeon')})",
                     "format": "FLOAT8E4M3FN per-tensor Q/DQ on activations; weights stored E4M3 + DequantizeLinear",
                     "scale": f"activation amax/{E4M3_MAX:g} (max calibration), weight max|W|/{E4M3_MAX:g}",
                     "exclude": list(opts.exclude or FP8_EXCLUDE), "quantized": quantized,
                     "kept_high_precision": kept, "not_linear": "attention MatMuls (no weights) stay fp32"}
    limit = FP16_SAFE_MAX if opts.precision is Precision.FP16 else None
    keep = keep_fp32(model, ranges.amax if ranges else None, limit)
    out = mixed_precision(source, opts.precision, keep)
    dropped = dedupe_initializers(out)     # AutoCast copies weights shared by several nodes (the fused sampler's steps)
    reasons: dict[str, int] = {}
    for r in keep.values():
        reasons[r] = reasons.get(r, 0) + 1
    return out, {"tool": f"modelopt.onnx.autocast {_version('nvidia-modelopt')}", "keep_io_types": True,
                 "fp16_safe_max": limit, "kept_fp32": {"count": len(keep), "by_reason": reasons, "nodes": keep},
                 "deduplicated_initializers": dropped,
                 **cast_summary(out, opts.precision)}


def quantize_all(opts: QuantizeOptions, bundle: ModelBundle | None = None, log=print) -> dict[str, dict]:
    """Make, validate and install every requested graph at ``opts.precision``; returns the manifest records."""
    Manifest.load(opts.artifacts)                         # not an artifacts folder: refused before taking its lock
    with artifacts_lock(opts.artifacts, log):             # one writer per folder; dead runs' scratch removed
        return _quantize_locked(opts, bundle, log)


def _quantize_locked(opts: QuantizeOptions, bundle: ModelBundle | None, log) -> dict[str, dict]:
    manifest = Manifest.load(opts.artifacts)
    names = select_graphs(manifest, opts.precision, opts.graphs, log)
    prompts = list(DEFAULT_PROMPTS) + (read_prompts(opts.calib_file) if opts.calib_file else [])
    bundle = bundle or load_model(opts.model_dir)
    manifest.check_model(bundle.config, opts.model_dir)
    check_globs(opts.exclude, bundle.model.state_dict().keys())
    if opts.precision.weight_only:
        return quantize_weight_only(opts, bundle, manifest, names, prompts, log)
    models = {g: onnx.load(manifest.path(g)) for g in names}
    params = {k: v.detach().float().numpy() for k, v in bundle.model.state_dict().items()}
    choices = {g: choose_linears(models[g], params, list(opts.exclude or FP8_EXCLUDE)) for g in names} \
        if opts.precision is Precision.FP8 else {}
    ranges: dict[str, RangeCollector] = {}
    calibration = None
    if opts.precision is not Precision.BF16:          # bf16 keeps fp32's range: nothing to measure
        for g in names:
            tensors = sorted({c.activation for c in choices[g] if c.reason is None}) if choices else None
            ranges[g] = RangeCollector(models[g], tensors)
        calibration = calibrate(bundle, manifest, prompts, {g: [c] for g, c in ranges.items()}, log)
    records = {}

    def install(g: str) -> str:
        start = time.perf_counter()
        model, recipe = _make(models[g], opts, ranges.get(g), choices.get(g), manifest.path(g))
        if calibration is not None:
            recipe["calibration"] = calibration | {"samples": ranges[g].samples, "method": "max |x| (fp32 graph)"}
        report = _install(bundle, manifest, g, model, recipe, opts, time.perf_counter() - start)
        records[g] = manifest.entry(g, opts.precision)
        return (f"{g} [{opts.precision.value}]: {records[g]['bytes'] / 2**20:.2f} MiB, {_kept_text(recipe)}"
                + (f", {validation_text(records[g]['validation'])}" if report.rows else ""))

    install_each(names, opts.precision, install, log)
    return records


def _install(bundle: ModelBundle, manifest: Manifest, graph: str, model: onnx.ModelProto, recipe: dict,
             opts: QuantizeOptions, seconds: float):
    """Level 1 against the reference, then install and record, through the export's install_graph."""
    from nextstep_trt.export.exporter import save
    from nextstep_trt.export.install import install_graph
    from nextstep_trt.export.validate import validate_graph

    spec = manifest.spec(graph)

    def write(scratch: Path) -> list[Path]:
        return save(model, scratch / f"{graph}.onnx")

    def validate(path: Path):
        if not opts.validate:
            return ParityReport()
        return validate_graph(bundle, spec, Runner(model, opts.precision).run, manifest.profile, opts.precision)

    sizes = manifest.data["graphs"][graph].get("export_sizes", {})
    return install_graph(spec, sizes, seconds, write, validate, opts.artifacts, manifest, opts.precision,
                         {"recipe": recipe})


def _kept_text(recipe: dict) -> str:
    if "quantized" in recipe:
        return f"{len(recipe['quantized'])} linear nodes fp8, {len(recipe['kept_high_precision'])} kept high precision"
    return f"{recipe['kept_fp32']['count']} nodes kept fp32 ({recipe['kept_fp32']['by_reason']})"


def overflow_reports(opts: QuantizeOptions, bundle: ModelBundle | None = None) -> list[OverflowReport]:
    """FP16-vs-BF16 report of every graph with an fp16 graph (and its bf16 graph when made), on the calibration."""
    manifest = Manifest.load(opts.artifacts)
    names = [g for g in (opts.graphs or manifest.graphs) if "fp16" in manifest.data["graphs"].get(g, {}).get(
        "precisions", {})]
    if not names:
        raise UserError(f"{opts.artifacts} has no fp16 graph to report on (run quantize --precision fp16 first)")
    bundle = bundle or load_model(opts.model_dir)
    probes = {}
    for g in names:
        has_bf16 = "bf16" in manifest.data["graphs"][g]["precisions"]
        probes[g] = OverflowProbe(g, onnx.load(manifest.path(g)), onnx.load(manifest.path(g, Precision.FP16)),
                                  onnx.load(manifest.path(g, Precision.BF16)) if has_bf16 else None)
    prompts = list(DEFAULT_PROMPTS) + (read_prompts(opts.calib_file) if opts.calib_file else [])
    calibrate(bundle, manifest, prompts, {g: [p] for g, p in probes.items()})
    return [p.report() for p in probes.values()]
