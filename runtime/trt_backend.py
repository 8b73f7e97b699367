"""TensorRT backend: plans from the engine cache, preallocated device buffers, one CUDA stream, the KV cache on the
device, and CUDA graphs for the static decode step and the fused sampler (torch-free).

UNTESTED: written against the TensorRT 10 / TensorRT-RTX and cuda-python APIs on machines without a GPU; only its
refusals (no TensorRT, no GPU, no cuda-python, no matching plan) have run. Run the GPU tests before relying on it.
"""
from __future__ import annotations

import json
from math import prod
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.manifest import Manifest, sha256_file
from nextstep_trt.export.spec import GraphSpec
from nextstep_trt.ref.sampling import Guidance, SamplerConfig

from .backend import Backend, Feeds, sampler_feeds, unquantized_notices


class TrtEngine:
    """One deserialized plan: one execution context per optimization profile, device buffers per tensor and role,
    and at most one captured CUDA graph per context."""

    def __init__(self, engine, spec: GraphSpec, stream):
        from .cuda_device import CudaGraph, DeviceBuffer

        self._Graph, self._Buffer = CudaGraph, DeviceBuffer
        self.engine, self.spec, self.stream = engine, spec, stream
        self.contexts = []
        for index in range(engine.num_optimization_profiles):
            ctx = engine.create_execution_context()
            if ctx is None:
                raise UserError(f"{spec.name}: TensorRT could not create an execution context (out of GPU memory?)")
            if index:
                ctx.set_optimization_profile_async(index, stream.ptr)
            self.contexts.append(ctx)
        stream.sync()
        self.buffers: dict[tuple[str, str], object] = {}
        self.graphs: dict[int, object] = {}

    def max_sizes(self, **override: int) -> dict[str, int]:
        """Every dim at its largest over all profiles (buffers allocated once never move), with overrides."""
        return {name: dim.max for name, dim in self.spec.envelope().items()} | override

    def buffer(self, name: str, role: str, sizes: dict[str, int]) -> int:
        """The device address of tensor ``name``'s buffer for ``role`` ('run' or 'decode'), allocated on first use."""
        if (name, role) not in self.buffers:
            t = self.spec.tensor(name)
            self.buffers[(name, role)] = self._Buffer(prod(t.shape(sizes)) * t.np_dtype.itemsize)
        return self.buffers[(name, role)].ptr

    def bind(self, profile: int, shapes: dict[str, tuple], addresses: dict[str, int]) -> None:
        ctx = self.contexts[profile]
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, tuple(int(s) for s in shape)):
                raise UserError(f"{self.spec.name}.{name}: shape {tuple(shape)} is outside engine profile {profile}")
        for name, ptr in addresses.items():
            ctx.set_tensor_address(name, ptr)

    def enqueue(self, profile: int) -> None:
        if not self.contexts[profile].execute_async_v3(self.stream.ptr):
            raise RuntimeError(f"{self.spec.name}: TensorRT execution failed (profile {profile})")

    def step(self, profile: int, signature: tuple, use_graph: bool) -> None:
        """Run the bound step: eagerly, or by replaying the CUDA graph captured for this signature."""
        if not use_graph:
            self.enqueue(profile)
            return
        graph = self.graphs.get(profile)
        if graph is None or graph.signature != signature:
            self.invalidate(profile)
            self.enqueue(profile)            # one enqueue after a shape change, before capturing
            self.stream.sync()
            graph = self._Graph(self.stream, signature).capture(lambda: self.enqueue(profile))
            self.graphs[profile] = graph
        graph.launch()

    def invalidate(self, profile: int) -> None:
        """Drop the context's captured graph (its shapes or addresses are about to change)."""
        graph = self.graphs.pop(profile, None)
        if graph is not None:
            graph.destroy()

    def upload(self, addresses: dict[str, int], feeds: Feeds) -> None:
        """Host inputs to their device buffers, in the spec's dtypes."""
        for name, array in feeds.items():
            self.stream.h2d(addresses[name], np.asarray(array, self.spec.tensor(name).np_dtype))

    def fetch(self, profile: int, names: list[str], role: str) -> Feeds:
        """Copy outputs to fresh host arrays and wait for the stream."""
        out = {}
        for name in names:
            shape = tuple(self.contexts[profile].get_tensor_shape(name))
            host = np.empty(shape, self.spec.tensor(name).np_dtype)
            out[name] = self.stream.d2h(host, self.buffers[(name, role)].ptr)
        self.stream.sync()
        return out

    def close(self) -> None:
        for profile in list(self.graphs):
            self.invalidate(profile)
        for buf in self.buffers.values():
            buf.free()
        self.buffers.clear()
        self.contexts.clear()
        self.engine = None


class DeviceKVCache:
    """One [rows_max,KVH,C,D] device buffer per layer and kind plus the [rows_max,C] slot mask. Sized for the
    profile's most rows, so a smaller batch fits in place and captured graphs keep their addresses."""

    def __init__(self, stream, spec: GraphSpec):
        from .cuda_device import DeviceBuffer

        self.stream, self.capacity = stream, spec.attrs["kv_capacity"]
        self.rows_max = spec.envelope()["rows"].max
        self.names = [t.name for t in spec.inputs if t.name.startswith("past_") and t.name != "past_mask"]
        t = spec.tensor(self.names[0])
        _, self.heads, _, dim = t.axes                     # ("rows", KVH, "past", D)
        self.slot = dim * t.np_dtype.itemsize              # bytes of one cache slot of one (row, head)
        self.dim = dim
        self.buffers = {n: DeviceBuffer(self.rows_max * self.heads * self.capacity * self.slot) for n in self.names}
        self.mask = DeviceBuffer(self.rows_max * self.capacity * 8)
        self.host_mask = np.zeros((self.rows_max, self.capacity), np.int64)
        self.rows = self.pos = 0

    def reset(self, rows: int) -> None:
        if rows > self.rows_max:
            raise UserError(f"{rows} cache rows exceed the engine's {self.rows_max}")
        self.rows, self.pos = rows, 0
        self.host_mask[:] = 0
        self.stream.memset(self.mask.ptr, self.mask.nbytes)

    def shapes(self) -> dict[str, tuple]:
        kv = (self.rows, self.heads, self.capacity, self.dim)
        return {n: kv for n in self.names} | {"past_mask": (self.rows, self.capacity)}

    def addresses(self) -> dict[str, int]:
        return {n: b.ptr for n, b in self.buffers.items()} | {"past_mask": self.mask.ptr}

    def write(self, new: dict[str, int], s: int, token_mask: np.ndarray) -> None:
        """Device-to-device copies of the S new K/V slots of every (row, head) to the current position."""
        end = self.pos + s
        if end > self.capacity:
            raise UserError(f"KV cache overflow: {end} slots needed, capacity {self.capacity}")
        pitch = self.capacity * self.slot
        for name in self.names:
            self.stream.copy_2d(self.buffers[name].ptr + self.pos * self.slot, pitch, new[name], s * self.slot,
                                s * self.slot, self.rows * self.heads, "d2d")
        self.host_mask[:self.rows, self.pos:end] = token_mask
        self.stream.copy_2d(self.mask.ptr + self.pos * 8, self.capacity * 8, self.host_mask.ctypes.data + self.pos * 8,
                            self.capacity * 8, s * 8, self.rows, "h2d")
        self.pos = end

    def free(self) -> None:
        for b in [*self.buffers.values(), self.mask]:
            b.free()


def _pick_flavor(artifacts: Path) -> str:
    """The installed flavour that built plans here (tensorrt first), else the first installed one."""
    from nextstep_trt.export.trt_check import import_flavor

    installed = []
    for flavor in ("tensorrt", "tensorrt-rtx"):
        try:
            import_flavor(flavor)
            installed.append(flavor)
        except UserError:
            pass
    if not installed:
        raise UserError("tensorrt is not installed: pip install tensorrt (or tensorrt-rtx for RTX GPUs)")
    built = set()
    for path in (artifacts / "engines").glob("*/*/*/manifest.json"):
        try:
            built.add(json.loads(path.read_text())["target"]["flavor"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return next((f for f in installed if f in built), installed[0])


class TrtBackend(Backend):
    """Engines of one precision from ``ART/engines``. ``cuda_graphs=False`` runs every step eagerly."""

    name = "tensorrt"

    def __init__(self, artifacts: str | Path, precision: Precision = Precision.FP32, flavor: str | None = None,
                 cuda_graphs: bool = True):
        from nextstep_trt.core.gpu import probe_gpu
        from nextstep_trt.export.trt_check import import_flavor

        from .plans import Target

        self.manifest, self.precision = Manifest.load(artifacts), Precision(precision)
        self.artifacts = Path(artifacts)
        self.graph_precision = self.manifest.graph_precisions(self.precision)    # fp32 where no such graph
        specs = {g: self.manifest.spec(g, p) for g, p in self.graph_precision.items()}
        super().__init__(self.manifest.config, specs)
        for text in unquantized_notices(self.manifest, self.graph_precision):
            self._notice(text)
        self.profile, self.cuda_graphs = self.manifest.profile, cuda_graphs
        flavor = flavor or _pick_flavor(self.artifacts)
        self.trt = import_flavor(flavor)
        probe = probe_gpu()
        if probe.gpu is None:
            raise UserError(f"no CUDA GPU: the tensorrt backend runs engines on a GPU ({probe.reason})")
        from .cuda_device import Stream

        self.target = Target(flavor, self.trt.__version__, probe.gpu.compute_capability, probe.gpu.name)
        self.stream = Stream()
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)           # must outlive the runtime
        self.runtime = self.trt.Runtime(self.logger)
        self._engines: dict[str, TrtEngine] = {}
        self.kv: DeviceKVCache | None = None

    def engine(self, graph: str) -> TrtEngine:
        """The graph's engine: the cached plan for this ONNX graph, TensorRT and GPU, deserialized on first use."""
        from nextstep_trt.export.deployments import tensorrt_graph

        from .plans import find_plan

        if graph not in self._engines:
            spec = self.spec(graph)
            precision = self.graph_precision[graph]
            path, sha = tensorrt_graph(self.manifest, graph, precision)    # int4/int8: the DequantizeLinear file
            sha = sha or sha256_file(path)
            plan = find_plan(self.artifacts, graph, precision, self.target, sha)   # checks the plan's sha and target
            engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
            if engine is None:
                raise UserError(f"{plan}: {self.target.flavor} could not deserialize it (see the log above)")
            self._engines[graph] = TrtEngine(engine, spec, self.stream)
        return self._engines[graph]

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        spec = self.spec(graph)
        sizes = spec.check_inputs(feeds)
        eng = self.engine(graph)
        profile = next((i for i, p in enumerate(spec.profiles)
                        if all(p.dim(a).contains(s) for a, s in sizes.items())), None)
        if profile is None:
            raise UserError(f"{graph}: sizes {sizes} fit no single optimization profile of the engine")
        eng.invalidate(profile)
        addr = {n: eng.buffer(n, "run", eng.max_sizes()) for n in spec.input_names + spec.output_names}
        eng.bind(profile, {n: feeds[n].shape for n in spec.input_names}, addr)
        eng.upload(addr, {n: feeds[n] for n in spec.input_names})
        eng.enqueue(profile)
        return eng.fetch(profile, spec.output_names, "run")

    def start(self, rows: int, needed: int) -> None:
        self.check_capacity(needed)
        if self.kv is None:
            self.kv = DeviceKVCache(self.stream, self.spec("backbone"))
        self.kv.reset(rows)

    def backbone(self, input_ids, image_tokens, image_mask, position_ids, token_mask) -> np.ndarray:
        """Prefill (profile 0, eager) or one decode step (the decode profile, a CUDA graph); K/V stay on the GPU."""
        eng = self.engine("backbone")
        feeds = {"input_ids": input_ids, "image_tokens": image_tokens, "image_mask": image_mask,
                 "position_ids": position_ids, "token_mask": token_mask}
        names = [p.name for p in eng.spec.profiles]
        decode = input_ids.shape[1] == 1 and "decode" in names
        profile, role = (names.index("decode"), "decode") if decode else (0, "run")
        sizes = eng.max_sizes(seq=1) if decode else eng.max_sizes()
        step = list(feeds) + eng.spec.output_names
        addr = {n: eng.buffer(n, role, sizes) for n in step} | self.kv.addresses()
        shapes = {n: a.shape for n, a in feeds.items()} | self.kv.shapes()
        if not decode:
            eng.invalidate(profile)
        eng.bind(profile, shapes, addr)
        eng.upload(addr, feeds)
        eng.step(profile, tuple(sorted(shapes.items())), decode and self.cuda_graphs)
        self.kv.write({n: addr[n.replace("past_", "new_")] for n in self.kv.names}, input_ids.shape[1], token_mask)
        return eng.fetch(profile, ["cond"], role)["cond"]

    def sample(self, cond, noise, guidance: Guidance, cfg, cfg_img, sampler: SamplerConfig) -> np.ndarray:
        """The fused sampler as a CUDA graph per batch size; the head_step fallback otherwise."""
        fused = self.fused_sampler(sampler, guidance)
        if fused is None:
            return super().sample(cond, noise, guidance, cfg, cfg_img, sampler)
        feeds = sampler_feeds(cond, noise, guidance, cfg, cfg_img)
        eng = self.engine(fused)
        addr = {n: eng.buffer(n, "run", eng.max_sizes()) for n in eng.spec.input_names + eng.spec.output_names}
        shapes = {n: a.shape for n, a in feeds.items()}
        eng.bind(0, shapes, addr)
        eng.upload(addr, feeds)
        eng.step(0, tuple(sorted(shapes.items())), self.cuda_graphs)
        return eng.fetch(0, ["token"], "run")["token"]

    def close(self) -> None:
        for eng in self._engines.values():
            eng.close()
        self._engines.clear()
        if self.kv is not None:
            self.kv.free()
            self.kv = None
        if getattr(self, "stream", None) is not None:
            self.stream.destroy()
            self.stream = None
