"""One bench run: every backend on the same prompt, seeds and noise, after warm-up, in one process."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.metrics import psnr
from nextstep_trt.ref.options import GenerationOptions

from .machine import describe_machine, load_average
from .memory import RssSampler
from .results import BenchReport, Phase, RunResult, StageTimes
from .roofline import roofline
from .timing import CallLog, decode_windows, median_ms

BACKENDS = ("torch", "torch-compile", "onnxruntime", "tensorrt")
PROMPT = "a photo of a red fox sitting in the snow, morning light"
TORCH_PATH = "reference: one head call per step"


@dataclass(frozen=True)
class BenchOptions:
    model: Path
    artifacts: Path | None = None
    backends: tuple[str, ...] = ("torch", "torch-compile", "onnxruntime")
    precision: str = "fp32"
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
    notes: list[str] = field(default_factory=list, compare=False)

    def generation(self, batch: int) -> GenerationOptions:
        return GenerationOptions(height=self.height, width=self.width, steps=self.steps, cfg=self.cfg,
                                 seed=self.seed, images_per_prompt=batch)

    def settings(self) -> dict:
        return {"height": self.height, "width": self.width, "steps": self.steps, "cfg": self.cfg, "seed": self.seed,
                "precision": self.precision, "batches": list(self.batches), "repeat": self.repeat,
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

    def measure(self, runner, batch: int, path: str, bandwidth: float, kind: str) -> RunResult:
        """Warm-up is done; ``repeat`` timed runs at ``batch``, the sampler micro-benchmarks, roofline, parity."""
        o, gen = self.opts, self.opts.generation(batch)
        logs, images = [], None
        for _ in range(o.repeat):
            pixels, call_log = runner.generate(gen, o.prompt)
            logs.append(call_log)
            images = pixels if images is None else images
        stages = summarize(logs, runner.sampler_micro(gen, o.micro_calls), batch, path, o.steps)
        llc = max(self.machine.caches.values(), default=0)
        roof = roofline(runner.config, precision=runner.precision,
                        rows=2 * batch, capacity=runner.kv_capacity(gen, o.prompt), steps=o.steps,
                        fused="fused" in path, decode_ms=stages.decode_mid_ms, sampler_ms=stages.sampler_ms,
                        bandwidth_gbps=bandwidth, kind=kind, last_level_cache=llc,
                        read_gbps=self.read_gbps if kind == "host copy" else None)
        if runner.name == "torch":
            self.reference[batch] = images
        ref = self.reference.get(batch)
        quality = None if runner.name == "torch" or ref is None else psnr(ref, images)
        load = load_average()[0]
        self.log(f"  {runner.name} B={batch}: {stages.e2e_s:.2f} s per request, decode {stages.decode_mid_ms:.1f} ms, "
                 f"sampler {stages.sampler_ms:.2f} ms per token" + (f", PSNR {quality:.1f} dB" if quality else "")
                 + f", load {load:.2f}")
        return RunResult(runner.name, batch, stages, roof, quality, load)

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
        return Phase(runner.name, mem.start, mem.peak, gpu, warm, None, runner.timing_source, threads,
                     notices), results


def add_ratios(report: BenchReport) -> None:
    """End-to-end, decode and sampler ratios of every run against eager and torch.compile at the same batch."""
    for run in report.runs:
        for base, key in (("torch", "eager"), ("torch-compile", "compile")):
            ref = report.run(base, run.batch)
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
    if profile is None:
        return
    if max(opts.batches) > profile.max_batch:
        raise UserError(f"batch {max(opts.batches)} exceeds the exported max batch {profile.max_batch} "
                        "(re-export with a larger --max-batch)")
    for axis, name, size in ((0, "height", opts.height), (1, "width", opts.width)):
        lo, hi = profile.side_range(axis)
        if not lo <= size <= hi:
            raise UserError(f"{name} {size} is outside the exported profile ({lo}..{hi})")
