"""``--profile DIR``: ONNX Runtime's per-op profile and a torch profiler trace of the reference, on a short run.

Profiling slows every op down, so it runs after the timed runs, on the first ``tokens`` image tokens and one VAE
decode; the timings in the tables never come from a profiled run.
"""
from __future__ import annotations

import collections
import json
from pathlib import Path

from nextstep_trt.ref.options import GenerationOptions

TOP = 8


def summarize_ort_profile(path: str | Path, top: int = TOP) -> list[str]:
    """Lines 'op: us per run (share, calls per run)' of one ORT profile JSON, largest first."""
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    total: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            total[op] += e["dur"]
            calls[op] += 1
    n = max(1, len(runs))
    kernels = sum(total.values())
    wall = sum(e["dur"] for e in runs) / n if runs else 0.0
    lines = [f"{Path(path).name}: {len(runs)} runs, {wall:.0f} us per run (profiled), kernels {kernels / n:.0f} us, "
             f"{sum(calls.values()) / n:.0f} nodes per run"]
    for op, us in total.most_common(top):
        lines.append(f"    {op:<24} {us / n:>9.0f} us/run {100 * us / max(kernels, 1):>5.1f}%  "
                     f"{calls[op] / n:>5.0f} calls/run")
    return lines


def profile_ort(runner_factory, opts: GenerationOptions, prompt: str, out: Path,
                tokens: int) -> tuple[list[str], list[str]]:
    """Run a profiled LoopRunner for ``tokens`` tokens; (files written, summary lines)."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("ort_*.json"))
    with runner_factory(str(out / "ort")) as runner:
        runner.warm_up(opts, prompt, tokens=tokens)
    files = sorted(set(out.glob("ort_*.json")) - before)
    lines = [line for f in files for line in summarize_ort_profile(f)]
    (out / "ort_summary.txt").write_text("\n".join(lines) + "\n")
    return [str(f) for f in files] + [str(out / "ort_summary.txt")], lines


def profile_torch(runner, opts: GenerationOptions, prompt: str, out: Path, tokens: int) -> tuple[list[str], list[str]]:
    """The reference (eager) under torch.profiler for ``tokens`` tokens; (files written, top-op lines)."""
    import torch.profiler as tp

    out.mkdir(parents=True, exist_ok=True)
    with runner, tp.profile(activities=[tp.ProfilerActivity.CPU]) as prof:
        runner.warm_up(opts, prompt, tokens=tokens)
    trace, table = out / "torch_trace.json", out / "torch_ops.txt"
    prof.export_chrome_trace(str(trace))
    text = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    table.write_text(text + "\n")
    return [str(trace), str(table)], text.splitlines()[: TOP + 3]
