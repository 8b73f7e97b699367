"""Per graph and precision: ONNX size, CPU error vs fp32 (levels 1-3), TensorRT-RTX build time and plan size for
compute capability 8.9, and what each precision kept high precision. Only the public CLI is used.

    python scripts/precision_table.py [WORK_DIR]        (default /tmp/precision-table; must not exist yet)

Writes WORK/precision_table.md, WORK/verify_P.{txt,json}, WORK/overflow_fp16.txt and WORK/logs/*.txt.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
CC = "8.9"
# the README's small tiny-model profile: calibration and verify run the reference loop at every resolution with
# every sampler step, which takes hours on the default 512x512 / 50-step profile
PROFILE = ("--resolutions", "32x32,48x32,64x64", "--steps", "3", "--max-text-tokens", "16")
MIB = 2**20
notes: list[str] = []            # failures worth a line in the closing note


def cli(log: Path, *args) -> tuple[int, float]:
    """Run `nextstep-trt ARGS` (an argument list, no shell); stdout+stderr go to ``log``; (exit code, seconds)."""
    cmd = ["nextstep-trt", *map(str, args)]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run(cmd, check=False, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if rc:
        errors = [ln for ln in log.read_text().splitlines() if "error:" in ln] or ["(no error line)"]
        notes.append(f"`{' '.join(cmd[1:3])}` exited {rc}: {errors[-1].strip()}")
        print(f"  -> exit {rc}: {errors[-1].strip()}", flush=True)
    return rc, seconds


def quantize(work: Path, art: Path, precision: str, graphs: list[str] | None, log: Path, *extra) -> None:
    """quantize; when a graph fails its level-1 validation, install unvalidated so verify can still measure it."""
    args = ["quantize", "--model", work / "model", "--artifacts", art, "--precision", precision, *extra]
    args += ["--graphs", ",".join(graphs)] if graphs else []
    if cli(log, *args)[0] and "failed validation" in log.read_text():
        cli(log.with_suffix(".no-validate.txt"), *args, "--no-validate")


def make_graphs(work: Path, art: Path, logs: Path) -> None:
    if cli(logs / "init.txt", "init-tiny", work / "model", "--seed", "0")[0] or \
            cli(logs / "export.txt", "export", "--model", work / "model", "--out", art, *PROFILE)[0]:
        sys.exit(f"init-tiny/export failed: {notes[-1]}")
    graphs = list(load(art / "manifest.json")["graphs"])
    vae = [g for g in graphs if g.startswith("vae_")]
    # The overflow report holds every VAE activation at once (> 23 GiB at 512x512): the VAE gets its fp16 graphs
    # without it.
    quantize(work, art, "fp16", vae, logs / "quantize_fp16_vae.txt")
    quantize(work, art, "fp16", [g for g in graphs if g not in vae], work / "overflow_fp16.txt", "--overflow-report")
    for precision in ("bf16", "fp8"):
        quantize(work, art, precision, None, logs / f"quantize_{precision}.txt")


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def verify(work: Path, art: Path, precision: str) -> list[dict]:
    report = work / f"verify_{precision}.json"
    cli(work / f"verify_{precision}.txt", "verify", "--model", work / "model", "--artifacts", art,
        "--precision", precision, "--levels", "1,2,3", "--report", report)
    rows = load(report)["rows"] if report.exists() else []
    for r in [r for r in rows if not r["ok"]][:5]:
        notes.append(f"verify {precision}: level {r['level']} {r['graph']} {r['case']} {r['tensor']}: "
                     f"{'; '.join(map(str, r['violations']))} (bound {r['bound']})")
    return rows


def build(art: Path, graph: str, precision: str, logs: Path) -> tuple[float | None, float, float | None]:
    """Build one graph for RTX 8.9: (builder seconds from the plan's manifest, wall seconds, plan MiB)."""
    rc, wall = cli(logs / f"build_{graph}_{precision}.txt", "build", "--artifacts", art, "--precision", precision,
                "--graphs", graph, "--flavor", "tensorrt-rtx", "--compute-capability", CC)
    plans = [load(m) for m in (art / "engines" / graph / precision).glob("*/manifest.json")]
    plans = [m for m in plans if (m["target"]["flavor"], m["target"]["compute_capability"]) == ("tensorrt-rtx", CC)]
    if rc or not plans:
        return None, wall, None
    newest = max(plans, key=lambda m: m["built_at"])
    return newest["build_seconds"], wall, newest["plan_bytes"] / MIB


def level1(rows: list[dict], graph: str) -> tuple:
    """Worst rel-L2, max-abs and cosine over every case and output of one graph, the lowest per-tensor mean
    cosine (where the bound has one) and the failed-check count."""
    mine = [r for r in rows if r["level"] == 1 and r["graph"] == graph]
    m = [r["metrics"] for r in mine if r["metrics"]]
    if not m:
        return (None,) * 5
    means = [r["mean_cosine"] for r in mine if "mean_cosine" in r]
    return (max(x["rel_l2"] for x in m), max(x["max_abs"] for x in m), min(x["cosine"] for x in m),
            min(means, default=None), sum(not r["ok"] for r in mine))


def loop_levels(rows: list[dict]) -> tuple[str, float | None]:
    """Level 2: worst teacher-forced rel-L2 (and its tensor); level 3: lowest image PSNR over the cases."""
    l2 = [r for r in rows if r["level"] == 2]
    worst = max(l2, key=lambda r: r["metrics"]["rel_l2"], default=None)
    l2_text = f"{worst['metrics']['rel_l2']:.2e} ({worst['tensor']})" if worst else "-"
    psnr = [float(r["psnr_db"]) for r in rows if r["level"] == 3 and r["graph"] == "image"]   # "inf" in JSON
    return l2_text, min(psnr, default=None)


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def kept_summary(manifest: dict, precision: str) -> list[str]:
    """One line per graph: what the precision graph's recipe kept high precision."""
    lines = []
    for graph, entry in manifest["graphs"].items():
        rec = entry["precisions"].get(precision, {}).get("recipe")
        if rec is None:
            continue
        if "kept_fp32" in rec:
            k = rec["kept_fp32"]
            text = f"{k['count']} of {rec['nodes']} nodes kept fp32 {k['by_reason']}"
        else:
            why = Counter(c["reason"] for c in rec["kept_high_precision"])
            text = f"{len(rec['quantized'])} linears fp8, {sum(why.values())} kept high precision {dict(why)}"
        valid = "" if entry["precisions"][precision]["validated"] else " [installed with --no-validate]"
        lines.append(f"- {precision} {graph}: {text}{valid}")
    return lines


def table(art: Path, verified: dict, built: dict) -> list[str]:
    manifest = load(art / "manifest.json")
    head = ["graph", "prec", "ONNX MiB", "L1 rel-L2", "L1 max-abs", "L1 min cos", "L1 mean cos", "L1 fails",
            "L2 worst rel-L2", "L3 min PSNR dB", "RTX build s", "build wall s", "plan MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for precision in PRECISIONS:
        l2, psnr = loop_levels(verified[precision])
        for graph, entry in manifest["graphs"].items():
            if precision not in entry["precisions"]:
                continue
            onnx_mib = sum((art / f).stat().st_size for f in entry["precisions"][precision]["files"]) / MIB
            rel, mx, cos, mean, fails = level1(verified[precision], graph)
            secs, wall, plan = built[graph, precision]
            cells = [graph, precision, f"{onnx_mib:.2f}", fmt(rel, ".2e"), fmt(mx, ".2e"), fmt(cos, ".6f"),
                     fmt(mean, ".6f"), fmt(fails, "d"), l2, fmt(psnr, ".1f"), fmt(secs, ".2f"), f"{wall:.1f}", fmt(plan, ".2f")]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    start = time.perf_counter()
    work = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/precision-table").resolve()
    if work.exists():
        sys.exit(f"{work} exists: remove it or name a new folder (the table is made from scratch)")
    art, logs = work / "art", work / "logs"
    logs.mkdir(parents=True)
    make_graphs(work, art, logs)
    verified = {p: verify(work, art, p) for p in PRECISIONS}
    graphs = load(art / "manifest.json")["graphs"]
    built = {(g, p): build(art, g, p, logs) for p in PRECISIONS for g, e in graphs.items() if p in e["precisions"]}
    manifest = load(art / "manifest.json")
    kept = [line for p in PRECISIONS[1:] for line in kept_summary(manifest, p)]
    minutes = (time.perf_counter() - start) / 60
    text = "\n".join([*table(art, verified, built), "", "Kept high precision:", *kept, "",
                      "Failures:", *([f"- {n}" for n in notes] or ["- none"]), "",
                      f"Total runtime: {minutes:.1f} min (CPU; TensorRT-RTX {CC} built ahead of time, no GPU)"])
    print("\n" + text)
    (work / "precision_table.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
