"""Host resources: free disk checked before big writes, free RAM, peak resident memory (torch-free); the one byte
formatter and the one parameter-count formatter every report uses.

Units: decimal (SI) throughout: 1 GB = 10^9 bytes, 1 MB = 10^6, 1 kB = 10^3, the same units as the GB/s of memory
bandwidths, so a floor (bytes / bandwidth) reads in one system. A GPU sold as "12 GB" holds 12 GiB = 12.9 GB.
"""
from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path

from nextstep_trt.core.errors import UserError

GB = 1e9
DISK_MARGIN = 256 * 2**20          # filesystem metadata, config files, the graph protos themselves
BYTE_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
COUNT_UNITS = (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3))       # B: billion (as in "14.9 B parameters")


def _three_digits(value: float) -> str:
    """Three significant digits with trailing zeros kept, whole numbers from 100 up: 1.23, 12.3, 123, 1234."""
    a = abs(value)
    return f"{value:.0f}" if a >= 99.95 else f"{value:.1f}" if a >= 9.995 else f"{value:.2f}"


def _scaled(n: float, units: tuple[tuple[str, float], ...], base: str) -> str:
    for unit, scale in units:
        if abs(n) >= scale * (1 - 5e-4):                # 999.7 MB rounds to 1.00 GB, never "1000 MB"
            return f"{_three_digits(n / scale)} {unit}"
    return f"{n:.0f} {base}".rstrip()


def size_text(nbytes: float) -> str:
    """Bytes in decimal units, three significant digits: '29.8 GB', '356 MB', '12.3 kB', '512 B', '0 B'."""
    return _scaled(nbytes, BYTE_UNITS, "B")


def count_text(n: float) -> str:
    """A count (parameters, weights) in three significant digits: '14.9 B', '612 k', '980'."""
    return _scaled(n, COUNT_UNITS, "")


def existing_parent(path: str | Path) -> Path:
    """``path`` or its nearest existing ancestor (where a folder about to be created will live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_disk(path: str | Path) -> int:
    """Bytes free on the filesystem that holds (or will hold) ``path``."""
    return shutil.disk_usage(existing_parent(path)).free


def require_disk(path: str | Path, need: int, what: str) -> None:
    """Refuse, with the numbers, before writing ``need`` bytes under ``path`` when the disk cannot hold them."""
    free = free_disk(path)
    if need + DISK_MARGIN > free:
        raise UserError(f"not enough disk for {what}: it needs {size_text(need)} (+{size_text(DISK_MARGIN)} margin) "
                        f"under {existing_parent(path)}, which has {size_text(free)} free")


def proc_sizes(path: str = "/proc/meminfo") -> dict[str, int]:
    """The 'Key: number [kB]' lines of a /proc file (meminfo, self/status) in bytes ({} where it does not exist)."""
    out = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes ({} where it does not exist)."""
    return proc_sizes("/proc/meminfo")


def rss_bytes() -> int:
    """VmRSS of this process now (0 where /proc is missing)."""
    return proc_sizes("/proc/self/status").get("VmRSS", 0)


THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGETLB_TUNABLE = "glibc.malloc.hugetlb"
HUGETLB_HINT = (f"GLIBC_TUNABLES={HUGETLB_TUNABLE}=1 before the process starts puts glibc's big allocations (ONNX "
                "Runtime's weights and buffers) on transparent huge pages: CPU decode steps 4-8% faster on the 2-core "
                "test VM (README, 'Weight-only INT4 / INT8')")


def huge_pages(thp_file: str = THP_ENABLED, environ=None) -> dict[str, str]:
    """{"thp": the kernel's transparent-huge-page mode ("always", "madvise", "never", "unavailable"),
    "malloc_hugetlb": glibc's malloc.hugetlb tunable from GLIBC_TUNABLES ("unset" when not given)}."""
    try:
        words = Path(thp_file).read_text().split()
        mode = next((w.strip("[]") for w in words if w.startswith("[")), "unavailable")
    except OSError:
        mode = "unavailable"
    tunables = (os.environ if environ is None else environ).get("GLIBC_TUNABLES", "")
    setting = dict(t.partition("=")[::2] for t in tunables.split(":") if "=" in t).get(HUGETLB_TUNABLE, "unset")
    return {"thp": mode, "malloc_hugetlb": setting}


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of ``packages`` (those not installed are left out)."""
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def free_ram() -> int:
    """MemAvailable: what a new process can use without swapping (0 when unknown)."""
    return meminfo().get("MemAvailable", 0)


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
