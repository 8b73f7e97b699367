"""GPU side of the bench: device copy bandwidth and device memory in use (torch-free).

UNTESTED: written against cuda-python on machines without a GPU; only used when the tensorrt backend is benched.
"""
from __future__ import annotations

import time

MiB = 2**20


def device_memory_used() -> int | None:
    """Bytes in use on the current device (total - free), or None without CUDA."""
    try:
        from nextstep_trt.runtime.cuda_device import check, cudart

        free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
        return int(total) - int(free)
    except Exception:  # no cuda-python, no device: the bench reports None
        return None


def device_bandwidth(size_mib: int = 1024, repeats: int = 5) -> float | None:
    """Best-of-N device-to-device copy in GB/s (read + write bytes), or None without CUDA."""
    try:
        from nextstep_trt.runtime.cuda_device import DeviceBuffer, Stream, check, cudart
    except Exception:
        return None
    try:
        rt = cudart()
        nbytes = size_mib * MiB
        src, dst, stream = DeviceBuffer(nbytes), DeviceBuffer(nbytes), Stream()
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        best = 0.0
        for _ in range(repeats):
            stream.sync()
            start = time.perf_counter()
            check(rt.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, stream.handle), "device copy")
            stream.sync()
            best = max(best, 2 * nbytes / (time.perf_counter() - start) / 1e9)
        src.free()
        dst.free()
        stream.destroy()
        return best
    except Exception:  # a failing device: the bench reports None rather than a wrong number
        return None


def device_description() -> dict | None:
    """Name, compute capability and memory of the GPU (nextstep_trt.core.gpu's probe), or None."""
    try:
        from nextstep_trt.core.gpu import probe_gpu

        gpu = probe_gpu().gpu
    except Exception:
        return None
    if gpu is None:
        return None
    return {"name": gpu.name, "compute_capability": gpu.compute_capability, "memory_total_bytes": gpu.memory_total,
            "source": gpu.source}
