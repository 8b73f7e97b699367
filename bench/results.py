"""Bench results: dataclasses that print themselves as tables and dump themselves as JSON (torch-free)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .machine import Machine
from .memory import Bandwidth
from .stability import Stability
from .steps import StepCell


def json_safe(value):
    """Replace inf/nan (not valid JSON) by strings, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0."""
    return None if a is None or b is None or b == 0 else a / b


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
    """One backend at one precision and batch size (a cell)."""

    backend: str
    batch: int
    stages: StageTimes
    roofline: Roofline
    psnr_db: float | None                # images vs the eager reference's (same prompt, seeds, noise)
    precision: str = "fp32"
    stability: Stability | None = None   # load during the cell, spread of its repeats, re-runs
    ratios: dict[str, float | None] = field(default_factory=dict)

    @property
    def cell(self) -> str:
        label = self.backend if self.backend.startswith("torch") else f"{self.backend} {self.precision}"
        return f"{label} B={self.batch}"

    @property
    def under_load(self) -> bool:
        return self.stability is not None and self.stability.load.over

    def notes(self) -> list[str]:
        return self.stability.notes(self.cell) if self.stability is not None else []

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "stability"}
        return out | {"stability": self.stability.to_json() if self.stability else None,
                      "under_load": self.under_load, "warnings": self.notes()}


@dataclass
class Phase:
    """Everything about one backend that does not depend on the batch: memory, warm-up, compile, notices."""

    backend: str                         # "onnxruntime fp16": backend and precision
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
    """One of the issues' targets: measured value, threshold, met or not, and why. ``applicable`` is False when the
    target is stated for another model (the bench preset); ``caveat`` says when it was measured under load."""

    name: str
    value: float | None
    threshold: float
    unit: str
    met: bool | None
    evidence: str
    applicable: bool = True
    caveat: str = ""

    @classmethod
    def measured(cls, name: str, value: float | None, threshold: float, unit: str, evidence: str,
                 at_most: bool = False) -> "Target":
        """Met when ``value`` >= ``threshold`` (<= with ``at_most``); unknown when nothing was measured."""
        met = None if value is None else (value <= threshold if at_most else value >= threshold)
        return cls(name, value, threshold, unit, met, evidence)

    def line(self) -> str:
        verdict = "n/a " if self.met is None or not self.applicable else ("MET " if self.met else "MISS")
        value = "-" if self.value is None else f"{self.value:.2f}{self.unit}"
        tail = "".join(f" [{c}]" for c in (self.caveat,) if c)
        return f"  [{verdict}] {self.name}: {value} (target {self.threshold:g}{self.unit}) {self.evidence}{tail}"


@dataclass
class BenchReport:
    machine: Machine
    bandwidth: Bandwidth
    settings: dict
    runs: list[RunResult] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    steps: list[StepCell] = field(default_factory=list)   # the decode-step micro-benchmark, one cell per past
    peer: dict = field(default_factory=dict)              # the peer's builds, or why there are none
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile_files: list[str] = field(default_factory=list)

    @property
    def precisions(self) -> list[str]:
        return list(self.settings.get("precisions", ["fp32"]))

    def run(self, backend: str, batch: int, precision: str | None = None) -> RunResult | None:
        """The cell of ``backend`` at ``batch``; exported backends at ``precision`` (default: the first asked)."""
        if not backend.startswith("torch"):
            precision = precision or self.precisions[0]
        return next((r for r in self.runs if r.backend == backend and r.batch == batch
                     and (precision is None or r.precision == precision)), None)

    def warnings(self) -> list[str]:
        """Every cell's load and spread warnings, in run order."""
        return [n for r in self.runs for n in r.notes()] + \
            [n for c in self.steps for n in c.warnings()]

    def cells_under_load(self) -> list[str]:
        return [r.cell for r in self.runs if r.under_load] + \
            [f"decode steps at past {c.past}" for c in self.steps if c.stability.load.over]

    def to_json(self) -> dict:
        return json_safe({"machine": self.machine.to_json(), "bandwidth": self.bandwidth.to_json(),
                          "settings": self.settings, "runs": [r.to_json() for r in self.runs],
                          "phases": [asdict(p) for p in self.phases], "steps": [c.to_json() for c in self.steps],
                          "peer": self.peer, "targets": [asdict(t) for t in self.targets],
                          "warnings": self.warnings(), "notes": self.notes, "profile_files": self.profile_files})
