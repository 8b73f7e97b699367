"""`quantize --precision int4|int8 --low-memory`: a model too big for memory, quantized straight from its shards.

The backbone is streamed (``weightonly_stream``): both deployments written one linear at a time into a scratch
folder, then, before anything is installed, checked -- every quantized tensor read back from both files (same
codes and scales, codes in range, every element within half a step of its checkpoint weight), the kept weights
byte-compared with the checkpoint, onnx's checker, and one decoder layer of each deployment run in ONNX Runtime
against the reference layer on the same weights -- and installed together (``export/install.py``). The head
graphs are small (Large: 157 M parameters): they take the in-memory path on a bundle holding only the head's weights.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import onnx
import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.report import ParityReport
from nextstep_trt.core.resources import require_disk, size_text
from nextstep_trt.export.exporter import OPSET
from nextstep_trt.export.filecheck import graph_files
from nextstep_trt.export.install import install_graph
from nextstep_trt.export.lint import load_model
from nextstep_trt.export.lowmem import (BACKBONE_KEYS, TRT_PARSE_LIMIT, check_integrity, check_weights, meta_backbone,
                                        open_checkpoint, small_bundle)
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.metatrace import external_proto, trace_meta
from nextstep_trt.export.ort_fusions import fuse_for_ort
from nextstep_trt.export.profile import graph_specs
from nextstep_trt.export.scratch import artifacts_lock
from nextstep_trt.export.sources import WeightSources
from nextstep_trt.export.spotcheck import spot_check
from nextstep_trt.ref.config import NextStepConfig

from .naming import check_globs
from .options import QuantizeOptions
from .weightonly import TENSORRT_SUFFIX, WEIGHT_ONLY_EXCLUDE, WEIGHT_ONLY_GRAPHS, Method
from .weightonly_make import base_recipe, check_pair, deployments
from .weightonly_run import quantize_weight_only, weight_only_config
from .weightonly_stream import choose_stream_sites, quantize_stream, raise_opset, site_weight, stream_linears

BACKBONE = "backbone"


def quantize_low_memory(opts: QuantizeOptions, log=print) -> dict[str, dict]:
    """Quantize the backbone from the shards and the exported fp32 head graphs; returns the manifest records."""
    if opts.method is Method.AWQ:
        raise UserError("--method awq searches clip ratios on activations the reference records, which needs the "
                        "model in memory: use --method rtn with --low-memory")
    cfg, sources = open_checkpoint(Path(opts.model_dir))
    check_globs(opts.exclude, sources.stored.keys())
    Manifest.load(opts.artifacts)                        # not an artifacts folder: refused before taking its lock
    with artifacts_lock(opts.artifacts, log):
        manifest = Manifest.load(opts.artifacts)
        manifest.check_model(cfg, opts.model_dir)
        names = _graphs(opts, manifest, log)
        records = {}
        if BACKBONE in names:
            records[BACKBONE] = stream_backbone(opts, manifest, cfg, sources, log)
        heads = [g for g in names if g != BACKBONE]
        if heads:
            bundle = small_bundle(cfg, sources, torch.float32, heads)
            records |= quantize_weight_only(opts, bundle, manifest, heads, [], log)
        return records


def _graphs(opts: QuantizeOptions, manifest: Manifest, log=print) -> list[str]:
    """The backbone (from the shards) and every head graph exported at fp32, or what --graphs names."""
    if opts.graphs:
        wrong = [g for g in opts.graphs if g not in WEIGHT_ONLY_GRAPHS]
        if wrong:
            raise UserError(f"{opts.precision.value} is made for the backbone and head graphs only, not {wrong[0]}")
        for g in opts.graphs:
            if g != BACKBONE:
                manifest.path(g)                         # the head's fp32 graph must be there
        return list(opts.graphs)
    heads = {g: "fp32" in manifest.data["graphs"][g]["precisions"] for g in manifest.graphs
             if g != BACKBONE and g in WEIGHT_ONLY_GRAPHS}
    for g in (g for g, fp32 in heads.items() if not fp32):
        log(f"{g}: skipped, no fp32 graph to quantize (`export --low-memory --dtype fp32 --graphs {g}` makes it)")
    return [BACKBONE] + [g for g, fp32 in heads.items() if fp32]


def stream_backbone(opts: QuantizeOptions, manifest: Manifest, cfg: NextStepConfig, sources: WeightSources,
                    log=print) -> dict:
    """Trace, stream, check and install the backbone's pair; returns its manifest record."""
    wcfg, reason = weight_only_config(opts)
    p = opts.precision.value
    log(f"{p} (--low-memory): block {wcfg.block}, rtn, ONNX Runtime accuracy level {wcfg.accuracy_level} ({reason})")
    spec = graph_specs(cfg, manifest.profile, (BACKBONE,))[BACKBONE]
    start = time.perf_counter()
    ort_ir, sizes, _ = trace_meta(meta_backbone(cfg, torch.float32), spec, OPSET)
    trt_ir, _, _ = trace_meta(meta_backbone(cfg, torch.bfloat16), spec, OPSET)
    log(f"  {BACKBONE}: traced twice on the meta device (fp32, bf16) in {time.perf_counter() - start:.1f} s")
    exclude = list(opts.exclude) if opts.exclude is not None else WEIGHT_ONLY_EXCLUDE
    sites, kept = choose_stream_sites(stream_linears(ort_ir), exclude, wcfg.block)
    need = _disk_need(sites, sources, wcfg.bits, wcfg.block)
    require_disk(opts.artifacts, need, f"the {p} backbone")
    trt_name = f"{BACKBONE}{TENSORRT_SUFFIX}"
    extra: dict = {"low_memory": True}

    def write(scratch: Path) -> list[Path]:
        records = quantize_stream(ort_ir, trt_ir, sites, sources.stored, wcfg, scratch / f"{BACKBONE}.{p}.data",
                                  scratch / f"{BACKBONE}.trt.{p}.data", log)
        ort, _ = external_proto(ort_ir, spec, sources.stored, scratch, link=False)       # kept weights in fp32
        fusions = fuse_for_ort(ort, cfg.backbone)
        trt, _ = external_proto(trt_ir, spec, sources.stored, scratch, f"{BACKBONE}.trt", link=False)   # in bf16
        trt = raise_opset(trt)
        extra["weights"] = {}
        for proto, name in ((ort, f"{BACKBONE}.onnx"), (trt, trt_name)):
            extra["weights"][name] = check_weights(proto, BACKBONE, scratch, sources)
            onnx.save(proto, scratch / name)
        extra["recipe"] = base_recipe(wcfg, records, kept, False) | {"exclude": exclude, "streamed": True}
        extra["deployments"] = deployments(BACKBONE, opts.precision, wcfg, reason, trt,
                                           "bf16 (the bf16 trace: the reference's own casts)", fusions)
        return graph_files(scratch / f"{BACKBONE}.onnx") + graph_files(scratch / trt_name)

    def validate(path: Path) -> ParityReport:
        trt_path = path.with_name(trt_name)
        ort, trt = load_model(path), load_model(trt_path)
        check_integrity(path, ort, BACKBONE)
        check_integrity(trt_path, trt, BACKBONE)
        log(f"  {BACKBONE}: reading every quantized tensor back from both files")
        extra["deployments"]["check"] = check_pair(ort, trt, sites, lambda s: site_weight(sources.stored, s.params),
                                                   wcfg.bits, False, path.parent)
        if not opts.validate:
            return ParityReport()
        report = ParityReport()
        for file, model in ((path, ort), (trt_path, trt)):
            report.extend(spot_check(BACKBONE, file, model, sources, quantized=opts.precision))
        return report

    report = install_graph(spec, sizes, time.perf_counter() - start, write, validate, opts.artifacts, manifest,
                           opts.precision, extra, trt_parse=need < TRT_PARSE_LIMIT, trt_graph=trt_name)
    record = manifest.entry(BACKBONE, opts.precision)
    worst = max((r for r in report.rows if r.metrics is not None), key=lambda r: r.metrics.rel_l2, default=None)
    log(f"{BACKBONE} [{p}]: {size_text(record['bytes'])} (both deployments), {len(sites)} linears int{wcfg.bits}, "
        f"{len(kept)} kept, every quantized tensor checked in both files"
        + (f", spot check worst rel-L2 {worst.metrics.rel_l2:.3g} ({worst.case})" if worst is not None else "")
        + f"; {time.perf_counter() - start:.0f} s")
    return record


def _disk_need(sites, sources: WeightSources, bits: int, block: int) -> int:
    """Both deployments: the quantized linears twice, the other backbone weights in fp32 (ONNX Runtime) and bf16."""
    quantized = {k for s in sites for k in s.params}
    codes = kept = 0
    for key, t in sources.stored.items():
        n = math.prod(t.shape)
        if key in quantized:
            codes += n * bits // 8 + n // block * 4
        elif key.startswith(BACKBONE_KEYS):
            kept += n
    return 2 * codes + kept * (4 + 2)
