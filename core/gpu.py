"""What NVIDIA GPU (if any) this machine has: cuda-python first, then nvidia-smi; never a shell string (torch-free)."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str          # "8.9"
    driver: str
    cuda: str                        # the driver's CUDA version, "" when unknown
    memory_free: int                 # bytes
    memory_total: int
    source: str                      # "cuda-python" or "nvidia-smi"


@dataclass(frozen=True)
class GpuProbe:
    gpu: GpuInfo | None              # device 0
    reason: str                      # why there is none ("" when there is one)


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}" if code else ""


def _from_cuda_python() -> GpuProbe | None:
    """Device 0 through cuda.bindings.runtime; None when cuda-python is not installed."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    ok = cudart.cudaError_t.cudaSuccess
    err, count = cudart.cudaGetDeviceCount()
    if err != ok or count == 0:
        return GpuProbe(None, f"no CUDA GPU (cuda-python: {getattr(err, 'name', err)}, {count or 0} device(s))")
    err, prop = cudart.cudaGetDeviceProperties(0)
    if err != ok:
        return GpuProbe(None, f"cudaGetDeviceProperties failed: {getattr(err, 'name', err)}")
    _, driver = cudart.cudaDriverGetVersion()
    _, free, total = cudart.cudaMemGetInfo()
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return GpuProbe(GpuInfo(name, f"{prop.major}.{prop.minor}", "", _cuda_version(driver), int(free), int(total),
                            "cuda-python"), "")


def _from_nvidia_smi() -> GpuProbe:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return GpuProbe(None, "no NVIDIA driver (nvidia-smi not found, cuda-python not installed)")
    query = "name,compute_cap,driver_version,memory.free,memory.total"
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return GpuProbe(None, f"nvidia-smi failed: {type(err).__name__}")
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        return GpuProbe(None, "nvidia-smi lists no GPU")
    name, cc, driver, free, total = (f.strip() for f in lines[0].split(","))
    cuda = ""
    head = subprocess.run([exe], capture_output=True, text=True, timeout=20).stdout
    if "CUDA Version:" in head:
        cuda = head.split("CUDA Version:")[1].split()[0]
    return GpuProbe(GpuInfo(name, cc, driver, cuda, int(float(free)) << 20, int(float(total)) << 20, "nvidia-smi"), "")


def probe_gpu() -> GpuProbe:
    """Device 0 of this machine, or the reason there is none."""
    found = _from_cuda_python()
    if found is not None and found.gpu is not None:
        smi = _from_nvidia_smi() if shutil.which("nvidia-smi") else None
        driver = smi.gpu.driver if smi and smi.gpu else ""
        g = found.gpu
        return GpuProbe(GpuInfo(g.name, g.compute_capability, driver, g.cuda, g.memory_free, g.memory_total,
                                g.source), "")
    smi = _from_nvidia_smi()
    if smi.gpu is None and found is not None:
        return GpuProbe(None, f"{found.reason}; {smi.reason}")
    return smi


def cc_tuple(cc: str) -> tuple[int, int]:
    """"8.9" -> (8, 9)."""
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)
