"""The decode-step phase of a bench run: our backbone graph per precision and the peer's builds, timed side by side
(``steps.py``), and the check that the peer computes our model (torch-free; the peer's builder runs in a
subprocess)."""
from __future__ import annotations

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.resources import free_ram, size_text
from nextstep_trt.core.tolerances import graph_bound
from nextstep_trt.export.ort_kvcache import read_scales
from nextstep_trt.ref.weights import iter_shard_tensors, shard_files

from .graph_bytes import graph_stream_bytes
from .peer import build_peer, kv_scale_file, peer_installed, peer_precisions
from .results import BenchReport
from .steps import StepGraph, StepOptions, control_of, time_decode_steps

CONTROL_RAM_FACTOR = 2          # RAM a control session may take, in multiples of its graph's initializer bytes
# The peer's fp32 build must give our fp32 cond within the fp32 graph bound, else the conversion is wrong.
PEER_FP32_BOUND = graph_bound("backbone", Precision.FP32, "cond")


def _projector(model_dir):
    """cond = image_out_projector(hidden): applied to the peer's final hidden state, in fp32 numpy."""
    w = {k: t.astype(np.float32) for k, t in iter_shard_tensors(model_dir, shard_files(model_dir), "np")
         if k.startswith("image_out_projector.")}
    weight, bias = w["image_out_projector.weight"], w["image_out_projector.bias"]
    return lambda hidden: hidden @ weight.T + bias                       # [rows,H] -> [rows,H]


def our_backbone(manifest, precision: str) -> dict | None:
    """The manifest entry of our backbone graph at ``precision``; None when that graph was not made."""
    return manifest.data["graphs"].get("backbone", {}).get("precisions", {}).get(precision)


def our_graphs(manifest, precisions: list[str], threads: int) -> tuple[list[StepGraph], list[str]]:
    """Our backbone graph at fp32 (the baseline of every ratio) and at each asked precision that was made."""
    cfg, graphs, notes = manifest.config, [], []
    for p in ["fp32"] + [p for p in precisions if p != "fp32"]:
        if our_backbone(manifest, p) is None:
            notes.append(f"decode steps: no {p} backbone graph (run `nextstep-trt quantize --precision {p}`)")
            continue
        graphs.append(StepGraph(f"ours {p}", "ours", p, manifest.path("backbone", Precision(p)), cfg, threads))
    return graphs, notes


def our_cache_scales(manifest, precision: str) -> dict:
    """The int8 cache scales of our backbone graph at ``precision`` ({}: a float cache, or no such graph)."""
    if our_backbone(manifest, precision) is None:
        return {}
    return read_scales(manifest.path("backbone", Precision(precision)))


def our_quantization(manifest, precision: str) -> dict:
    """{"block_size", "accuracy_level"} of our backbone graph at ``precision`` ({} for none, or a float graph)."""
    entry = our_backbone(manifest, precision) or {}
    level = entry.get("deployments", {}).get("onnxruntime", {}).get("accuracy_level")
    block = entry.get("recipe", {}).get("block_size")
    return {k: v for k, v in (("block_size", block), ("accuracy_level", level)) if v is not None}


def peer_graphs(bench, manifest) -> tuple[list[StepGraph], dict]:
    """The peer's builds this run needs (cached under ART/peer/), or none and why."""
    o = bench.opts
    wanted = o.peer if o.peer is not None else peer_installed()
    if not wanted:
        return [], {"built": False, "why": "onnxruntime-genai is not installed (pip install 'nextstep-trt[peer]')"
                    if o.peer is None else "--peer off"}
    graphs, info = [], {"built": True, "precisions": [], "options": {}}
    project = _projector(o.model)
    for p in peer_precisions(tuple(o.precisions)):
        scales = our_cache_scales(manifest, p)
        kv = kv_scale_file(o.artifacts, scales, manifest.config.backbone.num_layers) if scales else None
        opts = o.peer_options.matching(our_quantization(manifest, p))
        if p != "fp32":
            info["options"][p] = vars(opts).copy()
        try:
            path = build_peer(o.model, o.artifacts, p, opts, log=bench.log, kv_scales=kv)
        except UserError as err:
            info.setdefault("failed", {})[p] = str(err)
            continue
        if kv:
            info.setdefault("kv_cache", {})[p] = f"int8 per channel, our scales ({kv.name})"
        graphs.append(StepGraph(f"peer {p}", "peer", p, path, manifest.config, o.threads, project, scales))
        info["precisions"].append(p)
        info.setdefault("graphs", {})[p] = str(path)
    return graphs, info


def check_peer(report: BenchReport) -> None:
    """Peer fp32 against ours fp32 at every past: the conversion is right only within the fp32 graph bound."""
    rows = [(c.past, c.get("peer", "fp32"), c.get("ours", "fp32")) for c in report.steps]
    checked = [(past, t) for past, t, ours in rows if t is not None and ours is not None]
    if not checked:
        report.peer["verified"] = None
        return
    bad = [f"past {past}: rel_l2 {t.rel_l2:.2e}, max_abs {t.max_abs:.2e}" for past, t in checked
           if (PEER_FP32_BOUND.rel_l2 is not None and not t.rel_l2 <= PEER_FP32_BOUND.rel_l2)
           or (PEER_FP32_BOUND.max_abs is not None and not t.max_abs <= PEER_FP32_BOUND.max_abs)]
    report.peer["verified"] = not bad
    worst = max(t.rel_l2 for _, t in checked)
    if bad:
        report.notes.append(f"the peer's fp32 build does not compute our backbone ({'; '.join(bad)}; bound "
                            f"{PEER_FP32_BOUND.describe()}): the HF conversion is wrong, peer comparisons are void")
    else:
        report.notes.append(f"the peer's fp32 build equals our fp32 backbone step (worst rel_l2 {worst:.1e}, bound "
                            f"{PEER_FP32_BOUND.describe()}): both run the same model")


def controls_that_fit(twins: list[StepGraph], free: int) -> tuple[list[StepGraph], list[str]]:
    """A control session (``steps.control_of``) of each of ``twins`` whose weights fit twice in ``free`` bytes of
    RAM (ONNX Runtime may hold a prepacked copy beside the loaded one), and a note for each left without."""
    controls, notes = [], []
    for g in twins:
        need = CONTROL_RAM_FACTOR * graph_stream_bytes(g.path, lookups=True)
        if need > free:
            notes.append(f"decode steps: no control session of {g.label} (it would need ~{size_text(need)} of the "
                         f"{size_text(free)} of RAM available)")
            continue
        controls.append(control_of(g))
    return controls, notes


def run_step_phase(bench, report: BenchReport) -> None:
    """Time our graphs and the peer's at every decode past of the options; results into ``report``."""
    from nextstep_trt.export.manifest import Manifest

    o = bench.opts
    if not o.decode_pasts or o.artifacts is None or "onnxruntime" not in bench.names:
        return
    manifest = Manifest.load(o.artifacts)
    graphs, notes = our_graphs(manifest, list(o.precisions), o.threads)
    report.notes += notes
    if not graphs:
        return
    peers, report.peer = peer_graphs(bench, manifest)
    report.notes += [f"the peer's {p} build failed, not measured: {err}" for p, err in
                     report.peer.get("failed", {}).items()]
    opts = StepOptions(tuple(o.decode_pasts), 2, o.decode_rounds, o.decode_steps, o.threads, o.seed, o.spread)
    twins = [graphs[-1]] + [g for g in peers if g.precision == graphs[-1].precision]
    controls, skipped = controls_that_fit(twins, free_ram())
    report.notes += skipped
    timed = graphs + peers + controls                                  # in a random order each round
    bench.log(f"[decode steps] {', '.join(g.label for g in timed)} at past {', '.join(map(str, o.decode_pasts))}")
    report.steps = time_decode_steps(timed, opts, report.bandwidth.gbps, report.bandwidth.read_gbps, bench.watch)
    for cell in report.steps:
        bench.log("  past {}: ".format(cell.past) + ", ".join(f"{t.label} {t.ms:.2f} ms" for t in cell.timings)
                  + "".join(f"\n  ! {n}" for n in cell.warnings()))
    check_peer(report)
