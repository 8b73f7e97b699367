"""The bench report as text tables (torch-free)."""
from __future__ import annotations

import math

from nextstep_trt.core.resources import size_text

from .memory import Bandwidth
from .results import BenchReport, Phase, RunResult, fmt
from .steps import CONTROL_MARGIN, StepCell


def _times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _pct(v: float | None) -> str:
    return fmt(None if v is None else 100 * v, ".0f") + "%"


def _settings_line(s: dict, bw: Bandwidth) -> str:
    return (f"{s['height']}x{s['width']}, {s['steps']} steps, cfg {s['cfg']}, precision {','.join(s['precisions'])} "
            f"(ratios against {s['precisions'][0]}), {s['repeat']} timed run(s) per cell after warm-up, spread rule "
            f"max/min > {s['max_spread']:g} re-runs a cell up to {s['reruns']}x; model {s['preset_note']}\n"
            f"copy bandwidth {bw.gbps:.1f} GB/s (1 thread {bw.one_thread_gbps:.1f}, {bw.threads} threads "
            f"{bw.all_threads_gbps:.1f}; {size_text(bw.size_mib * 2**20)} buffer, read+write bytes); read-only "
            f"{bw.read_gbps:.1f} GB/s (OR-reduction)")


def _label(r: RunResult) -> str:
    return r.backend if r.backend.startswith("torch") else f"{r.backend} {r.precision}"


def _stage_table(runs: list[RunResult]) -> str:
    head = (f"{'backend':<18}{'B':>2} {'prefill':>8} {'dec@1':>7} {'dec@mid':>7} {'dec@last':>8} {'sampler':>8} "
            f"{'fused':>7} {'per-step':>8} {'other':>6} {'VAE':>7} {'s/img':>7} {'img/s':>7}")
    lines = ["per stage, ms (dec@1/mid/last: median of 5 decode steps there; sampler: per image token; 'fused' / "
             "'per-step': micro-benchmarks of one token; 'other': the request's time outside the stage calls, per "
             "token)",
             head, "-" * len(head)]
    for r in runs:
        s = r.stages
        lines.append(f"{_label(r):<18}{r.batch:>2} {fmt(s.prefill_ms):>8} {fmt(s.decode_first_ms):>7} "
                     f"{fmt(s.decode_mid_ms):>7} {fmt(s.decode_last_ms):>8} {fmt(s.sampler_ms):>8} "
                     f"{fmt(s.sampler_fused_ms):>7} {fmt(s.sampler_steps_ms):>8} {fmt(s.other_ms, '.2f'):>6} "
                     f"{fmt(s.vae_ms, '.0f'):>7} {s.s_per_image:>7.2f} {s.images_per_s:>7.3f}")
    return "\n".join(lines)


def _load_cell(r: RunResult) -> str:
    st = r.stability
    if st is None or st.load.peak is None:
        return "-"
    return f"{st.load.peak:.2f}" + ("!" if st.load.over else "")


def _ratio_table(runs: list[RunResult], first: str) -> str:
    head = (f"{'backend':<18}{'B':>2} {'vs eager':>8} {'vs compile':>10} {'vs ' + first:>9} {'decode GB/s':>11} "
            f"{'of copy':>7} {'sampler GB/s':>12} {'of copy':>7}  {'PSNR vs eager':>13} {'spread':>6} {'load':>6}")
    lines = [f"end-to-end speed-up (images/s ratio; 'vs {first}': the same backend at the first precision), "
             "roofline, parity, spread of the timed repeats (max/min), peak 1-min load average during the cell "
             "('!': above the cores)", head, "-" * len(head)]
    for r in runs:
        f, x = r.roofline, r.ratios
        resident = "*" if f.head_cache_resident else " "
        psnr = "reference" if r.psnr_db is None else ("identical" if math.isinf(r.psnr_db) else f"{r.psnr_db:.1f} dB")
        spread = "-" if r.stability is None or r.stability.spread is None else f"{r.stability.spread:.2f}"
        lines.append(f"{_label(r):<18}{r.batch:>2} {_times(x.get('e2e_vs_eager')):>8} "
                     f"{_times(x.get('e2e_vs_compile')):>10} {_times(x.get('e2e_vs_first')):>9} "
                     f"{fmt(f.decode_gbps):>11} {_pct(f.decode_fraction):>7} "
                     f"{fmt(f.sampler_gbps):>12} {_pct(f.sampler_fraction):>7}{resident} {psnr:>13} {spread:>6} "
                     f"{_load_cell(r):>6}")
    if any(r.roofline.head_cache_resident for r in runs):
        lines.append("* the head's weights fit in the last-level cache: its 'GB/s' is cache traffic and may pass 100%")
    return "\n".join(lines)


def _steps_table(cells: list[StepCell]) -> str:
    w = max([12] + [len(t.label) + 1 for c in cells for t in c.timings])      # the controls' labels are longer
    head = (f"{'graph':<{w}}{'past':>6} {'ms/step':>8} {'vs fp32':>8} {'read/step':>9} {'GB/s':>6} {'of copy':>7} "
            f"{'of read':>7} {'cos vs fp32':>11} {'spread':>6} {'load':>6}")
    lines = ["decode step micro-benchmark (rows = 2 CFG rows of one image, one text token at position 'past' over "
             "'past' cached slots (a buffer of past+1, as the runtime's cache), interleaved rounds in this process; "
             "read/step: initializers read (lookup tables excluded) + past K/V; 'vs fp32': our fp32 step / this "
             "step, paired round by round, median over rounds)", head, "-" * len(head)]
    for c in cells:
        base = c.get("ours", "fp32")
        st = c.stability
        load = "-" if st.load.peak is None else f"{st.load.peak:.2f}" + ("!" if st.load.over else "")
        spread = "-" if st.spread is None else f"{st.spread:.2f}"
        for t in c.timings:
            vs = None if base is None else t.speedup_over(base)
            cos = "-" if t.cosine is None else f"{t.cosine:.6f}"
            lines.append(f"{t.label:<{w}}{t.past:>6} {t.ms:>8.2f} {_times(vs):>8} {size_text(t.step_bytes):>9} "
                         f"{t.gbps:>6.1f} {_pct(t.fraction):>7} {_pct(t.read_fraction):>7} {cos:>11} {spread:>6} "
                         f"{load:>6}")
    ratios = {c.past: r for c in cells if (r := c.control_ratios())}
    if ratios:
        per_graph = {label: [f"{r[label]:.2f}x at past {past}" for past, r in ratios.items() if label in r]
                     for label in dict.fromkeys(label for r in ratios.values() for label in r)}   # every past's
        lines.append("controls (a second session of the graph, timed in every round; its time / the first's; "
                     f"1.00: a graph's place in the process does not move it; beyond 1 +/- {CONTROL_MARGIN:.2f} the "
                     "cell is flagged): " + "; ".join(f"{label} {', '.join(v)}" for label, v in per_graph.items()))
    return "\n".join(lines)


def _phase_table(phases: list[Phase]) -> str:
    head = (f"{'backend':<18} {'RSS start':>10} {'RSS peak':>10} {'GPU mem':>9} {'warm-up s':>9} {'compile s':>9}  "
            "timing")
    lines = ["memory (VmRSS sampled every 20 ms during the backend's phase), warm-up, how stages were timed",
             head, "-" * len(head)]
    for p in phases:
        gpu = "-" if p.gpu_bytes is None else size_text(p.gpu_bytes)
        lines.append(f"{p.backend:<18} {size_text(p.rss_start_bytes):>10} {size_text(p.rss_peak_bytes):>10} "
                     f"{gpu:>9} {p.warmup_s:>9.1f} {fmt(p.compile_s):>9}  {p.timing_source}")
        lines += [f"{'':<19}threads {p.threads}"] if p.threads else []
        lines += [f"{'':<19}notice: {n}" for n in p.notices]
    return "\n".join(lines)


def report_table(report: BenchReport) -> str:
    """Every table of the report, then warnings, targets and notes."""
    parts = [report.machine.describe(), _settings_line(report.settings, report.bandwidth), "",
             _stage_table(report.runs), "", _ratio_table(report.runs, report.precisions[0])]
    if report.steps:
        parts += ["", _steps_table(report.steps)]
    parts += ["", _phase_table(report.phases)]
    warnings = report.warnings()
    if warnings:
        parts += ["", "WARNINGS:"] + [f"  ! {w}" for w in warnings]
    if report.targets:
        parts += ["", "targets (none is a timed test; the issues state them for the bench preset):"]
        parts += [t.line() for t in report.targets]
    parts += [""] + [f"note: {n}" for n in report.notes]
    return "\n".join(parts)
