"""``run_bench``: bandwidth, then each backend's phase, ratios, targets and the optional profiles."""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Callable

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.resources import size_text
from nextstep_trt.ref.config import load_config
from nextstep_trt.ref.sampling import Guidance

from .machine import load_average
from .memory import measure_bandwidth
from .results import BenchReport
from .run import TORCH_PATH, Bench, BenchOptions, add_ratios, check_inputs
from .peer import peer_installed
from .step_phase import run_step_phase
from .targets import check_targets, label_targets, preset_settings


def _profile(opts: BenchOptions):
    """The exported DeploymentProfile, or None when only the torch backends run."""
    if opts.artifacts is None:
        if any(n in opts.backends for n in ("onnxruntime", "tensorrt")):
            raise UserError("the onnxruntime and tensorrt backends need --artifacts (run `nextstep-trt export`)")
        return None
    from nextstep_trt.export.manifest import Manifest

    return Manifest.load(opts.artifacts).profile


def _loop_runner(name: str, opts: BenchOptions, precision: str, profile_prefix: str | None = None):
    """A LoopRunner on an ONNX Runtime or TensorRT backend of the artifacts at ``precision``."""
    from nextstep_trt.runtime.api import model_tokenizer, open_backend
    from nextstep_trt.runtime.ort_backend import OrtBackend

    from .loop_runner import LoopRunner

    if profile_prefix is not None:
        backend = OrtBackend(opts.artifacts, precision, threads=opts.threads, profile_prefix=profile_prefix)
    else:
        backend = open_backend(name, opts.model, opts.artifacts, precision, threads=opts.threads)
    return LoopRunner(name, backend, model_tokenizer(opts.model, backend.config), precision)


def _run_phases(bench: Bench, report: BenchReport) -> None:
    """Every backend in order: the torch reference (eager, then compiled), then the exported graphs."""
    from nextstep_trt.ref.checkpoint import load_model

    from .torch_runner import TorchRunner

    opts, sampler = bench.opts, bench.opts.generation(1).sampler_config()
    bundle = load_model(opts.model)
    for name in bench.names:
        if name in ("torch", "torch-compile"):
            bench.log(f"[{name}]")
            runner = TorchRunner(bundle, compiled=name == "torch-compile")
            phase, runs = bench.phase(runner, TORCH_PATH, report.bandwidth.gbps, "host copy")
            report.phases.append(phase)
            report.runs += runs
            continue
        if bundle is not None:
            runner = bundle = None
            _release_torch()
        for precision in opts.precisions:
            _exported_phase(bench, report, name, precision, sampler)


def _exported_phase(bench: Bench, report: BenchReport, name: str, precision: str, sampler) -> None:
    """One exported backend at one precision: its phase into the report."""
    bench.log(f"[{name} {precision}]")
    runner = _loop_runner(name, bench.opts, precision)
    fused = runner.backend.fused_sampler(sampler, Guidance.TEXT) is not None
    bandwidth, kind = report.bandwidth.gbps, "host copy"
    if name == "tensorrt":
        bandwidth, kind = _device_bandwidth(report, bandwidth)
    phase, runs = bench.phase(runner, "fused graph" if fused else "head_step per step", bandwidth, kind)
    report.phases.append(phase)
    report.runs += runs


def _release_torch() -> None:
    """Drop the reference's compiled graphs and collect its weights, so the next phase's memory is its own."""
    import torch

    torch._dynamo.reset()
    gc.collect()


def _device_bandwidth(report: BenchReport, host: float) -> tuple[float, str]:
    from .gpu import device_bandwidth, device_description

    report.machine.gpu = device_description()
    gbps = device_bandwidth()
    return (gbps, "device copy") if gbps else (host, "host copy (device copy failed)")


def _compile_time(report: BenchReport) -> None:
    eager = next((p for p in report.phases if p.backend == "torch"), None)
    comp = next((p for p in report.phases if p.backend == "torch-compile"), None)
    if eager and comp:
        comp.compile_s = max(0.0, comp.warmup_s - eager.warmup_s)


def _profiles(bench: Bench, report: BenchReport) -> None:
    """``--profile DIR``: short profiled runs after all timing (never part of the tables' numbers)."""
    from nextstep_trt.ref.checkpoint import load_model

    from .profiling import profile_ort, profile_torch
    from .torch_runner import TorchRunner

    opts = bench.opts
    out, gen = Path(opts.profile_dir), opts.generation(opts.batches[0])
    bench.log(f"[profile] {opts.profile_tokens} tokens per backend -> {out}")
    files, lines = profile_torch(TorchRunner(load_model(opts.model)), gen, opts.prompt, out, opts.profile_tokens)
    report.profile_files += files
    report.notes.append("torch profiler, eager reference (top ops by self CPU time):\n" + "\n".join(lines))
    if "onnxruntime" in bench.names:
        files, lines = profile_ort(lambda prefix: _loop_runner("onnxruntime", opts, opts.precision, prefix), gen,
                                   opts.prompt, out, opts.profile_tokens)
        report.profile_files += files
        report.notes.append("ONNX Runtime per-op profile (profiled run, slower than the timed runs):\n"
                            + "\n".join(lines))


def run_bench(opts: BenchOptions, log: Callable[[str], None] = print) -> BenchReport:
    """Measure every backend of ``opts`` in this process; the report carries every figure."""
    check_inputs(opts, _profile(opts))
    if opts.peer and not peer_installed():
        raise UserError("--peer on needs onnxruntime-genai: pip install 'nextstep-trt[peer]'")
    bench = Bench(opts, log)
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    log(f"measuring copy bandwidth ({size_text(opts.bandwidth_mib * 2**20)} buffer, best of 5)")
    bandwidth = measure_bandwidth(opts.bandwidth_mib, threads=max(2, bench.machine.affinity_cores))
    bench.read_gbps = bandwidth.read_gbps
    settings = opts.settings() | preset_settings(load_config(opts.model))
    report = BenchReport(bench.machine, bandwidth, settings, notes=list(bench._notes))
    _run_phases(bench, report)
    run_step_phase(bench, report)
    add_ratios(report)
    _compile_time(report)
    report.targets = label_targets(report, check_targets(report))
    if opts.profile_dir is not None:
        _profiles(bench, report)
    report.machine.load_end = load_average()
    return report
