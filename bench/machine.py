"""What the bench ran on: CPU, caches, RAM, load, library versions, threads (torch-free)."""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nextstep_trt.core.resources import huge_pages, meminfo, size_text
from nextstep_trt.core.resources import versions as installed_versions


def cpu_model() -> str:
    """The 'model name' line of /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cache_sizes() -> dict[str, int]:
    """Data/unified cache sizes of CPU 0 in bytes, e.g. {'L1d': 49152, 'L2': 2097152, 'L3': 503316480}."""
    out: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = (index / "level").read_text().strip()
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
        out[f"L{level}{'d' if kind == 'Data' else ''}"] = int(size.rstrip("KMG")) * scale
    return out


def load_average() -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages."""
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def versions() -> dict[str, str]:
    """Versions of python and the libraries that time anything here (those installed)."""
    return {"python": platform.python_version()} | installed_versions(
        ("nextstep-trt", "numpy", "torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-rtx"))


@dataclass
class Machine:
    """The machine description every bench report carries."""

    cpu: str
    logical_cores: int
    affinity_cores: int                   # cores this process may run on
    ram_bytes: int
    caches: dict[str, int]
    platform: str
    versions: dict[str, str]
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] | None = None
    gpu: dict | None = None
    huge_pages: dict = field(default_factory=dict)      # core.resources.huge_pages(): THP mode, malloc tunable

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """Two lines for the top of the table."""
        caches = ", ".join(f"{k} {size_text(v)}" for k, v in self.caches.items())
        load = "/".join(f"{x:.2f}" for x in self.load_start)
        end = "" if self.load_end is None else " -> " + "/".join(f"{x:.2f}" for x in self.load_end)
        gpu = f"; GPU {self.gpu.get('name')}" if self.gpu else "; no GPU"
        hp = self.huge_pages
        gpu += f"; huge pages: THP {hp['thp']}, malloc hugetlb {hp['malloc_hugetlb']}" if hp else ""
        return (f"machine: {self.cpu}, {self.affinity_cores}/{self.logical_cores} cores, "
                f"{size_text(self.ram_bytes)} RAM, caches {caches}{gpu}\n"
                f"load average (1/5/15 min) {load}{end}; " + " ".join(f"{k} {v}" for k, v in self.versions.items()))


def describe_machine() -> Machine:
    """The CPU, caches, RAM, versions and the load average now."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 1
    return Machine(cpu=cpu_model(), logical_cores=os.cpu_count() or 1, affinity_cores=affinity,
                   ram_bytes=meminfo().get("MemTotal", 0), caches=cache_sizes(), platform=platform.platform(),
                   versions=versions(), load_start=load_average(), huge_pages=huge_pages())
