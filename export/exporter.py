"""torch module + GraphSpec -> a clean ONNX file (torch.export / dynamo exporter)."""
from __future__ import annotations

import inspect
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from .initializers import dedupe_initializers
from .spec import GraphSpec, export_sizes, sample_feeds

OPSET = 18                     # builds in TensorRT-RTX at fp32 (opset 23 fused Attention does not)
PROTOBUF_LIMIT = 2**31 - 2**20  # stay clear of protobuf's 2 GB ceiling
# The exporter logs one warning per torchvision op it cannot register; torchvision is not a dependency.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def _torch_dims(spec: GraphSpec) -> dict[str, object]:
    """One torch.export Dim per named dim whose range is not a single size (those are exported static);
    derived dims are multiples of their base dim."""
    env, derived = spec.envelope(), spec.attrs.get("derived", {})
    dims = {n: torch.export.Dim(n, min=d.min, max=d.max) for n, d in env.items()
            if n not in derived and d.min < d.max}
    for name, (base, factor) in derived.items():
        if base in dims:
            dims[name] = factor * dims[base]
    return dims


def dynamic_shapes(module: torch.nn.Module, spec: GraphSpec) -> tuple:
    """Per-argument {axis: Dim}, grouped like forward's signature (a *args tail becomes one tuple)."""
    dims = _torch_dims(spec)
    per_input = [{i: dims[a] for i, a in enumerate(t.axes) if a in dims} or None for t in spec.inputs]
    params = list(inspect.signature(module.forward).parameters.values())
    if params and params[-1].kind is inspect.Parameter.VAR_POSITIONAL:
        fixed = len(params) - 1
        return tuple(per_input[:fixed]) + (tuple(per_input[fixed:]),)
    return tuple(per_input)


def example_args(spec: GraphSpec, sizes: dict[str, int], dtype: torch.dtype = torch.float32) -> tuple:
    feeds = sample_feeds(spec, sizes, np.random.default_rng(0))
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    return tuple(a.to(dtype) if a.is_floating_point() else a for a in args)


def _name_output_dims(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give graph outputs the spec's dim names (the exporter invents names like 's0*8'); single-size dims are
    written as numbers."""
    env = spec.envelope()
    for out in model.graph.output:
        axes = spec.tensor(out.name).axes
        for dim, axis in zip(out.type.tensor_type.shape.dim, axes):
            if isinstance(axis, str) and env[axis].min < env[axis].max:
                dim.dim_param = axis
            else:
                dim.dim_value = env[axis].min if isinstance(axis, str) else axis


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding, dead-node cleanup, topological sort (onnx-graphsurgeon), then shape inference."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    model = gs.export_onnx(graph)
    dedupe_initializers(model)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def trace(module: torch.nn.Module, spec: GraphSpec, opset: int = OPSET,
          dtype: torch.dtype = torch.float32) -> tuple[onnx.ModelProto, dict[str, int], float]:
    """Export ``module`` with the spec's names and dynamic dims; returns (model, example sizes, seconds)."""
    sizes = export_sizes(spec)
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), example_args(spec, sizes, dtype), dynamo=True,
                                    dynamic_shapes=dynamic_shapes(module, spec),
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    opset_version=opset, optimize=True, verbose=False)
    for rewrite in getattr(module, "onnx_rewrites", ()):      # graph rewrites the wrapper asks for (graphs.py)
        rewrite(program.model)
    model = program.model_proto
    _name_output_dims(model, spec)
    model = clean(model)
    return model, sizes, time.perf_counter() - start


def save(model: onnx.ModelProto, path: Path, external_data: bool | None = None) -> list[Path]:
    """Write ``path`` (and ``path.data`` with external weights when asked or when over 2 GB); returns the files."""
    big = model.ByteSize() > PROTOBUF_LIMIT if external_data is None else external_data
    if not big:
        onnx.save_model(model, str(path))
        return [path]
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]
