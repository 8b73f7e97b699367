"""Bench results: dataclasses that print themselves as tables and dump themselves as JSON (torch-free)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .machine import Machine
from .memory import Bandwidth

MiB = 2**20


def json_safe(value):
    """Replace inf/nan (not valid JSON) by strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def fmt(value: float | None, spec: str = ".1f", none: str = "-") -> str:
    """A number for a table cell ('-' for None)."""
    return none if value is None else format(value, spec)


@dataclass
class StageTimes:
    """Per-stage wall times of one backend at one batch size (medians over the timed runs)."""

    prefill_ms: float | None
    decode_first_ms: float | None        # decode steps 1..5
    decode_mid_ms: float | None          # 5 steps around the middle token
    decode_last_ms: float | None         # the last 5 decode steps
    sampler_ms: float | None             # per image token, the path the loop ran
    sampler_path: str                    # "fused graph", "head_step per step", "reference: one head call per step"
    sampler_fused_ms: float | None       # micro-benchmark: the fused graph, per token
    sampler_steps_ms: float | None       # micro-benchmark: one velocity call per step, per token
    head_calls_per_token: float | None   # counted (reference) or the sampler's step count
    vae_ms: float | None
    other_ms: float | None               # per image token: wall time of the request outside the stage calls
    e2e_s: float                         # one request: prompt -> images
    s_per_image: float
    images_per_s: float
    runs: int


@dataclass
class Roofline:
    """Bytes that must stream per step over the time the step took, against the measured bandwidth."""

    bandwidth_gbps: float
    bandwidth_kind: str                  # "host copy" or "device copy"
    decode_bytes: int                    # weights read by a decode step + the KV cache it attends over
    decode_gbps: float | None
    decode_fraction: float | None
    sampler_bytes: int                   # head weights x steps, per image token
    sampler_gbps: float | None
    sampler_fraction: float | None
    head_weight_bytes: int
    head_cache_resident: bool            # the head fits in the last-level cache: its fraction may exceed 1
    read_gbps: float | None = None       # read-only bandwidth (host): a decode step only reads
    decode_read_fraction: float | None = None


@dataclass
class RunResult:
    """One backend at one batch size."""

    backend: str
    batch: int
    stages: StageTimes
    roofline: Roofline
    psnr_db: float | None                # images vs the eager reference's (same prompt, seeds, noise)
    load_1min: float = 0.0               # 1-minute load average when the cell's timed runs ended
    ratios: dict[str, float | None] = field(default_factory=dict)


@dataclass
class Phase:
    """Everything about one backend that does not depend on the batch: memory, warm-up, compile, notices."""

    backend: str
    rss_start_bytes: int
    rss_peak_bytes: int
    gpu_bytes: int | None
    warmup_s: float
    compile_s: float | None
    timing_source: str
    threads: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


@dataclass
class Target:
    """One of the issue's targets: measured value, threshold, met or not, and why."""

    name: str
    value: float | None
    threshold: float
    unit: str
    met: bool | None
    evidence: str

    def line(self) -> str:
        verdict = "n/a " if self.met is None else ("MET " if self.met else "MISS")
        value = "-" if self.value is None else f"{self.value:.2f}{self.unit}"
        return f"  [{verdict}] {self.name}: {value} (target {self.threshold:g}{self.unit}) {self.evidence}"


@dataclass
class BenchReport:
    machine: Machine
    bandwidth: Bandwidth
    settings: dict
    runs: list[RunResult] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile_files: list[str] = field(default_factory=list)

    def run(self, backend: str, batch: int) -> RunResult | None:
        return next((r for r in self.runs if r.backend == backend and r.batch == batch), None)

    def to_json(self) -> dict:
        return json_safe({"machine": self.machine.to_json(), "bandwidth": self.bandwidth.to_json(),
                          "settings": self.settings, "runs": [asdict(r) for r in self.runs],
                          "phases": [asdict(p) for p in self.phases], "targets": [asdict(t) for t in self.targets],
                          "notes": self.notes, "profile_files": self.profile_files})

    def table(self) -> str:
        """Stage table, ratio/roofline/parity table, memory table, targets, notes."""
        parts = [self.machine.describe(), _settings_line(self.settings, self.bandwidth), "",
                 _stage_table(self.runs), "", _ratio_table(self.runs), "", _phase_table(self.phases)]
        if self.targets:
            parts += ["", "targets (bench preset, fp32; none is a timed test):"] + [t.line() for t in self.targets]
        parts += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(parts)


def _settings_line(s: dict, bw: Bandwidth) -> str:
    return (f"{s['height']}x{s['width']}, {s['steps']} steps, cfg {s['cfg']}, precision {s['precision']}, "
            f"{s['repeat']} timed run(s) per cell after warm-up; copy bandwidth {bw.gbps:.1f} GB/s "
            f"(1 thread {bw.one_thread_gbps:.1f}, {bw.threads} threads {bw.all_threads_gbps:.1f}; "
            f"{bw.size_mib} MiB, read+write bytes); read-only {bw.read_gbps:.1f} GB/s (OR-reduction)")


def _stage_table(runs: list[RunResult]) -> str:
    head = (f"{'backend':<14}{'B':>2} {'prefill':>8} {'dec@1':>7} {'dec@mid':>7} {'dec@last':>8} {'sampler':>8} "
            f"{'fused':>7} {'per-step':>8} {'other':>6} {'VAE':>7} {'s/img':>7} {'img/s':>7}")
    lines = ["per stage, ms (dec@1/mid/last: median of 5 decode steps there; sampler: per image token; 'fused' / "
             "'per-step': micro-benchmarks of one token; 'other': the request's time outside the stage calls, per "
             "token)",
             head, "-" * len(head)]
    for r in runs:
        s = r.stages
        lines.append(f"{r.backend:<14}{r.batch:>2} {fmt(s.prefill_ms):>8} {fmt(s.decode_first_ms):>7} "
                     f"{fmt(s.decode_mid_ms):>7} {fmt(s.decode_last_ms):>8} {fmt(s.sampler_ms):>8} "
                     f"{fmt(s.sampler_fused_ms):>7} {fmt(s.sampler_steps_ms):>8} {fmt(s.other_ms, '.2f'):>6} "
                     f"{fmt(s.vae_ms, '.0f'):>7} "
                     f"{s.s_per_image:>7.2f} {s.images_per_s:>7.3f}")
    return "\n".join(lines)


def _ratio_table(runs: list[RunResult]) -> str:
    head = (f"{'backend':<14}{'B':>2} {'vs eager':>8} {'vs compile':>10} {'decode GB/s':>11} {'of copy':>7} "
            f"{'sampler GB/s':>12} {'of copy':>7}  {'PSNR vs eager':>13} {'load':>5}")
    lines = ["end-to-end speed-up (images/s ratio), roofline, parity, 1-min load average after the cell", head,
             "-" * len(head)]
    for r in runs:
        f, x = r.roofline, r.ratios
        pct = lambda v: fmt(None if v is None else 100 * v, ".0f") + "%"  # noqa: E731
        resident = "*" if f.head_cache_resident else " "
        psnr = "reference" if r.psnr_db is None else ("identical" if math.isinf(r.psnr_db) else f"{r.psnr_db:.1f} dB")
        times = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
        lines.append(f"{r.backend:<14}{r.batch:>2} {times(x.get('e2e_vs_eager')):>8} "
                     f"{times(x.get('e2e_vs_compile')):>10} {fmt(f.decode_gbps):>11} {pct(f.decode_fraction):>7} "
                     f"{fmt(f.sampler_gbps):>12} {pct(f.sampler_fraction):>7}{resident} {psnr:>13} "
                     f"{r.load_1min:>5.2f}")
    if any(r.roofline.head_cache_resident for r in runs):
        lines.append("* the head's weights fit in the last-level cache: its 'GB/s' is cache traffic and may pass 100%")
    return "\n".join(lines)


def _phase_table(phases: list[Phase]) -> str:
    head = (f"{'backend':<14} {'RSS start':>10} {'RSS peak':>10} {'GPU mem':>9} {'warm-up s':>9} {'compile s':>9}  "
            "timing")
    lines = ["memory (VmRSS sampled every 20 ms during the backend's phase), warm-up, how stages were timed",
             head, "-" * len(head)]
    for p in phases:
        gpu = "-" if p.gpu_bytes is None else f"{p.gpu_bytes / MiB:.0f} MiB"
        lines.append(f"{p.backend:<14} {p.rss_start_bytes / MiB:>6.0f} MiB {p.rss_peak_bytes / MiB:>6.0f} MiB "
                     f"{gpu:>9} {p.warmup_s:>9.1f} {fmt(p.compile_s):>9}  {p.timing_source}")
        lines += [f"{'':<15}threads {p.threads}"] if p.threads else []
        lines += [f"{'':<15}notice: {n}" for n in p.notices]
    return "\n".join(lines)
