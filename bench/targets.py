"""The issues' targets at the bench preset, checked against a report (torch-free). None of them is a timed test.

The targets are stated for the bench preset (``nextstep-trt init-tiny --preset bench``) at fp32 (issue 18's
precision targets: ``quant_targets.py``). On any other model they are *not applicable*: the table says so instead of
MET/MISS. A target measured while any cell ran under load carries that caveat.
"""
from __future__ import annotations

from nextstep_trt.core.resources import size_text
from nextstep_trt.ref.config import NextStepConfig, preset

from .quant_targets import precision_targets
from .results import BenchReport, RunResult, Target, ratio

ORT = "onnxruntime"
FP32 = "fp32"


def preset_settings(cfg: NextStepConfig) -> dict:
    """Whether the benched model is the bench preset, for the report's settings."""
    bench = cfg.fingerprint() == preset("bench").fingerprint()
    return {"preset": "bench" if bench else None,
            "preset_note": "is the bench preset" if bench else
            f"is not the bench preset (config {cfg.fingerprint()}): targets are not applicable"}


def label_targets(report: BenchReport, targets: list[Target]) -> list[Target]:
    """Not applicable off the bench preset; a caveat naming the cells that ran under load."""
    loaded = report.cells_under_load()
    for t in targets:
        if report.settings.get("preset") != "bench":
            t.applicable, t.met = False, None
            t.caveat = "not applicable: the model is not the bench preset"
        elif loaded:
            t.caveat = f"measured under load: {len(loaded)} cell(s) ({', '.join(loaded[:3])}" + \
                (", ...)" if len(loaded) > 3 else ")")
    return targets


def _speedups(report: BenchReport, key: str) -> tuple[float | None, str]:
    """ORT's end-to-end ratio ``key`` at the smallest batch, and every batch's value as evidence."""
    runs = [r for r in report.runs if r.backend == ORT and r.precision == FP32]
    values = {r.batch: r.ratios.get(key) for r in runs}
    evidence = ", ".join(f"B={b}: {v:.2f}x" for b, v in values.items() if v is not None)
    first = values[min(values)] if values else None
    return first, f"({evidence or 'not measured'})"


def _decode_targets(run: RunResult | None) -> list[Target]:
    if run is None:
        return [Target("decode step >= 75% of copy bandwidth", None, 75, "%", None, "(no onnxruntime fp32 run)"),
                Target("decode at the last token <= 1.15x the first", None, 1.15, "x", None,
                       "(no onnxruntime fp32 run)")]
    s, f = run.stages, run.roofline
    frac = None if f.decode_fraction is None else 100 * f.decode_fraction
    growth = ratio(s.decode_last_ms, s.decode_first_ms)
    read = "" if f.decode_read_fraction is None else \
        f"; {100 * f.decode_read_fraction:.0f}% of the read-only {f.read_gbps:.1f} GB/s"
    return [Target.measured("decode step >= 75% of copy bandwidth", frac, 75, "%",
                            f"(B={run.batch}: {size_text(f.decode_bytes)} in {s.decode_mid_ms:.1f} ms = "
                            f"{f.decode_gbps:.1f} GB/s of {f.bandwidth_gbps:.1f}{read})"),
            Target.measured("decode at the last token <= 1.15x the first", growth, 1.15, "x",
                            f"(B={run.batch}: {s.decode_first_ms:.1f} -> {s.decode_last_ms:.1f} ms)", at_most=True)]


def _sampler_target(report: BenchReport, run: RunResult | None) -> Target:
    name = "sampler fused >= 1.4x the per-step loop"
    if run is None or run.stages.sampler_fused_ms is None:
        return Target(name, None, 1.4, "x", None, "(no fused sampler measured)")
    s = run.stages
    ref = report.run("torch", run.batch)
    vs_ref = ratio(ref.stages.sampler_ms if ref else None, s.sampler_fused_ms)
    extra = f"; vs the eager reference's per-step loop {vs_ref:.2f}x" if vs_ref else ""
    return Target.measured(name, ratio(s.sampler_steps_ms, s.sampler_fused_ms), 1.4, "x",
                           f"(B={run.batch}: fused {s.sampler_fused_ms:.2f} ms vs head_step loop "
                           f"{s.sampler_steps_ms:.2f} ms per token{extra})")


def _batch_target(report: BenchReport) -> Target:
    one, four = report.run(ORT, 1, FP32), report.run(ORT, 4, FP32)
    name = "batch 4 >= 2.5x the images/s of batch 1"
    if one is None or four is None:
        return Target(name, None, 2.5, "x", None, "(needs --batch 1,4)")
    return Target.measured(name, ratio(four.stages.images_per_s, one.stages.images_per_s), 2.5, "x",
                           f"({one.stages.images_per_s:.3f} -> {four.stages.images_per_s:.3f} images/s)")


def check_targets(report: BenchReport) -> list[Target]:
    """Every target of the issues, measured on the ONNX Runtime fp32 runs (issue 18's on each precision)."""
    batches = sorted(r.batch for r in report.runs if r.backend == ORT and r.precision == FP32)
    first = report.run(ORT, batches[0], FP32) if batches else None
    eager, eager_ev = _speedups(report, "e2e_vs_eager")
    comp, comp_ev = _speedups(report, "e2e_vs_compile")
    return [Target.measured("ONNX Runtime end-to-end >= 1.3x eager reference", eager, 1.3, "x", eager_ev),
            Target.measured("ONNX Runtime end-to-end >= 1.0x torch.compile", comp, 1.0, "x", comp_ev),
            *_decode_targets(first), _sampler_target(report, first), _batch_target(report),
            *precision_targets(report)]
