"""Trace a graph whose weights never exist in memory: modules on the meta device, initializers as external data.

``torch.export.export`` on meta tensors, then ``torch.onnx.export(ep, dynamo=True, optimize=False)`` gives an ONNX IR
model whose initializers are named by state-dict key and hold no data (the default optimizer fails on meta tensors;
a folding pass that leaves weights alone runs instead). Each initializer is then pointed at its bytes by name.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from nextstep_trt.core.errors import UserError

from .exporter import _name_output_dims, dynamic_shapes, example_args
from .external import ONNX_TO_TORCH, Placement, StoredTensor, checkpoint_key, place_weights
from .spec import GraphSpec, export_sizes

KEEP_METADATA = ("pkg.torch.onnx.name_scopes",)     # module path of each node: finds one layer's nodes later


class CastIO(nn.Module):
    """Runs ``inner`` (already in ``dtype``) behind the spec's float32 inputs and outputs."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner, self.dtype = inner, dtype

    @property
    def onnx_rewrites(self) -> tuple:
        return getattr(self.inner, "onnx_rewrites", ())

    def forward(self, *args):
        out = self.inner(*[a.to(self.dtype) if a.is_floating_point() else a for a in args])
        if isinstance(out, (tuple, list)):
            return tuple(o.float() if o.is_floating_point() else o for o in out)
        return out.float()


def trace_meta(module: nn.Module, spec: GraphSpec, opset: int):
    """(ONNX IR model without weight data, example sizes, seconds) of a module whose parameters are on meta."""
    import logging

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    sizes = export_sizes(spec)
    args = tuple(a.to("meta") for a in example_args(spec, sizes))
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module.eval(), args, dynamic_shapes=dynamic_shapes(module, spec))
        onnx_program = torch.onnx.export(program, dynamo=True, optimize=False, input_names=spec.input_names,
                                         output_names=spec.output_names, opset_version=opset, verbose=False)
    model = onnx_program.model
    fold_weight_free(model)
    for rewrite in getattr(module, "onnx_rewrites", ()):      # e.g. fused q/k/v: Concat nodes of the checkpoint tensors
        rewrite(model)
    return model, sizes, time.perf_counter() - start


def fold_weight_free(model) -> None:
    """Constant-fold the shape and mask arithmetic (TensorRT needs e.g. ReduceMean axes as constants) without
    touching a weight: nodes reading an initializer are never folded, so weights keep their checkpoint names.
    onnxscript's full ``optimize`` cannot run here: its rewrite rules and initializer deduplication read values."""
    import onnx_ir as ir
    from onnx_ir.passes import common
    from onnxscript.optimizer import constant_folding

    weights = set(model.graph.initializers)

    def should_fold(node) -> bool | None:
        return False if any(v is not None and v.name in weights for v in node.inputs) else None

    fold = constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=8192,
                                              output_size_limit=262144, should_fold=should_fold)
    ir.passes.Sequential(ir.passes.PassManager([fold, common.RemoveUnusedNodesPass()], steps=2, early_stop=True),
                         common.CommonSubexpressionEliminationPass())(model)


def _on_meta(tensor) -> bool:
    raw = getattr(tensor, "raw", None)
    return isinstance(raw, torch.Tensor) and raw.device.type == "meta"


def _wanted(model, graph: str, stored: dict[str, StoredTensor]) -> list[tuple[str, str, torch.dtype]]:
    """(initializer, checkpoint key, dtype) for every initializer; each must be a checkpoint tensor of its shape."""
    out = []
    for name, value in model.graph.initializers.items():
        key = checkpoint_key(graph, name)
        if key is None or key not in stored:
            if _on_meta(value.const_value):
                raise UserError(f"{graph}: initializer {name} is not a checkpoint tensor; it cannot be streamed")
            continue                                  # a small constant made by folding: stays in the graph
        shape = tuple(int(d) for d in value.shape)
        if shape != stored[key].shape:
            raise UserError(f"{graph}: {name} is {list(shape)} in the graph, {list(stored[key].shape)} in the checkpoint")
        out.append((name, key, ONNX_TO_TORCH[int(value.dtype)]))
    return out


def external_proto(model, spec: GraphSpec, stored: dict[str, StoredTensor], graph_dir: Path, stem: str | None = None,
                   link: bool = True) -> tuple[onnx.ModelProto, list[Placement]]:
    """Place every checkpoint initializer's bytes beside the graph (link or convert into ``<stem>.data``; ``link``
    False: always written there) and serialize the graph pointing at them; other initializers stay as they are."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(model)
    placements = place_weights(_wanted(model, spec.name, stored), stored, graph_dir, stem or spec.name, link)
    for p in placements:
        value = model.graph.initializers[p.name]
        value.const_value = ir.ExternalTensor(p.location, p.offset, p.length, value.dtype, shape=value.shape,
                                              name=p.name, base_dir=str(graph_dir))
    for node in model.graph:
        for key in [k for k in node.metadata_props if k not in KEEP_METADATA]:
            del node.metadata_props[key]
    proto = ir.serde.serialize_model(model)
    _name_output_dims(proto, spec)
    return proto, placements
