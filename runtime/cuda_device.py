"""Thin helpers over cuda-python's ``cuda.bindings.runtime``: device buffers, one stream, copies, CUDA graphs.

Imported lazily by the TensorRT backend only. UNTESTED here (no GPU on the machines this was written on).
"""
from __future__ import annotations

import numpy as np

from nextstep_trt.core.errors import UserError


def cudart():
    """The CUDA runtime bindings; a UserError with the pip command when cuda-python is missing."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError:
            raise UserError("cuda-python is not installed: pip install cuda-python (the tensorrt backend needs "
                            "it for device buffers, streams and CUDA graphs)") from None
    return runtime


def check(result, what: str = "CUDA call"):
    """Unpack a cuda-python ``(err, *values)`` tuple; raise on an error."""
    rt = cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != rt.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


class DeviceBuffer:
    """``nbytes`` of device memory, zeroed once."""

    def __init__(self, nbytes: int):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(check(cudart().cudaMalloc(self.nbytes), "cudaMalloc"))
        check(cudart().cudaMemset(self.ptr, 0, self.nbytes), "cudaMemset")

    def free(self) -> None:
        if self.ptr:
            check(cudart().cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class Stream:
    """The backend's one CUDA stream, with the copies it issues."""

    def __init__(self):
        self.rt = cudart()
        self.handle = check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def h2d(self, dst: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self.rt.cudaMemcpyAsync(dst, array.ctypes.data, array.nbytes, kind, self.handle), "copy to device")

    def d2h(self, out: np.ndarray, src: int) -> np.ndarray:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self.rt.cudaMemcpyAsync(out.ctypes.data, src, out.nbytes, kind, self.handle), "copy to host")
        return out

    def copy_2d(self, dst: int, dpitch: int, src: int, spitch: int, width: int, height: int, kind: str) -> None:
        """``height`` rows of ``width`` bytes; kind 'd2d' or 'h2d'."""
        k = {"d2d": self.rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice,
             "h2d": self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice}[kind]
        check(self.rt.cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, k, self.handle), "2-D copy")

    def memset(self, ptr: int, nbytes: int) -> None:
        check(self.rt.cudaMemsetAsync(ptr, 0, nbytes, self.handle), "cudaMemsetAsync")

    def sync(self) -> None:
        check(self.rt.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def destroy(self) -> None:
        check(self.rt.cudaStreamDestroy(self.handle), "cudaStreamDestroy")


class CudaGraph:
    """One captured step: ``capture(enqueue)`` records what ``enqueue`` issues on the stream; ``launch`` replays it."""

    def __init__(self, stream: Stream, signature: tuple):
        self.stream, self.signature, self.exec = stream, signature, None

    def capture(self, enqueue) -> "CudaGraph":
        rt = self.stream.rt
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(rt.cudaStreamBeginCapture(self.stream.handle, mode), "cudaStreamBeginCapture")
        try:
            enqueue()
        finally:
            graph = check(rt.cudaStreamEndCapture(self.stream.handle), "cudaStreamEndCapture")
        self.exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")
        return self

    def launch(self) -> None:
        check(self.stream.rt.cudaGraphLaunch(self.exec, self.stream.handle), "cudaGraphLaunch")

    def destroy(self) -> None:
        if self.exec is not None:
            check(self.stream.rt.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            self.exec = None
