"""Host resources: free disk checked before big writes, free RAM, peak resident memory (torch-free)."""
from __future__ import annotations

import resource
import shutil
from pathlib import Path

from nextstep_trt.core.errors import UserError

GB = 1e9
DISK_MARGIN = 256 * 2**20          # filesystem metadata, config files, the graph protos themselves


def gb(nbytes: float) -> str:
    """Bytes as decimal gigabytes, e.g. '29.83 GB'."""
    return f"{nbytes / GB:.2f} GB"


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
        raise UserError(f"not enough disk for {what}: it needs {gb(need)} (+{gb(DISK_MARGIN)} margin) under "
                        f"{existing_parent(path)}, which has {gb(free)} free")


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
