"""ONNX Runtime backend: one session per graph, IO binding, output buffers reused across steps (torch-free)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_attention import continues_cache, in_place_outputs, run_rows
from nextstep_trt.export.ort_kvcache import level1_runner, read_scales
from nextstep_trt.export.ort_session import make_session
from nextstep_trt.ref.weights import head_shapes

from .backend import Backend, Feeds, unquantized_notices

# With the default thread count (0), a cache-sized head runs on the calling thread: a head session with a pool of
# its own spins against the backbone's pool between calls (bench preset, 2 cores: decode 37 -> 20 ms per step with
# the 4.3 MiB head on 1 thread). Bigger heads (Large: 600 MiB fp32, memory-bound) and every other graph keep ORT's
# default pool of one thread per core.
SMALL_HEAD_BYTES = 64 * 2**20


class OrtBackend(Backend):
    """Graphs of one precision from an artifacts folder. ``run`` returns views of reused output buffers, valid
    until the next call of the same graph."""

    name = "onnxruntime"

    def __init__(self, artifacts: str | Path, precision: Precision = Precision.FP32, device: str = "cpu",
                 threads: int = 0, profile_prefix: str | None = None):
        self.manifest = Manifest.load(artifacts)
        self.precision = Precision(precision)
        self.graph_precision = self.manifest.graph_precisions(self.precision)
        self.manifest.verify(self.graph_precision)   # every graph's bytes as validated, before any work (stamps)
        specs = {g: self.manifest.spec(g, p, "onnxruntime") for g, p in self.graph_precision.items()}
        super().__init__(self.manifest.config, specs)
        fallback = sorted(g for g, p in self.graph_precision.items() if p != self.precision)
        if fallback:
            self._notice(f"no {self.precision.value} graph for {', '.join(fallback)}: running it at fp32")
        for text in unquantized_notices(self.manifest, self.graph_precision):
            self._notice(text)
        self.profile = self.manifest.profile
        self.device, self.threads, self.profile_prefix = device, threads, profile_prefix
        self._sessions: dict[str, object] = {}
        self._bindings: dict[str, object] = {}
        self._in_place: dict[str, dict[str, str]] = {}      # graph -> {present output: past input} (fused attention)
        self._bound: dict[tuple[str, str], tuple | None] = {}   # (graph, tensor) -> (array, shape, dtype) bound
        self._plans: dict[str, tuple] = {}                       # graph -> (input signature, output plan), last call
        self._outputs: dict[tuple, np.ndarray] = {}

    def session(self, graph: str):
        """The graph's session, created on first use."""
        if graph not in self._sessions:
            self.spec(graph)
            prefix = f"{self.profile_prefix}_{graph}" if self.profile_prefix else None
            path = self.manifest.path(graph, self.graph_precision[graph])
            self._sessions[graph] = make_session(path, self.device, self.threads or self.default_threads(graph),
                                                 prefix)
            self._bindings[graph] = self._sessions[graph].io_binding()
            self._in_place[graph] = in_place_outputs([o.name for o in self._sessions[graph].get_outputs()])
        return self._sessions[graph]

    def default_threads(self, graph: str) -> int:
        """Intra-op threads of ``graph`` when none were asked for: 1 for a cache-sized head, else 0 (ORT's default)."""
        head = sum(math.prod(s) for s in head_shapes(self.config.head).values()) * 4
        return 1 if graph.startswith("head_") and head <= SMALL_HEAD_BYTES else 0

    def level1_view(self, graph: str):
        """An int8-cache backbone is checked as the reference runs: its float cache quantized with the graph's
        scales on the way in, the new K/V dequantized on the way out (``export/ort_kvcache.py``)."""
        precision = self.graph_precision[graph]
        run, cache = level1_runner(lambda feeds: self.run(graph, feeds),
                                   read_scales(self.manifest.path(graph, precision, verify=False)))
        return self.manifest.spec(graph, precision), run, cache

    def thread_counts(self) -> dict[str, int]:
        """Intra-op threads of each open session (0: ONNX Runtime's default, one per physical core)."""
        return {g: s.get_session_options().intra_op_num_threads for g, s in self._sessions.items()}

    def _output_buffer(self, graph: str, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        key = (graph, name, shape)
        if key not in self._outputs:
            self._outputs[key] = np.empty(shape, dtype=dtype)
        return self._outputs[key]

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        spec = self.spec(graph)
        outputs = self._plan(graph, spec, feeds)
        session, binding = self.session(graph), self._bindings[graph]
        cache = self._in_place[graph]
        if cache and continues_cache(feeds):                  # the fused attention's CPU kernel: one row at a time
            return run_rows(lambda f: dict(zip(spec.output_names, session.run(spec.output_names, f))), feeds)
        for name in spec.input_names:
            self._bind(graph, binding, name, np.ascontiguousarray(feeds[name]))
        fixed: Feeds = {}
        for name, shape, dtype in outputs:
            buf = None if shape is None else self._output_buffer(graph, name, shape, dtype)
            self._bind(graph, binding, name, buf, output=True)
            if buf is not None:
                fixed[name] = buf
        for present, past in cache.items():                   # after the spec's outputs: their order is kept
            self._bind_cache(graph, binding, present, feeds[past], feeds["input_ids"].shape[1])
        session.run_with_iobinding(binding)
        if len(fixed) == len(spec.outputs):
            return fixed
        allocated = dict(zip(spec.output_names, binding.copy_outputs_to_cpu()))
        return {n: fixed.get(n, allocated[n]) for n in spec.output_names}

    def _plan(self, graph: str, spec, feeds: Feeds) -> list[tuple[str, tuple | None, np.dtype]]:
        """[(output, shape, dtype)] for these feeds (shape None: a size the inputs do not set, ONNX Runtime
        allocates it), after ``check_inputs``; a call with the last call's input shapes and dtypes (every decode
        step) reuses the last plan without checking again (~0.1 ms of Python a step for the backbone's 38 inputs)."""
        signature = tuple((n, getattr(feeds.get(n), "shape", None), getattr(feeds.get(n), "dtype", None))
                          for n in spec.input_names)
        last = self._plans.get(graph)
        if last is not None and last[0] == signature:
            return last[1]
        sizes = spec.check_inputs(feeds)
        plan = [(t.name, t.shape(sizes) if all(isinstance(a, int) or a in sizes for a in t.axes) else None,
                 t.np_dtype) for t in spec.outputs]
        self._plans[graph] = (signature, plan)
        return plan

    def _bind(self, graph: str, binding, name: str, array: np.ndarray | None, output: bool = False) -> None:
        """Bind ``array``'s memory (ORT reads and writes it in place, no copy), or for an output ``None`` a buffer
        ORT allocates; skipped when the same array (same object, shape and dtype) is bound already: the cache, the
        mask and the reused outputs are the same arrays at every step (50-70 bindings a decode step saved). The
        record holds the array, so its memory stays valid while bound."""
        prev = self._bound.get((graph, name))
        if array is not None and prev is not None and prev[0] is array and prev[1] == array.shape \
                and prev[2] == array.dtype:
            return
        if array is None:
            binding.bind_output(name, "cpu")
        elif output:
            binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        else:
            binding.bind_cpu_input(name, array)
        self._bound[(graph, name)] = None if array is None else (array, array.shape, array.dtype)

    def _bind_cache(self, graph: str, binding, present: str, past: np.ndarray, new_tokens: int) -> None:
        """The fused attention's ``present`` output bound to the cache buffer fed as its past, so the kernel writes
        the new K/V in place and reads the cache without copying it (the cache still stores the ``new_*``
        outputs: the same values). Any other past (a caller's own array) gets an output of its own."""
        own = self.cache is not None and id(past) in self.cache.buffer_ids
        in_place = own and self.cache.pos + new_tokens <= self.cache.capacity
        self._bind(graph, binding, present, past if in_place else None, output=True)

    def backbone(self, *args) -> np.ndarray:
        return super().backbone(*args).copy()

    def sample(self, *args) -> np.ndarray:
        return super().sample(*args).copy()

    def close(self) -> None:
        if self.profile_prefix:
            for s in self._sessions.values():
                s.end_profiling()
        self._sessions.clear()
        self._bindings.clear()
        self._bound.clear()
        self._plans.clear()
        self._outputs.clear()
