"""``export --low-memory``: graphs of a model too big for memory, each checked for integrity before it is installed.

The backbone is traced on the meta device and its weights are streamed from the shards into external data (hard
links where the dtypes agree, chunked conversion otherwise): it is never materialized. The head and VAE graphs
(~0.6 GB and ~0.3 GB at fp32 for Large) are small: they are built with only their own weights loaded and go
through the ordinary trace and constant folding, saved with external data. Checks: weights, locations, spec and
onnx's checker for every graph; numerically, fp32 head graphs get the ordinary validation, the others the spot
checks of ``spotcheck.py`` (the VAE at 64x64: validating the Large VAE at 512x512, batch 4, peaked at 10 GB).
Scratch folders, the folder lock, the atomic install and the manifest are those of ``run.py`` (``scratch.py``).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import onnx
import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport
from nextstep_trt.core.resources import require_disk, size_text
from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.config import NextStepConfig, load_config
from nextstep_trt.ref.weights import check_keys, model_shapes, shard_files, vae_shapes

from .components import COMPONENTS
from .exporter import save, trace
from .external import check_stored, checkpoint_tensors, describe, verify_offsets
from .install import ExportOptions, check_writable, install_graph
from .integrity import IntegrityReport, check_graph_file, check_locations, compare_weights, record_hashes, run_checker
from .lint import load_model
from .manifest import Manifest
from .metatrace import CastIO, external_proto, trace_meta
from .profile import graph_specs
from .scratch import artifacts_lock
from .sizes import graph_weight_bytes
from .sources import WeightSources
from .spotcheck import spot_check
from .validate import ort_runner, validate_graph

DTYPES = {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16}
CONFIG_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
TRT_PARSE_LIMIT = 2 * 10**9      # the TensorRT parser reads every weight into memory: only parse graphs below this
BACKBONE_KEYS = ("embed_tokens.", "layers.", "norm.", "image_in_projector.", "image_out_projector.")


def graph_torch_dtype(precision: Precision) -> torch.dtype:
    """fp32 / bf16 -> the torch dtype the graphs are traced in."""
    if Precision(precision) not in DTYPES:
        raise UserError(f"--low-memory exports fp32 or bf16 graphs, not {Precision(precision).value}")
    return DTYPES[Precision(precision)]


def open_checkpoint(model_dir: Path) -> tuple[NextStepConfig, WeightSources]:
    """Config and shard headers; every missing shard, missing, unexpected, misshaped or mistyped tensor refused."""
    cfg = load_config(model_dir)
    weight_map = shard_files(model_dir)
    stored = checkpoint_tensors(model_dir, weight_map)
    moved = [k for k, shard in weight_map.items() if k in stored and stored[k].file.name != shard]
    if moved:
        raise UserError(f"{model_dir}: the index puts {moved[0]} in {weight_map[moved[0]]}, but it is in "
                        f"{stored[moved[0]].file.name} ({len(moved)} such key(s))")
    expected = model_shapes(cfg)
    check_keys({k: t.shape for k, t in stored.items()}, expected, str(model_dir))
    torch_dtype = json.loads((model_dir / "config.json").read_text()).get("torch_dtype", "float32")
    if torch_dtype not in CONFIG_CODES:
        raise UserError(f"{model_dir}/config.json: torch_dtype {torch_dtype!r} is not one of {', '.join(CONFIG_CODES)}")
    check_stored(stored, expected, CONFIG_CODES[torch_dtype], str(model_dir))
    problems = verify_offsets(stored)
    if problems:
        raise UserError(f"{model_dir}: {len(problems)} shard header problem(s): {problems[0]}")
    return cfg, WeightSources(model_dir, stored)


def small_bundle(cfg: NextStepConfig, sources: WeightSources, dtype: torch.dtype, graphs) -> ModelBundle:
    """A bundle whose backbone stays on the meta device; the head and VAE are real when a graph needs them."""
    from nextstep_trt.ref.model import NextStep
    from nextstep_trt.ref.vae import AutoEncoder

    with torch.device("meta"):
        model, vae = NextStep(cfg).to(dtype).eval(), AutoEncoder(cfg.vae).to(dtype).eval()
    if any(g.startswith("head") for g in graphs):
        head = {k: v.to(dtype) for k, v in sources.state("head_step", "image_head.", dtype).items()}
        model.image_head.load_state_dict(head, strict=True, assign=True)
    if any(g.startswith("vae") for g in graphs):
        state = sources.vae_state()
        check_keys({k: tuple(v.shape) for k, v in state.items()}, vae_shapes(cfg.vae), str(sources.model_dir / "vae"))
        vae.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return ModelBundle(cfg, model, vae, None, sources.model_dir)


def disk_need(cfg: NextStepConfig, profile, specs: dict, sources: WeightSources, dtype: torch.dtype,
              out_dir: Path) -> int:
    """Bytes the export writes: conversions (or copies, across filesystems) of backbone weights, plus small graphs."""
    same_fs = os.stat(sources.model_dir).st_dev == os.stat(out_dir).st_dev
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = 0
    if "backbone" in specs:
        for key, t in sources.stored.items():
            if key.startswith(BACKBONE_KEYS) and (t.torch_dtype != dtype or not same_fs):
                need += math.prod(t.shape) * itemsize
    small = graph_weight_bytes(cfg, profile, "fp32" if dtype == torch.float32 else "bf16")
    return need + sum(v for k, v in small.items() if k in specs and k != "backbone")


def check_integrity(path: Path, model: onnx.ModelProto, graph: str) -> None:
    """Locations and onnx's checker; a UserError on failure."""
    for check in (check_locations(model, path.parent), run_checker(path, model)):
        if not check.ok:
            raise UserError(f"{graph} failed its integrity check: {check.name}: {check.detail} "
                            f"(the previous graph, if any, is untouched)")


def check_weights(proto: onnx.ModelProto, graph: str, graph_dir: Path, sources: WeightSources) -> str:
    check, hashes = compare_weights(proto, graph, graph_dir, sources)
    if not check.ok:
        raise UserError(f"{graph} weights do not match the checkpoint: {check.detail}")
    record_hashes(proto, hashes)
    return check.detail


def meta_backbone(cfg: NextStepConfig, dtype: torch.dtype) -> torch.nn.Module:
    """The backbone graph's module on the meta device in ``dtype`` (behind fp32 I/O), ready for ``trace_meta``."""
    from nextstep_trt.ref.model import NextStep

    from .graphs import BackboneGraph

    with torch.device("meta"):
        module = BackboneGraph(NextStep(cfg).to(dtype).eval())
    return module if dtype == torch.float32 else CastIO(module, dtype)


def export_backbone(spec, opts: ExportOptions, manifest: Manifest, cfg: NextStepConfig, sources: WeightSources,
                    layer: int | None) -> ParityReport:
    """Meta-device trace; weights linked or converted into external data; integrity-checked; installed."""
    dtype = graph_torch_dtype(opts.dtype)
    ir_model, sizes, seconds = trace_meta(meta_backbone(cfg, dtype), spec, opts.opset)
    holder, extra = [ir_model], {"low_memory": True}          # popped by write(): the IR is freed once serialized
    del ir_model

    def write(scratch: Path) -> list[Path]:
        proto, placed = external_proto(holder.pop(), spec, sources.stored, scratch)
        extra["weights"] = describe(placed) | {"check": check_weights(proto, spec.name, scratch, sources)}
        path = scratch / f"{spec.name}.onnx"
        onnx.save(proto, path)
        weights = extra["weights"]
        # what the graph holds and what it newly occupies on disk (linked shards also hold unused tensors)
        extra["bytes"] = path.stat().st_size + weights["linked_bytes"] + weights["written_bytes"]
        extra["disk_bytes"] = path.stat().st_size + weights["written_bytes"]
        return [path] + [scratch / name for name in weights["files"]]

    def validate(path: Path) -> ParityReport:
        model = load_model(path)
        check_integrity(path, model, spec.name)
        return spot_check(spec.name, path, model, sources, layer) if opts.validate else ParityReport()

    weight_bytes = sum(math.prod(t.shape) for k, t in sources.stored.items() if k.startswith(BACKBONE_KEYS))
    return install_graph(spec, sizes, seconds, write, validate, opts.out_dir, manifest, Precision(opts.dtype), extra,
                         trt_parse=weight_bytes * torch.empty((), dtype=dtype).element_size() < TRT_PARSE_LIMIT)


def export_small(spec, opts: ExportOptions, manifest: Manifest, bundle: ModelBundle,
                 sources: WeightSources) -> ParityReport:
    """Head and VAE graphs: the ordinary trace on their real weights, always saved with external data."""
    dtype = graph_torch_dtype(opts.dtype)
    module = COMPONENTS[spec.name].module(bundle, spec)
    model, sizes, seconds = trace(module if dtype == torch.float32 else CastIO(module, dtype), spec, opts.opset)
    holder, extra = [model], {"low_memory": True}
    del model

    def write(scratch: Path) -> list[Path]:
        files = save(holder.pop(), scratch / f"{spec.name}.onnx", external_data=True)
        proto = load_model(files[0])
        extra["weights"] = {"check": check_weights(proto, spec.name, scratch, sources)}
        onnx.save(proto, files[0])
        return files

    def validate(path: Path) -> ParityReport:
        model = load_model(path)
        check_integrity(path, model, spec.name)
        if not opts.validate:
            return ParityReport()
        if dtype == torch.float32 and spec.name.startswith("head"):      # every profile case: cheap for the head
            return validate_graph(bundle, spec, ort_runner(path, spec), opts.profile)
        return spot_check(spec.name, path, model, sources)              # the VAE at 64x64 (largest case: 10 GB)

    return install_graph(spec, sizes, seconds, write, validate, opts.out_dir, manifest, Precision(opts.dtype), extra)


def export_low_memory(opts: ExportOptions, log=print, layer: int | None = None) -> ParityReport:
    """Export the requested graphs of a model folder of any size into ``opts.out_dir``."""
    dtype = graph_torch_dtype(opts.dtype)
    cfg, sources = open_checkpoint(Path(opts.model_dir))
    specs = graph_specs(cfg, opts.profile, opts.graphs)
    check_writable(opts.out_dir)
    with artifacts_lock(opts.out_dir, log):      # one writer per folder; stale scratch of dead runs removed first
        need = disk_need(cfg, opts.profile, specs, sources, dtype, opts.out_dir)
        require_disk(opts.out_dir, need, f"the low-memory {Precision(opts.dtype).value} export of {', '.join(specs)}")
        manifest = Manifest.open_for_export(opts.out_dir, cfg, opts.profile, opts.model_dir)
        bundle = small_bundle(cfg, sources, dtype, specs) if set(specs) - {"backbone"} else None
        report = ParityReport()
        for name, spec in specs.items():
            start = time.perf_counter()
            if name == "backbone":
                graph_report = export_backbone(spec, opts, manifest, cfg, sources, layer)
            else:
                graph_report = export_small(spec, opts, manifest, bundle, sources)
            rec = manifest.entry(name, Precision(opts.dtype))
            log(f"exported {name} ({Precision(opts.dtype).value}) in {time.perf_counter() - start:.1f} s: "
                f"{rec['weights']['check']}" + (f"; {_summary_line(rec)}" if "linked" in rec["weights"] else ""))
            report.extend(graph_report)
    return report


def _summary_line(rec: dict) -> str:
    w = rec["weights"]
    return (f"{w['linked']}/{w['initializers']} initializers in hard-linked shards ({size_text(w['linked_bytes'])}), "
            f"{size_text(w['written_bytes'])} written")


def check_artifacts(opts: ExportOptions, layer: int | None = None) -> list[IntegrityReport]:
    """Integrity of already-exported graphs against the model folder (``export --check-only``)."""
    cfg, sources = open_checkpoint(Path(opts.model_dir))
    manifest = Manifest.load(opts.out_dir)
    manifest.check_model(cfg)
    precision = Precision(opts.dtype)
    names = [g for g in opts.graphs if g in manifest.graphs]
    if not names:
        raise UserError(f"{opts.out_dir} has none of the graphs {', '.join(opts.graphs)}")
    reports = []
    for name in names:
        sizes = manifest.data["graphs"][name].get("export_sizes")
        path = manifest.path(name, precision, verify=False)    # the checks below compare every byte, naming tensors
        reports.append(check_graph_file(path, manifest.spec(name, precision), sizes, sources, numeric=opts.validate,
                                        layer=layer))
    return reports
