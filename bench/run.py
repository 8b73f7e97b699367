"""One bench run: every backend on the same prompt, seeds and noise, after warm-up, in one process."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.metrics import psnr
from nextstep_trt.ref.options import GenerationOptions

from .machine import describe_machine
from .memory import RssSampler
from .peer import PeerOptions
from .results import BenchReport, Phase, RunResult, StageTimes
from .roofline import roofline
from .stability import LoadReader, LoadWatch, SpreadRule, one_minute_load, run_stable, spread
from .timing import CallLog, decode_windows, median_ms

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
PROMPT = "a photo of a red fox sitting in the snow, morning light"
TORCH_PATH = "reference: one head call per step"


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    artifacts: Path | None = None
    backends: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime")
    precisions: tuple[str, ...] = ("fp32",)   # exported backends run once per precision; ratios against the first
    batches: tuple[int, ...] = (1, 4)
    height: int = 256
    width: int = 256
    steps: int = 50
    cfg: float = 7.5
    seed: int = 0
    repeat: int = 1
    threads: int = 0                      # 0: each library's default (ONNX Runtime: per-graph defaults)
    profile_dir: Path | None = None
    profile_tokens: int = 8
    micro_calls: int = 5                  # sampler micro-benchmark calls per cell
    bandwidth_mib: int = 512
    prompt: str = PROMPT
    decode_pasts: tuple[int, ...] = (300, 1000)   # decode-step micro-benchmark cache lengths (() skips it)
    decode_rounds: int = 5
    decode_steps: int = 6                 # timed steps per graph per round
    peer: bool | None = None              # onnxruntime-genai's builds: None = when it is installed
    peer_options: PeerOptions = field(default_factory=PeerOptions)
    spread: SpreadRule = field(default_factory=SpreadRule)
    load_reader: LoadReader = field(default=one_minute_load, compare=False)
    load_interval: float = 1.0            # seconds between load readings during a cell
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def precision(self) -> str:
        """The first precision: the one ratios are taken against."""
        return self.precisions[0]

    def generation(self, batch: int) -> GenerationOptions:
        return GenerationOptions(height=self.height, width=self.width, steps=self.steps, cfg=self.cfg,
                                 seed=self.seed, images_per_prompt=batch)

    def settings(self) -> dict:
        return {"height": self.height, "width": self.width, "steps": self.steps, "cfg": self.cfg, "seed": self.seed,
                "precision": self.precision, "precisions": list(self.precisions), "batches": list(self.batches),
                "repeat": self.repeat, "max_spread": self.spread.max_ratio, "reruns": self.spread.reruns,
                "decode_pasts": list(self.decode_pasts), "decode_rounds": self.decode_rounds,
                "decode_steps": self.decode_steps,
                "threads": self.threads, "backends": list(self.backends), "prompt": self.prompt,
                "model": str(self.model), "artifacts": str(self.artifacts) if self.artifacts else None}


def backend_order(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(backends to run, notes): the eager reference always runs first (parity and ratios need it)."""
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    notes = [] if "torch" in names else ["the eager reference (torch) was added: parity and ratios need it"]
    return [n for n in BACKENDS if n in names or n == "torch"], notes


def summarize(logs: list[CallLog], micro: tuple[float | None, float | None], batch: int, path: str,
              steps: int) -> StageTimes:
    """Medians over the timed runs' logs, plus the sampler micro-benchmarks."""
    first, mid, last = decode_windows(logs)
    e2e = float(np.median([log.e2e for log in logs]))
    sampler_calls = sum(len(log.sampler) for log in logs)
    heads = sum(log.head_calls for log in logs) / sampler_calls if path == TORCH_PATH and sampler_calls else None
    pooled = lambda stage: [x for log in logs for x in getattr(log, stage)]  # noqa: E731
    other = [(log.e2e - sum(log.prefill + log.decode + log.sampler + log.vae)) / len(log.sampler)
             for log in logs if log.sampler]
    return StageTimes(median_ms(pooled("prefill")), first, mid, last, median_ms(pooled("sampler")), path,
                      micro[0], micro[1], heads if heads is not None else (1.0 if "fused" in path else steps),
                      median_ms(pooled("vae")), median_ms(other), e2e, e2e / batch, batch / e2e, len(logs))


class Bench:
    """Runs the phases and collects the report; ``log`` gets one line per step of progress."""

    def __init__(self, opts: BenchOptions, log: Callable[[str], None] = print):
        self.opts, self.log = opts, log
        self.names, notes = backend_order(opts.backends)
        self.machine = describe_machine()
        self.reference: dict[int, np.ndarray] = {}        # eager images per batch
        self.read_gbps: float | None = None                # host read-only bandwidth, set once measured
        self._notes = list(opts.notes) + notes

    def watch(self) -> LoadWatch:
        """A LoadWatch for one cell (the options' reader, this process's cores)."""
        return LoadWatch(self.opts.load_reader, self.machine.affinity_cores, self.opts.load_interval)

    def _timed_runs(self, runner, batch: int) -> tuple[float | None, tuple[list[CallLog], np.ndarray]]:
        """One attempt at a cell: ``repeat`` timed runs; (spread of their end-to-end times, (logs, first images))."""
        logs, images = [], None
        for _ in range(self.opts.repeat):
            pixels, call_log = runner.generate(self.opts.generation(batch), self.opts.prompt)
            logs.append(call_log)
            images = pixels if images is None else images
        return spread([log.e2e for log in logs]), (logs, images)

    def measure(self, runner, batch: int, path: str, bandwidth: float, kind: str) -> RunResult:
        """Warm-up is done; the timed runs at ``batch`` (re-run while their spread is wide), the sampler
        micro-benchmarks, roofline, parity."""
        o, gen = self.opts, self.opts.generation(batch)
        (logs, images), stability = run_stable(lambda: self._timed_runs(runner, batch), o.spread, self.watch)
        stages = summarize(logs, runner.sampler_micro(gen, o.micro_calls), batch, path, o.steps)
        llc = max(self.machine.caches.values(), default=0)
        decode_weights, sampler_scale = getattr(runner, "stream_bytes", lambda: (None, None))()
        roof = roofline(runner.config, precision=runner.precision,
                        rows=2 * batch, capacity=runner.kv_capacity(gen, o.prompt), steps=o.steps,
                        fused="fused" in path, decode_ms=stages.decode_mid_ms, sampler_ms=stages.sampler_ms,
                        bandwidth_gbps=bandwidth, kind=kind, last_level_cache=llc,
                        read_gbps=self.read_gbps if kind == "host copy" else None,
                        decode_weights=decode_weights, sampler_weight_bytes=sampler_scale)
        if runner.name == "torch":
            self.reference[batch] = images
        ref = self.reference.get(batch)
        quality = None if runner.name == "torch" or ref is None else psnr(ref, images)
        result = RunResult(runner.name, batch, stages, roof, quality, runner.precision, stability)
        load = stability.load.peak
        self.log(f"  {result.cell}: {stages.e2e_s:.2f} s per request, decode {fmt_ms(stages.decode_mid_ms)} ms, "
                 f"sampler {fmt_ms(stages.sampler_ms, '.2f')} ms per token" +
                 (f", PSNR {quality:.1f} dB" if quality else "") +
                 ("" if load is None else f", load {load:.2f}") + "".join(f"\n  ! {n}" for n in result.notes()))
        return result

    def phase(self, runner, path: str, bandwidth: float, kind: str) -> tuple[Phase, list[RunResult]]:
        """One backend: warm up and measure every batch while sampling its resident memory."""
        results, warm = [], 0.0
        with RssSampler() as mem, runner:
            for batch in self.opts.batches:
                warm += runner.warm_up(self.opts.generation(batch), self.opts.prompt)
                results.append(self.measure(runner, batch, path, bandwidth, kind))
            gpu = None
            if runner.name == "tensorrt":
                from .gpu import device_memory_used

                gpu = device_memory_used()
            threads = runner.threads()                      # before the backend closes its sessions
        notices = list(getattr(getattr(runner, "backend", None), "notices", []))
        label = runner.name if runner.name.startswith("torch") else f"{runner.name} {runner.precision}"
        return Phase(label, mem.start, mem.peak, gpu, warm, None, runner.timing_source, threads,
                     notices), results


def fmt_ms(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def add_ratios(report: BenchReport) -> None:
    """End-to-end, decode and sampler ratios of every run against eager and torch.compile at the same batch, and
    of every exported run against the same backend at the first precision ("first")."""
    first = report.precisions[0]
    for run in report.runs:
        bases = [(report.run("torch", run.batch), "eager"), (report.run("torch-compile", run.batch), "compile")]
        if not run.backend.startswith("torch") and run.precision != first:
            bases.append((report.run(run.backend, run.batch, first), "first"))
        for ref, key in bases:
            if ref is None:
                continue
            rs, s = ref.stages, run.stages
            run.ratios[f"e2e_vs_{key}"] = s.images_per_s / rs.images_per_s
            run.ratios[f"decode_vs_{key}"] = (rs.decode_mid_ms / s.decode_mid_ms) if s.decode_mid_ms else None
            run.ratios[f"sampler_vs_{key}"] = (rs.sampler_ms / s.sampler_ms) if s.sampler_ms else None


def check_inputs(opts: BenchOptions, profile) -> None:
    """Batch sizes, repeats and the resolution against the exported profile (a UserError in one line)."""
    if not opts.batches or min(opts.batches) < 1:
        raise UserError("--batch takes positive integers, e.g. 1,4")
    if opts.repeat < 1:
        raise UserError(f"--repeat must be >= 1, got {opts.repeat}")
    if len(set(opts.precisions)) != len(opts.precisions) or not opts.precisions:
        raise UserError(f"--precision takes distinct precisions, e.g. fp32,int8,int4; got {','.join(opts.precisions)}")
    if opts.decode_pasts and min(opts.decode_pasts) < 1 or min(opts.decode_rounds, opts.decode_steps) < 1:
        raise UserError("--decode-past, --decode-rounds and --decode-steps take positive integers")
    if opts.spread.max_ratio <= 1 or opts.spread.reruns < 0:
        raise UserError("--max-spread must be > 1 and --reruns >= 0")
    if profile is None:
        return
    if max(opts.batches) > profile.max_batch:
        raise UserError(f"batch {max(opts.batches)} exceeds the exported max batch {profile.max_batch} "
                        "(re-export with a larger --max-batch)")
    for axis, name, size in ((0, "height", opts.height), (1, "width", opts.width)):
        lo, hi = profile.side_range(axis)
        if not lo <= size <= hi:
            raise UserError(f"{name} {size} is outside the exported profile ({lo}..{hi})")
