"""`quantize --precision int4|int8`: both deployments of every graph, checked and validated, installed together."""
from __future__ import annotations

import time
from pathlib import Path

import onnx

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import KVCache, Precision, block_note
from nextstep_trt.core.resources import free_ram, size_text
from nextstep_trt.core.report import ParityReport
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_fusions import fuse_for_ort
from nextstep_trt.export.ort_kvcache import KVRangeCollector, level1_runner, quantize_cache, read_scales
from nextstep_trt.ref.checkpoint import ModelBundle

from .autocast import autocast_need
from .awq import GramCollector
from .options import QuantizeOptions, calibrate, install_each, validation_text
from .ranges import Runner
from .weightonly import (TENSORRT_SUFFIX, WEIGHT_ONLY, WEIGHT_ONLY_EXCLUDE, Method, WeightOnlyConfig, choose_sites,
                         cpu_accuracy_level, matmul_weight)
from .weightonly_make import check_pair, deployments, make_pair


def weight_only_config(opts: QuantizeOptions) -> tuple[WeightOnlyConfig, str]:
    """The quantization settings and why the accuracy level is what it is."""
    level, reason = cpu_accuracy_level()
    if opts.accuracy_level is not None:
        level, reason = opts.accuracy_level, f"--accuracy-level {opts.accuracy_level} (this CPU: {reason})"
    return WeightOnlyConfig(WEIGHT_ONLY[opts.precision], opts.block_size, Method(opts.method), level), reason


def require_memory(models: dict[str, onnx.ModelProto], precision) -> None:
    """Refuse, with the numbers and before any work, a graph whose TensorRT half would not fit in memory."""
    available = free_ram()
    for g, model in models.items():
        need = autocast_need(model)
        if available and need > available:
            raise UserError(f"{g} [{Precision(precision).value}]: making its TensorRT graph (ModelOpt AutoCast to "
                            f"bf16) needs about {size_text(need)}; this machine has {size_text(available)} "
                            f"available: leave it out with --graphs, or run on a machine with more memory")


def quantize_weight_only(opts: QuantizeOptions, bundle: ModelBundle, manifest: Manifest, names: list[str],
                         prompts: list[str], log=print) -> dict[str, dict]:
    """Make, check, validate and install the int4/int8 pair of every graph in ``names``; the manifest records."""
    cfg, reason = weight_only_config(opts)
    log(f"{opts.precision.value}: block {cfg.block}, {cfg.method.value}, ONNX Runtime accuracy level "
        f"{cfg.accuracy_level} ({reason})")
    params = {k: v.detach().float().numpy() for k, v in bundle.model.state_dict().items()
              if v.device.type != "meta"}         # --low-memory: only the head's weights are loaded
    models = {g: onnx.load(manifest.path(g)) for g in names}
    require_memory(models, opts.precision)
    exclude = list(opts.exclude) if opts.exclude is not None else WEIGHT_ONLY_EXCLUDE
    chosen = {g: choose_sites(models[g], params, exclude, cfg.block) for g in names}
    grams, calibration, consumers = {}, None, {}
    if cfg.method is Method.AWQ:
        grams = {g: GramCollector(models[g], chosen[g][0], cfg.block) for g in names if chosen[g][0]}
        consumers = {g: [c] for g, c in grams.items()}
    kv = kv_collector(opts, bundle, names, consumers)
    if consumers:
        calibration = calibrate(bundle, manifest, prompts, consumers, log)
    records = {}

    def install(g: str) -> str:
        start = time.perf_counter()
        sites, kept = chosen[g]
        ort_model, trt_model, recipe, _ = make_pair(models[g], sites, kept, cfg, grams.get(g))
        fusions = fuse_for_ort(ort_model, bundle.config.backbone) if g == "backbone" else None
        cache = quantize_cache(ort_model, bundle.config.backbone.num_layers, kv.scales()) if kv and fusions else None
        recipe["exclude"] = exclude
        if calibration is not None:
            recipe["calibration"] = calibration | calibration_use(consumers.get(g, []))
        weights = {s.weight: matmul_weight(models[g], s) for s in sites}
        extra = {"recipe": recipe, "deployments": deployments(g, opts.precision, cfg, reason, trt_model,
                                                              fusions=fusions, kv_cache=cache)}
        extra["deployments"]["check"] = check_pair(ort_model, trt_model, sites, lambda s: weights[s.weight],
                                                   cfg.bits, cfg.method is Method.AWQ)
        report = install_pair(bundle, manifest, g, ort_model, trt_model, extra, opts, time.perf_counter() - start)
        records[g] = manifest.entry(g, opts.precision)
        return (f"{g} [{opts.precision.value}]: {records[g]['bytes'] / 2**20:.2f} MiB (both files), "
                f"{len(sites)} linear nodes int{cfg.bits}, {len(kept)} kept"
                + (f", {validation_text(records[g]['validation'])}" if report.rows else "")
                + (f" -- {note}" if (note := block_note(recipe)) else ""))

    install_each(names, opts.precision, install, log)
    return records


def calibration_use(consumers: list) -> dict:
    """What one graph's calibration consumers kept: the input sets each saw, and what they computed from them."""
    what = {GramCollector: "block Gram matrices of each linear's activations",
            KVRangeCollector: "the KV cache's max |x| per layer, KV head and channel"}
    return {"samples": max((c.samples for c in consumers), default=0),
            "method": "; ".join(what[type(c)] for c in consumers) or "none (this graph was not calibrated)"}


def kv_collector(opts: QuantizeOptions, bundle: ModelBundle, names: list[str],
                 consumers: dict[str, list]) -> KVRangeCollector | None:
    """``--kv-cache int8``: the backbone's cache ranges, collected in the calibration run (joins ``consumers``)."""
    if opts.kv_cache is KVCache.FP32:
        return None
    if "backbone" not in names:
        raise UserError("--kv-cache int8 applies to the backbone graph: add it to --graphs")
    collector = KVRangeCollector(bundle.config.backbone.num_layers)
    consumers.setdefault("backbone", []).append(collector)
    return collector


def install_pair(bundle: ModelBundle, manifest: Manifest, graph: str, ort_model: onnx.ModelProto,
                 trt_model: onnx.ModelProto, extra: dict, opts: QuantizeOptions, seconds: float) -> ParityReport:
    """Both files into one scratch folder; level 1 of the ONNX Runtime graph; installed and recorded together."""
    from nextstep_trt.export.exporter import save
    from nextstep_trt.export.install import install_graph
    from nextstep_trt.export.validate import validate_graph

    spec = manifest.spec(graph)
    io_dtypes = extra["deployments"]["onnxruntime"].get("io_dtypes", {})
    scales = read_scales(ort_model)

    def write(scratch: Path) -> list[Path]:
        files = save(ort_model, scratch / f"{graph}.onnx")
        return files + save(trt_model, scratch / f"{graph}{TENSORRT_SUFFIX}")

    def validate(path: Path) -> ParityReport:
        onnx.checker.check_model(str(path.with_name(f"{graph}{TENSORRT_SUFFIX}")), full_check=True)
        if not opts.validate:
            return ParityReport()
        run, cache = level1_runner(Runner(ort_model, opts.precision).run, scales)
        return validate_graph(bundle, spec, run, manifest.profile, opts.precision, kv_cache=cache)

    sizes = manifest.data["graphs"][graph].get("export_sizes", {})
    return install_graph(spec, sizes, seconds, write, validate, opts.artifacts, manifest, opts.precision, extra,
                         trt_graph=f"{graph}{TENSORRT_SUFFIX}", io_dtypes=io_dtypes)
