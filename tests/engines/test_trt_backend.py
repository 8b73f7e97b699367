"""The TensorRT backend: clear refusals on the CPU; on a GPU, parity at the ONNX Runtime bounds and CUDA-graph
replay equal to eager execution (skipped with a reason without TensorRT, cuda-python or a GPU)."""
import numpy as np
import pytest
from engine_helpers import copy_artifacts

from nextstep_trt.core.errors import UserError


def _gpu():
    from nextstep_trt.core.gpu import probe_gpu

    return probe_gpu().gpu


def test_without_a_gpu_the_backend_says_so(tiny_artifacts):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt-rtx is not installed")
    if _gpu() is not None:
        pytest.skip("this machine has a GPU")
    from nextstep_trt.runtime.api import open_backend

    with pytest.raises(UserError, match=r"^no CUDA GPU: the tensorrt backend runs engines on a GPU"):
        open_backend("tensorrt", artifacts=tiny_artifacts[0])


def test_a_missing_flavour_names_the_pip_package(tiny_artifacts):
    from nextstep_trt.runtime.trt_backend import TrtBackend

    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"tensorrt is not installed: pip install tensorrt"):
        TrtBackend(tiny_artifacts[0], flavor="tensorrt")


@pytest.fixture(scope="module")
def gpu_engines(tiny_artifacts, tmp_path_factory):
    """Every fp32 graph built with standard TensorRT for this GPU."""
    pytest.importorskip("tensorrt", reason="standard TensorRT is not installed")
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    if _gpu() is None:
        pytest.skip("no CUDA GPU")
    from nextstep_trt.engines.builder import BuildOptions, resolve_target
    from nextstep_trt.engines.cache import build_engine
    from nextstep_trt.export.manifest import Manifest

    art = copy_artifacts(tiny_artifacts[0], tmp_path_factory.mktemp("gpu") / "art")
    opts = BuildOptions("tensorrt")
    target = resolve_target(opts)
    for graph in Manifest.load(art).graphs:
        rec = build_engine(art, graph, "fp32", opts, target)
        assert rec.manifest["engine_check"]["deserialized"], rec.manifest["engine_check"]
    return art


@pytest.mark.gpu
def test_tensorrt_parity_at_the_onnx_runtime_bounds(gpu_engines, tiny_bundle, tiny_profile):
    from nextstep_trt.runtime.reference import LiveReference
    from nextstep_trt.runtime.trt_backend import TrtBackend
    from nextstep_trt.runtime.verify import verify_backend

    with TrtBackend(gpu_engines, "fp32", flavor="tensorrt") as backend:
        report = verify_backend(backend, LiveReference(tiny_bundle, tiny_profile), "fp32", log=lambda *_: None)
    assert report.ok, report.table()
    assert {r.level for r in report.rows} == {1, 2, 3}


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(gpu_engines, tiny_bundle, tiny_profile):
    from nextstep_trt.runtime.cases import loop_cases
    from nextstep_trt.runtime.parity import run_trace
    from nextstep_trt.runtime.trt_backend import TrtBackend

    case = loop_cases(tiny_bundle.tokenizer, tiny_bundle.config, tiny_profile)[0]
    traces = []
    for graphs in (True, False):
        with TrtBackend(gpu_engines, "fp32", flavor="tensorrt", cuda_graphs=graphs) as backend:
            traces.append(run_trace(backend, case))
    replayed, eager = traces
    assert np.array_equal(replayed.tokens, eager.tokens)
    assert all(np.array_equal(a, b) for a, b in zip(replayed.cond, eager.cond))


class _FakeMemory:
    """Host bytes standing in for device memory, so the device KV cache's copy arithmetic runs on the CPU.
    This checks offsets and pitches only; it is no evidence about CUDA itself."""

    def __init__(self):
        self.bytes, self.next = np.zeros(1 << 22, np.uint8), 4096

    def view(self, ptr, nbytes):
        import ctypes

        if ptr >= 4096 and ptr < self.next:
            return self.bytes[ptr:ptr + nbytes]
        return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(ptr))     # a host pointer


def test_device_kv_cache_layout_matches_the_host_cache(tiny_artifacts, monkeypatch):
    import nextstep_trt.runtime.cuda_device as cuda_device
    from nextstep_trt.export.manifest import Manifest
    from nextstep_trt.runtime.backend import HostKVCache
    from nextstep_trt.runtime.trt_backend import DeviceKVCache

    mem = _FakeMemory()

    class Buffer:
        def __init__(self, nbytes):
            self.ptr, self.nbytes = mem.next, nbytes
            mem.next += nbytes

    class Stream:
        def memset(self, ptr, nbytes):
            mem.view(ptr, nbytes)[:] = 0

        def copy_2d(self, dst, dpitch, src, spitch, width, height, kind):
            for row in range(height):
                mem.view(dst + row * dpitch, width)[:] = mem.view(src + row * spitch, width)

    monkeypatch.setattr(cuda_device, "DeviceBuffer", Buffer)
    manifest = Manifest.load(tiny_artifacts[0])
    spec, rng = manifest.spec("backbone"), np.random.default_rng(0)
    rows, cap = 3, spec.attrs["kv_capacity"]
    kv, host = DeviceKVCache(Stream(), spec), HostKVCache(manifest.config, rows, cap)
    kv.reset(rows)
    assert kv.rows_max > rows                               # a smaller batch lives in the max-rows buffers
    for s in (5, 1, 1):                                     # prefill, then two decode steps
        new = {n.replace("past_", "new_"): rng.standard_normal((rows, kv.heads, s, kv.dim)).astype(np.float32)
               for n in kv.names}
        token_mask = rng.integers(0, 2, (rows, s))
        staged = {}
        for name, array in new.items():
            buf = Buffer(array.nbytes)
            mem.view(buf.ptr, array.nbytes)[:] = array.view(np.uint8).ravel()
            staged[name.replace("new_", "past_")] = buf.ptr
        kv.write(staged, s, token_mask)
        host.write(new, token_mask)
    for name in kv.names:
        got = mem.view(kv.buffers[name].ptr, kv.buffers[name].nbytes).view(np.float32)
        got = got.reshape(kv.rows_max, kv.heads, cap, kv.dim)[:rows]
        assert np.array_equal(got, host.buffers[name]), name
    mask = mem.view(kv.mask.ptr, kv.mask.nbytes).view(np.int64).reshape(kv.rows_max, cap)[:rows]
    assert np.array_equal(mask, host.mask) and kv.pos == host.pos == 7
