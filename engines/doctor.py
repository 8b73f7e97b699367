"""doctor: what this machine has and what will and will not work here, as a list of sections (torch-free).

A section is a title and (label, value) rows; a caller may append its own sections (e.g. model estimates).
"""
from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.gpu import GpuProbe, cc_tuple, probe_gpu
from nextstep_trt.core.resources import HUGETLB_HINT, HUGETLB_TUNABLE, free_disk, free_ram, huge_pages, size_text

BUILD_PEAK_FACTOR = 3.7          # TensorRT-RTX build peak RSS / ONNX weight bytes (toolchain notes, 395 MB graph)
BUILD_BASELINE = 300 * 10**6     # a TensorRT-RTX build process of a tiny graph peaks at ~0.3 GB (measured)


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)

    def add(self, label: str, value) -> "Section":
        self.rows.append((label, str(value)))
        return self


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def _flavor_status(flavor: str) -> tuple[object | None, str]:
    """(module or None, version or why it is missing)."""
    from nextstep_trt.export.trt_check import import_flavor

    try:
        trt = import_flavor(flavor)
        return trt, trt.__version__
    except UserError as err:
        return None, f"missing: {err}"


def software_section() -> tuple[Section, dict]:
    """Python and the packages that matter; returns the facts the verdict needs."""
    s = Section("software").add("python", f"{sys.version.split()[0]} ({platform.platform()})")
    for pkg in ("torch", "onnx"):
        s.add(pkg, _version(pkg) or "not installed")
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        s.add("onnxruntime", f"{ort.__version__} (providers: {', '.join(providers)})")
    except ImportError as err:
        providers = []
        s.add("onnxruntime", f"not installed ({err})")
    flavors = {}
    for flavor in ("tensorrt", "tensorrt-rtx"):
        module, status = _flavor_status(flavor)
        flavors[flavor] = module
        s.add(flavor, status)
    try:
        importlib.import_module("cuda.bindings.runtime")
        cuda_python = True
    except ImportError:
        cuda_python = False
    s.add("cuda-python", _version("cuda-python") or _version("cuda-bindings") if cuda_python else "not installed")
    return s, {"providers": providers, "flavors": flavors, "cuda_python": cuda_python}


def gpu_section(probe: GpuProbe) -> Section:
    s = Section("gpu")
    g = probe.gpu
    if g is None:
        return s.add("driver / CUDA", "none").add("GPU", f"none ({probe.reason})")
    fp8 = "yes" if cc_tuple(g.compute_capability) >= (8, 9) else "no (FP8 needs 8.9+)"
    return (s.add("driver / CUDA", f"{g.driver or '?'} / {g.cuda or '?'} (via {g.source})").add("GPU", g.name)
            .add("compute capability", f"{g.compute_capability} (FP8: {fp8})")
            .add("GPU memory free", f"{size_text(g.memory_free)} of {size_text(g.memory_total)}"))


def host_section(artifacts: Path | None) -> Section:
    s = Section("host").add("units (every size in this report)", "decimal: 1 GB = 10^9 bytes, as in GB/s")
    s.add("CPU cores", os.cpu_count())
    hp = huge_pages()
    hint = f" -- {HUGETLB_HINT}" if hp["thp"] == "madvise" and hp["malloc_hugetlb"] in ("unset", "0") else ""
    s.add("huge pages", f"THP {hp['thp']}; {HUGETLB_TUNABLE} {hp['malloc_hugetlb']}{hint}")
    free = free_ram() or None
    s.add("free host memory", size_text(free) if free is not None else "unknown (no /proc/meminfo)")
    where = artifacts if artifacts is not None and artifacts.exists() else Path.cwd()
    return s.add(f"free disk at {where}", size_text(free_disk(where)))


def build_estimates(artifacts: Path, graphs: list[str] | None) -> list[tuple[str, str, int, int]]:
    """(graph, precision, ONNX bytes, estimated TensorRT-RTX build peak bytes) from the artifacts manifest."""
    from nextstep_trt.export.manifest import Manifest

    manifest = Manifest.load(artifacts)
    unknown = [g for g in graphs or [] if g not in manifest.graphs]
    if unknown:
        raise UserError(f"{artifacts} has no graph(s) {', '.join(unknown)} (have: {', '.join(manifest.graphs)})")
    out = []
    for graph in graphs or manifest.graphs:
        for precision, entry in manifest.data["graphs"][graph]["precisions"].items():
            size = int(entry.get("bytes") or 0)
            out.append((graph, precision, size, max(int(size * BUILD_PEAK_FACTOR), BUILD_BASELINE)))
    return out


def _unfinished(artifacts: Path) -> bool:
    """A folder with no manifest but with what an export leaves in it (its lock file, scratch, temporary files)."""
    from nextstep_trt.export.manifest import MANIFEST
    from nextstep_trt.export.scratch import LOCK, leftovers

    return not (artifacts / MANIFEST).is_file() and ((artifacts / LOCK).is_file() or bool(leftovers(artifacts)))


def artifacts_section(artifacts: Path) -> Section:
    """Who writes the folder now, what interrupted runs left there, and what the next load will hash in full
    (stat only: nothing is hashed here)."""
    from nextstep_trt.core.locks import describe_owner, lock_holder
    from nextstep_trt.export.manifest import Manifest
    from nextstep_trt.export.scratch import LOCK, leftovers

    s = Section(f"artifacts folder {artifacts}")
    holder = lock_holder(artifacts / LOCK)
    s.add("writer (lock)", "none" if holder is None else f"held by {describe_owner(holder)}")
    found = leftovers(artifacts, locked=False)
    s.add("leftovers", "none" if not found else f"{len(found)} (stale ones go at the next export/quantize, "
          f"or now with `doctor --artifacts {artifacts} --clean`)")
    for item in found:
        s.add("  leftover", item.line())
    if _unfinished(artifacts):
        return s.add("manifest", "none yet: no graph was recorded (an interrupted first export?)")
    manifest = Manifest.load(artifacts)
    pending, missing, files = 0, [], 0
    for g in manifest.data["graphs"].values():
        for entry in g["precisions"].values():
            for rel in (entry.get("hashes") or {}):
                files += 1
                path = artifacts / rel
                if not path.is_file():
                    missing.append(rel)
                elif manifest.hashes.cached(path) is None:
                    pending += path.stat().st_size
    s.add("integrity stamps", f"{files} recorded files; "
          + (f"{size_text(pending)} will be hashed in full at the next load (new or changed since last checked)"
             if pending else "every file unchanged since it was last hashed (loads stat only)")
          + (f"; missing: {', '.join(missing[:3])}" if missing else ""))
    source = manifest.data["model"].get("source")
    s.add("exported from", source.get("path", "?") if isinstance(source, dict) else "not recorded (older export)")
    return s


def estimate_section(estimates: list[tuple[str, str, int, int]]) -> Section:
    s = Section(f"build estimate (peak ~ {BUILD_PEAK_FACTOR}x ONNX weights, >= {size_text(BUILD_BASELINE)})")
    for graph, precision, size, peak in estimates:
        s.add(f"{graph} {precision}", f"ONNX {size_text(size)}, build peak ~{size_text(peak)}")
    if estimates:
        s.add("largest (graphs build one at a time)", size_text(max(e[3] for e in estimates)))
    return s


def verdict_section(facts: dict, probe: GpuProbe, estimates: list) -> Section:
    """Plain yes/no lines for what this machine can do."""
    s = Section("what works here")
    s.add("export, lint, ONNX Runtime on the CPU", "yes" if facts["providers"] else "no: onnxruntime is missing")
    s.add("ONNX Runtime on the GPU", "yes" if "CUDAExecutionProvider" in facts["providers"]
          else "no: CUDAExecutionProvider not available")
    rtx, std, gpu = facts["flavors"]["tensorrt-rtx"], facts["flavors"]["tensorrt"], probe.gpu
    if rtx is not None:
        targets = sorted((f"{n[2:-1]}.{n[-1]}" for n in rtx.ComputeCapability.__members__ if n.startswith("SM")),
                         key=cc_tuple)
        fp8 = [t for t in targets if cc_tuple(t) >= (8, 9)]
        s.add("build with TensorRT-RTX (ahead of time, no GPU)", f"yes, for cc {', '.join(targets)}")
        s.add("build fp8 with TensorRT-RTX", f"yes, for cc {', '.join(fp8)}")
    else:
        s.add("build with TensorRT-RTX", "no: pip install tensorrt-rtx")
    s.add("build with TensorRT", "yes, for this GPU" if std is not None and gpu is not None else
          "no: " + ("tensorrt is not installed" if std is None else "no GPU (it builds on the GPU it targets)"))
    if gpu is None:
        run = "no: no GPU"
    elif std is None and rtx is None:
        run = "no: neither tensorrt nor tensorrt-rtx is installed"
    elif not facts["cuda_python"]:
        run = "no: cuda-python is missing (pip install cuda-python)"
    else:
        run = f"yes, engines built for cc {gpu.compute_capability}"
    s.add("run engines (TensorRT backend)", run)
    if estimates:
        free = free_ram() or None
        peak = max(e[3] for e in estimates)
        s.add("host memory for the largest build", "unknown" if free is None else
              ("yes" if free >= peak else f"no: ~{size_text(peak)} needed, {size_text(free)} free"))
    return s


def doctor_report(artifacts: str | Path | None = None, graphs: list[str] | None = None) -> list[Section]:
    """Every section, in print order."""
    artifacts = Path(artifacts) if artifacts is not None else None
    if graphs and artifacts is None:
        raise UserError("--graphs needs --artifacts")
    probe = probe_gpu()
    software, facts = software_section()
    # a folder an interrupted first export left (no manifest yet, scratch in it) still gets its leftovers reported
    estimates = build_estimates(artifacts, graphs) if artifacts is not None and not _unfinished(artifacts) else []
    sections = [software, gpu_section(probe), host_section(artifacts)]
    if artifacts is not None:
        if estimates:
            sections.append(estimate_section(estimates))
        sections.append(artifacts_section(artifacts))
    sections.append(verdict_section(facts, probe, estimates))
    return sections


def format_report(sections: list[Section]) -> str:
    width = max((len(label) for s in sections for label, _ in s.rows), default=10)
    out = []
    for s in sections:
        out.append(f"{s.title}:")
        out.extend(f"  {label:<{width}}  {value}" for label, value in s.rows)
    return "\n".join(out)


def report_dict(sections: list[Section]) -> list[dict]:
    return [{"title": s.title, "rows": [dict(zip(("label", "value"), r)) for r in asdict(s)["rows"]]}
            for s in sections]
