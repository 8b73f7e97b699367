"""Build one strongly typed TensorRT or TensorRT-RTX engine from an ONNX graph and its spec (torch-free).

Two flavours behind one builder: ``tensorrt`` builds on and for the local GPU; ``tensorrt-rtx`` builds ahead of
time for a named compute capability, without a GPU. Precision lives in the ONNX graph: no precision flags.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nextstep_trt.core.errors import CheckFailed, UserError
from nextstep_trt.core.fileio import write_bytes
from nextstep_trt.core.gpu import GpuProbe, cc_tuple, probe_gpu
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.spec import GraphSpec
from nextstep_trt.export.trt_check import FLAVORS, import_flavor, parse_network
from nextstep_trt.runtime.plans import Target

FP8_MIN_CC = (8, 9)
RTX_TIMING_NOTE = "not used: timing cache operations are no-ops in TensorRT-RTX >= 1.2"


@dataclass(frozen=True)
class BuildOptions:
    """How to build; everything here except the timing cache's location goes into the cache key."""

    flavor: str = "tensorrt-rtx"
    compute_capability: str | None = None      # "8.9"; None: the local GPU's
    opt_level: int = 3                         # builder_optimization_level, 0..5
    workspace_bytes: int | None = None         # WORKSPACE pool limit; None: TensorRT's default
    timing_cache: Path | None = None           # None: ART/engines/timing/<flavour-version-gpu>.cache
    extra_flags: tuple[str, ...] = ()          # BuilderFlag names, e.g. ("STRICT_NANS",)

    def __post_init__(self):
        if self.flavor not in FLAVORS:
            raise UserError(f"unknown TensorRT flavor {self.flavor!r}; choose from {', '.join(FLAVORS)}")
        if not 0 <= self.opt_level <= 5:
            raise UserError(f"optimization level {self.opt_level} is outside 0..5")
        if self.workspace_bytes is not None and self.workspace_bytes <= 0:
            raise UserError("the workspace limit must be positive")
        if self.compute_capability is not None:
            try:
                cc_tuple(self.compute_capability)
            except ValueError:
                raise UserError(f"compute capability {self.compute_capability!r} is not X.Y (e.g. 8.9)") from None

    def key_dict(self) -> dict:
        """The options that change the engine (the timing cache's path does not)."""
        d = asdict(self)
        for name in ("timing_cache", "flavor", "compute_capability"):   # the target carries flavour and cc
            d.pop(name)
        d["extra_flags"] = sorted(self.extra_flags)
        return d


def default_flavor(probe: GpuProbe | None = None) -> str:
    """tensorrt when it imports and a GPU is present, else tensorrt-rtx."""
    probe = probe or probe_gpu()
    if probe.gpu is not None:
        try:
            import_flavor("tensorrt")
            return "tensorrt"
        except UserError:
            pass
    return "tensorrt-rtx"


def resolve_target(opts: BuildOptions, probe: GpuProbe | None = None) -> Target:
    """The flavour's version and the compute capability to build for; a UserError says what is missing."""
    trt = import_flavor(opts.flavor)
    probe = probe or probe_gpu()
    gpu_cc = probe.gpu.compute_capability if probe.gpu else None
    if opts.flavor == "tensorrt":
        if probe.gpu is None:
            raise UserError(f"standard TensorRT builds on the GPU it targets and there is none ({probe.reason}); "
                            "build ahead of time with --flavor tensorrt-rtx --compute-capability 8.9")
        if opts.compute_capability not in (None, gpu_cc):
            raise UserError(f"standard TensorRT builds for this GPU (compute capability {gpu_cc}), not "
                            f"{opts.compute_capability}: use --flavor tensorrt-rtx to build for another GPU")
        return Target(opts.flavor, trt.__version__, gpu_cc, probe.gpu.name)
    cc = opts.compute_capability or gpu_cc
    if cc is None:
        raise UserError(f"no GPU here ({probe.reason}): name the target with --compute-capability (e.g. 8.9)")
    rtx_compute_capability(trt, cc)
    return Target(opts.flavor, trt.__version__, cc)


def rtx_compute_capability(trt, cc: str):
    """"8.9" -> trt.ComputeCapability.SM89; a UserError lists the supported targets."""
    members = {name: m for name, m in trt.ComputeCapability.__members__.items() if name.startswith("SM")}
    supported = {f"{n[2:-1]}.{n[-1]}": m for n, m in members.items()}
    if cc not in supported:
        raise UserError(f"TensorRT-RTX {trt.__version__} cannot target compute capability {cc}; "
                        f"it builds for {', '.join(sorted(supported, key=cc_tuple))}")
    return supported[cc]


def check_precision(precision: Precision, cc: str) -> None:
    """FP8 engines need FP8 tensor cores: compute capability 8.9 or newer."""
    if Precision(precision) is Precision.FP8 and cc_tuple(cc) < FP8_MIN_CC:
        raise UserError(f"fp8 engines need compute capability 8.9 or newer (FP8 tensor cores); the target is {cc}")


def trt_profiles(spec: GraphSpec) -> list[dict]:
    """Every spec profile as TensorRT shapes: [{name, shapes: {input: {min, opt, max}}}].

    The one place where spec ranges become TensorRT profiles. TensorRT-RTX 1.7 accepts the backbone's prefill
    profile with past min = 0 (an empty cache) as it is, so nothing is adjusted here."""
    out = []
    for prof in spec.profiles:
        sizes = {w: prof.sizes(w) for w in ("min", "opt", "max")}
        shapes = {t.name: {w: list(t.shape(sizes[w])) for w in ("min", "opt", "max")} for t in spec.inputs}
        out.append({"name": prof.name, "shapes": shapes})
    return out


def check_network_io(spec: GraphSpec, inputs: list, outputs: list) -> list[dict]:
    """The parsed network's I/O against the spec (names, dtypes, ranks, fixed sizes); records for the manifest."""
    records, env = [], spec.envelope()
    fixed = {n: d.min for n, d in env.items() if d.min == d.max}     # e.g. the VAE's H/W in a one-resolution profile

    def named_ok(axis: str, size: int) -> bool:
        return size == -1 or size == fixed.get(axis)

    for mode, items, tensors in (("input", inputs, spec.inputs), ("output", outputs, spec.outputs)):
        got = {name: (dtype, tuple(shape)) for name, dtype, shape in items}
        if set(got) != {t.name for t in tensors}:
            raise UserError(f"{spec.name}: the network's {mode}s {sorted(got)} are not the spec's "
                            f"{sorted(t.name for t in tensors)}")
        for t in tensors:
            dtype, shape = got[t.name]
            bad = dtype != t.dtype or len(shape) != len(t.axes) or any(
                (not named_ok(a, s)) if isinstance(a, str) else (s not in (a, -1) if mode == "output" else s != a)
                for a, s in zip(t.axes, shape))
            if bad:
                raise UserError(f"{spec.name}.{t.name}: the network has {dtype} {list(shape)}, the spec says "
                                f"{t.dtype} {list(t.axes)}")
            records.append({"name": t.name, "mode": mode, "dtype": dtype, "shape": list(shape)})
    return records


@dataclass
class BuiltPlan:
    plan: object                      # IHostMemory: buffer protocol, no copy
    io: list[dict]
    profiles: list[dict]              # as read back from TensorRT's optimization profiles
    seconds: float
    layers: int
    engine_check: dict = field(default_factory=dict)


def _configure(trt, builder, opts: BuildOptions, target: Target):
    config = builder.create_builder_config()
    if opts.flavor == "tensorrt-rtx":
        config.num_compute_capabilities = 1
        if not config.set_compute_capability(rtx_compute_capability(trt, target.compute_capability), 0):
            raise UserError(f"TensorRT-RTX refused compute capability {target.compute_capability}")
    config.builder_optimization_level = opts.opt_level
    if opts.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    for name in opts.extra_flags:
        flag = trt.BuilderFlag.__members__.get(name)
        if flag is None:
            known = ", ".join(trt.BuilderFlag.__members__)
            raise UserError(f"unknown builder flag {name!r}; {opts.flavor} has {known}")
        config.set_flag(flag)
    return config


def _add_profiles(builder, config, spec: GraphSpec, profiles: list[dict]) -> list[dict]:
    """Add every profile; return what TensorRT stored (refusing a profile it rejects)."""
    stored = []
    for prof in profiles:
        p = builder.create_optimization_profile()
        for name, s in prof["shapes"].items():
            p.set_shape(name, s["min"], s["opt"], s["max"])
        if config.add_optimization_profile(p) < 0:
            raise UserError(f"{spec.name}: TensorRT rejected the {prof['name']} optimization profile {prof['shapes']}")
        back = {name: dict(zip(("min", "opt", "max"), ([int(x) for x in d] for d in p.get_shape(name))))
                for name in prof["shapes"]}
        if back != prof["shapes"]:
            raise UserError(f"{spec.name}: TensorRT changed the {prof['name']} profile to {back}")
        stored.append({"name": prof["name"], "shapes": back})
    return stored


def build_plan(onnx: Path, spec: GraphSpec, precision: Precision, opts: BuildOptions, target: Target,
               check_engine: bool = False) -> BuiltPlan:
    """Parse, check the network's I/O against the spec, add the spec's profiles and build a serialized engine."""
    check_precision(precision, target.compute_capability)
    parsed = parse_network(onnx, opts.flavor)
    if not parsed.result.ok:
        errors = "; ".join(f"{node or '<model>'}: {msg}" for node, msg in parsed.result.errors[:5]) or "no details"
        raise UserError(f"{opts.flavor} cannot parse {onnx}: {errors}")
    trt, builder = parsed.trt, parsed.builder
    io = check_network_io(spec, parsed.result.inputs, parsed.result.outputs)
    config = _configure(trt, builder, opts, target)
    stored = _add_profiles(builder, config, spec, trt_profiles(spec))
    timing = _attach_timing_cache(config, opts) if opts.flavor == "tensorrt" else None
    start = time.perf_counter()
    plan = builder.build_serialized_network(parsed.network, config)
    seconds = time.perf_counter() - start
    if plan is None:
        reason = "; ".join(parsed.logger.errors[-3:]) or "no reason given"
        raise UserError(f"{opts.flavor} could not build {spec.name}: {reason}")
    if timing is not None and opts.timing_cache is not None:
        write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    built = BuiltPlan(plan, io, stored, seconds, parsed.result.num_layers)
    built.engine_check = inspect_engine(trt, parsed.logger, plan, spec, stored) if check_engine else {
        "deserialized": False, "why": "no GPU of the target compute capability here: I/O checked on the parsed "
        "network, profiles read back from the builder"}
    return built


def _attach_timing_cache(config, opts: BuildOptions):
    """Load (or start) the timing cache for this GPU and attach it to the config."""
    path = opts.timing_cache
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, False)
    return cache


def inspect_engine(trt, logger, plan, spec: GraphSpec, profiles: list[dict]) -> dict:
    """Deserialize (needs a GPU) and check the engine's I/O names, modes, dtypes and profile shapes."""
    from nextstep_trt.export.trt_check import _DTYPES

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise CheckFailed(f"{spec.name}: the built plan does not deserialize: {'; '.join(logger.errors[-2:])}")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    if sorted(names) != sorted(spec.input_names + spec.output_names):
        raise CheckFailed(f"{spec.name}: the engine's tensors {names} are not the spec's")
    for name in names:
        mode = "input" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "output"
        dtype = _DTYPES.get(engine.get_tensor_dtype(name).name)
        if (mode == "input") != (name in spec.input_names) or dtype != spec.tensor(name).dtype:
            raise CheckFailed(f"{spec.name}.{name}: the engine has {mode} {dtype}, the spec {spec.tensor(name).dtype}")
    if engine.num_optimization_profiles != len(profiles):
        raise CheckFailed(f"{spec.name}: the engine has {engine.num_optimization_profiles} profiles, expected "
                          f"{len(profiles)}")
    for index, prof in enumerate(profiles):
        for name, want in prof["shapes"].items():
            got = [[int(x) for x in d] for d in engine.get_tensor_profile_shape(name, index)]
            if got != [want["min"], want["opt"], want["max"]]:
                raise CheckFailed(f"{spec.name}.{name}: engine profile {prof['name']} is {got}, expected {want}")
    return {"deserialized": True, "tensors": len(names), "profiles": len(profiles),
            "device_memory": int(getattr(engine, "device_memory_size_v2", 0) or 0)}
