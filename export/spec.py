"""Each graph's tensors, dtypes and dynamic ranges, declared once (torch-free).

From these come the ONNX names and dynamic axes, sample shapes, TensorRT optimization profiles, runtime buffer
shapes and the manifest. A ``Dim`` is a named dynamic axis with a (min, opt, max) range; a ``Profile`` gives every
named dim of a graph its range (the backbone has two: prefill and decode); a ``TensorSpec`` names its axes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from nextstep_trt.core.errors import UserError

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "bool")
SPEC_VERSION = 1


@dataclass(frozen=True)
class Dim:
    name: str
    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 0 <= self.min <= self.opt <= self.max:
            raise UserError(f"dim {self.name}: need 0 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    def contains(self, size: int) -> bool:
        return self.min <= size <= self.max


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    axes: tuple[str | int, ...]   # a str is the name of a Dim, an int a fixed size

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"{self.name}: unknown dtype {self.dtype}")

    @property
    def np_dtype(self) -> np.dtype:
        if self.dtype == "bfloat16":
            import ml_dtypes

            return np.dtype(ml_dtypes.bfloat16)
        return np.dtype(self.dtype)

    def shape(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """Concrete shape with every named axis looked up in ``sizes``."""
        return tuple(sizes[a] if isinstance(a, str) else a for a in self.axes)


@dataclass(frozen=True)
class Profile:
    """Ranges of every named dim of a graph for one TensorRT optimization profile."""

    name: str
    dims: tuple[Dim, ...]

    def dim(self, name: str) -> Dim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(name)

    def sizes(self, which: str) -> dict[str, int]:
        """{dim name: its min, opt or max}."""
        return {d.name: getattr(d, which) for d in self.dims}


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    profiles: tuple[Profile, ...]
    attrs: dict = field(default_factory=dict, compare=False)   # fixed-at-export facts (steps, cfg rows, ...)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name}")

    def envelope(self) -> dict[str, Dim]:
        """Each dim's range over all profiles: what the ONNX graph and ONNX Runtime accept."""
        out: dict[str, Dim] = {}
        for p in self.profiles:
            for d in p.dims:
                old = out.get(d.name, d)
                out[d.name] = Dim(d.name, min(old.min, d.min), max(old.opt, d.opt), max(old.max, d.max))
        return out

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """torch.onnx.export's ``dynamic_axes``: {tensor: {axis: dim name}}."""
        return {t.name: {i: a for i, a in enumerate(t.axes) if isinstance(a, str)}
                for t in self.inputs + self.outputs if any(isinstance(a, str) for a in t.axes)}

    def shapes(self, sizes: dict[str, int], tensors=None) -> dict[str, tuple[int, ...]]:
        """Concrete shapes of the inputs (or of ``tensors``) for one choice of dim sizes."""
        return {t.name: t.shape(sizes) for t in (self.inputs if tensors is None else tensors)}

    def check_inputs(self, feeds: dict[str, np.ndarray]) -> dict[str, int]:
        """Names, dtypes, ranks, fixed sizes, consistent and in-range dynamic sizes; a UserError names the tensor.
        Returns the size of every dynamic dim the feeds set."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise UserError(f"{self.name}: missing input(s) {', '.join(missing)}")
        seen: dict[str, int] = {}
        env = self.envelope()
        for t in self.inputs:
            arr = feeds[t.name]
            if arr.dtype != t.np_dtype:
                raise UserError(f"{self.name}.{t.name}: dtype {arr.dtype}, expected {t.dtype}")
            if arr.ndim != len(t.axes):
                raise UserError(f"{self.name}.{t.name}: rank {arr.ndim}, expected {len(t.axes)} {t.axes}")
            for axis, (a, size) in enumerate(zip(t.axes, arr.shape)):
                if isinstance(a, int) and size != a:
                    raise UserError(f"{self.name}.{t.name}: axis {axis} is {size}, expected {a}")
                if isinstance(a, str):
                    if seen.setdefault(a, size) != size:
                        raise UserError(f"{self.name}.{t.name}: {a}={size} disagrees with {a}={seen[a]}")
                    if not env[a].contains(size):
                        raise UserError(f"{self.name}.{t.name}: {a}={size} is outside the exported profile "
                                        f"[{env[a].min}, {env[a].max}]")
        return seen

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GraphSpec":
        def tensors(items):
            return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["axes"])) for t in items)

        profiles = tuple(Profile(p["name"], tuple(Dim(**x) for x in p["dims"])) for p in d["profiles"])
        return cls(d["name"], tensors(d["inputs"]), tensors(d["outputs"]), profiles, dict(d.get("attrs", {})))

    def with_dtypes(self, dtypes: dict[str, str]) -> "GraphSpec":
        """The same graph with some tensors retyped (precision graphs that change I/O types)."""
        def retype(items):
            return tuple(TensorSpec(t.name, dtypes.get(t.name, t.dtype), t.axes) for t in items)

        return GraphSpec(self.name, retype(self.inputs), retype(self.outputs), self.profiles, self.attrs)


def kv_names(kind: str, layers: int) -> list[str]:
    """The one template for per-layer cache tensors: ``past_key.{i}``, ``new_value.{i}``, ..."""
    return [f"{kind}.{i}" for i in range(layers)]


def export_sizes(spec: GraphSpec) -> dict[str, int]:
    """Example sizes to trace with: inside each dim's envelope, never 0 or 1, distinct where the range allows
    (tracers specialise 0/1 and may merge dims that happen to be equal). ``attrs['derived']`` maps a dim to
    (base dim, factor) and is honoured."""
    derived = spec.attrs.get("derived", {})
    sizes: dict[str, int] = {}
    for name, dim in spec.envelope().items():
        if name in derived:
            continue
        size = min(max(dim.opt, dim.min, 2), dim.max)
        while size in sizes.values() and size < dim.max:
            size += 1
        sizes[name] = size
    for name, (base, factor) in derived.items():
        sizes[name] = sizes[base] * factor
    return sizes


def sample_feeds(spec: GraphSpec, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shape-correct random inputs: floats ~ N(0,1), integers and booleans in {0, 1}."""
    feeds = {}
    for t in spec.inputs:
        shape = t.shape(sizes)
        if t.dtype == "bool":
            feeds[t.name] = rng.random(shape) < 0.5
        elif t.dtype.startswith("int"):
            feeds[t.name] = rng.integers(0, 2, shape).astype(t.np_dtype)
        else:
            feeds[t.name] = rng.standard_normal(shape).astype(t.np_dtype)
    return feeds
