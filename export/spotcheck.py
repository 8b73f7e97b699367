"""Numeric spot checks that run at any model size: one decoder layer cut out of the backbone graph, the head and the
VAE at 64x64, each run in ONNX Runtime against the torch reference built from the same checkpoint weights.

Only the extracted layer's weights are read. ONNX Runtime on the CPU has no bfloat16 kernels, so a bf16 graph is
widened first (bf16 initializers, casts and types become float32): that checks its wiring and weights exactly,
against a float32 reference whose weights are rounded through bf16, but not bf16 rounding itself.
"""
from __future__ import annotations

import ast
import contextlib
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper
from onnx.external_data_helper import set_external_data

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.metrics import compare
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport, ParityRow
from nextstep_trt.core.tolerances import BF16_WIDENED, graph_bound, spot_bound
from nextstep_trt.ref.config import NextStepConfig, load_config

from .external import ONNX_TO_TORCH, checkpoint_key
from .initializers import tensor_bytes
from .sources import WeightSources

SCOPES = "pkg.torch.onnx.name_scopes"


def _widen_tensor(t: TensorProto) -> None:
    arr = numpy_helper.to_array(t).astype(np.float32)
    t.CopyFrom(numpy_helper.from_array(arr, t.name))


def widen_bf16(model: onnx.ModelProto) -> int:
    """In place: bfloat16 initializers, constants, casts and declared types become float32; returns how many."""
    bf16, n = TensorProto.BFLOAT16, 0
    for t in model.graph.initializer:
        if t.data_type == bf16:
            _widen_tensor(t)
            n += 1
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.INT and a.name in ("to", "dtype") and a.i == bf16:
                a.i, n = TensorProto.FLOAT, n + 1
            elif a.type == onnx.AttributeProto.TENSOR and a.t.data_type == bf16:
                _widen_tensor(a.t)
                n += 1
    for vi in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if vi.type.tensor_type.elem_type == bf16:
            vi.type.tensor_type.elem_type, n = TensorProto.FLOAT, n + 1
    return n


def graph_dtype(model: onnx.ModelProto, graph: str) -> torch.dtype:
    """The dtype of the graph's checkpoint weights (float32 when it has none)."""
    for t in model.graph.initializer:
        if checkpoint_key(graph, t.name) is not None and t.data_type in ONNX_TO_TORCH:
            return ONNX_TO_TORCH[t.data_type]
    return torch.float32


def _weight_bytes(t: TensorProto, graph_dir: Path) -> bytes:
    """An initializer's bytes, bf16 widened to float32 (exactly: bf16 is the top half of a float32)."""
    data = b"".join(tensor_bytes(t, graph_dir))
    if t.data_type != TensorProto.BFLOAT16:
        return data
    return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).tobytes()


@contextlib.contextmanager
def ort_session(model: onnx.ModelProto, graph_dir: Path) -> Iterator:
    """ONNX Runtime on a copy of ``model`` (bf16 widened to float32) whose weights are written to a temporary
    folder: serializing a 1 GB protobuf in memory would cost several times the weights (measured 4.5 GB)."""
    import onnxruntime as ort

    tmp = Path(tempfile.mkdtemp(prefix="nextstep-spot-"))
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        with open(tmp / "weights.data", "wb") as f:
            for t in copy.graph.initializer:
                if t.data_location != TensorProto.EXTERNAL and t.data_type != TensorProto.BFLOAT16:
                    continue
                data = _weight_bytes(t, graph_dir)
                t.data_type = TensorProto.FLOAT if t.data_type == TensorProto.BFLOAT16 else t.data_type
                f.write(b"\0" * (-f.tell() % 4096))
                t.raw_data = b"\0"                      # set_external_data wants a raw_data field to replace
                set_external_data(t, "weights.data", f.tell(), len(data))
                t.ClearField("raw_data")
                f.write(data)
        widen_bf16(copy)
        onnx.save(copy, tmp / "model.onnx")
        del copy
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.disable_prepacking", "1")    # no second copy of every weight
        yield ort.InferenceSession(str(tmp / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_graph(model: onnx.ModelProto, graph_dir: Path, feeds: dict[str, np.ndarray],
              outputs: list[str]) -> list[np.ndarray]:
    """Outputs of ``model`` in ONNX Runtime; feeds it does not take are ignored (a graph with ONNX Runtime's fused
    attention runs a call that continues a cache row by row: ``run_rows``)."""
    from .ort_attention import is_fused, run_rows

    with ort_session(model, graph_dir) as session:
        names = {i.name for i in session.get_inputs()}

        def once(f: dict) -> dict:
            return dict(zip(outputs, session.run(outputs, {k: v for k, v in f.items() if k in names})))

        got = run_rows(once, feeds) if is_fused(model) else once(feeds)
        return [got[o] for o in outputs]


def _reference(module_cls, cfg, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A reference module holding exactly ``state`` (built on the meta device: no random init, no second copy)."""
    with torch.device("meta"):
        module = module_cls(cfg)
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _rows(report: ParityReport, graph: str, dtype: torch.dtype, case: str, ref: dict, got: dict,
          quantized: Precision | None = None) -> ParityReport:
    label = "fp32" if dtype == torch.float32 else "bf16w"        # bf16w: widened to float32 for ORT
    bound = graph_bound(graph, Precision.FP32) if dtype == torch.float32 else BF16_WIDENED
    if quantized is not None:                                    # int8/int4 weights: the quantization's own bound
        label, bound = f"{Precision(quantized).value}/{label}", spot_bound(quantized)
    for name in ref:
        m = compare(ref[name], got[name])
        report.add(ParityRow(1, graph, label, case, name, m, bound, bound.violations(m)))
    return report


def _scopes(node: onnx.NodeProto) -> list[str]:
    for p in node.metadata_props:
        if p.key == SCOPES:
            return ast.literal_eval(p.value)
    return []


def extract_layer(model: onnx.ModelProto, k: int, hidden: int) -> tuple[onnx.ModelProto, str, str]:
    """(sub-model, input hidden state, output hidden state) of decoder layer k, cut out by module scope."""
    inside = [n for n in model.graph.node if any(s.removeprefix("inner.") == f"model.layers.{k}" for s in _scopes(n))]
    if not inside:
        raise UserError(f"backbone graph has no nodes of layer {k} (no '{SCOPES}' metadata?)")
    made = {o for n in inside for o in n.output}
    producers = {o: n for n in model.graph.node for o in n.output}
    info = {v.name: v for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}

    def hidden_state(name: str) -> bool:
        dims = info[name].type.tensor_type.shape.dim if name in info else []
        return len(dims) == 3 and dims[2].dim_value == hidden

    outside_uses = {i for n in model.graph.node if n.output[0] not in made for i in n.input}
    x_in = {i for n in inside for i in n.input if i not in made and i in producers
            and producers[i].op_type != "Constant" and hidden_state(i)}
    x_out = {o for o in made if o in outside_uses and hidden_state(o)}
    if len(x_in) != 1 or len(x_out) != 1:
        raise UserError(f"cannot isolate layer {k}: hidden-state inputs {sorted(x_in)}, outputs {sorted(x_out)}")
    (x_in,), (x_out,) = x_in, x_out
    inputs = [x_in] + [i.name for i in model.graph.input]
    sub = onnx.utils.Extractor(model).extract_model(inputs, [x_out, f"new_key.{k}", f"new_value.{k}"])
    used = {i for n in sub.graph.node for i in n.input}
    keep = [i for i in sub.graph.input if i.name in used]
    del sub.graph.input[:]
    sub.graph.input.extend(keep)
    foreign = [t.name for t in sub.graph.initializer if checkpoint_key("backbone", t.name) is not None
               and not checkpoint_key("backbone", t.name).startswith(f"layers.{k}.")]
    if foreign:
        raise UserError(f"layer {k} cannot be cut out alone: it also reads {', '.join(foreign[:3])}")
    return sub, x_in, x_out


def layer_check(path, model: onnx.ModelProto, sources: WeightSources, cfg: NextStepConfig, k: int,
                quantized: Precision | None = None) -> ParityReport:
    """Decoder layer k of the backbone graph against a torch DecoderLayer loaded with layer k's weights (the
    checkpoint's; for a ``quantized`` graph its own bound applies)."""
    from nextstep_trt.ref.backbone import DecoderLayer, attention_allowed, rope_cos_sin

    from .components import backbone_feeds

    bb, dtype = cfg.backbone, graph_dtype(model, "backbone")
    rng = np.random.default_rng(k)
    feeds = backbone_feeds(SimpleNamespace(config=cfg), None, 2, 3, 5, rng)
    x = rng.standard_normal((2, 3, bb.hidden_size)).astype(np.float32)
    t = {name: torch.from_numpy(v) for name, v in feeds.items()}
    layer = _reference(DecoderLayer, bb, sources.state("backbone", f"layers.{k}.", dtype))
    with torch.no_grad():                                     # the reference first, then its memory is freed
        cos, sin = rope_cos_sin(t["position_ids"], bb.head_dim, bb.rope_theta)
        allowed = attention_allowed(t["past_mask"], t["token_mask"])
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
        ref = [r.numpy() for r in layer(torch.from_numpy(x), cos, sin, bias, t[f"past_key.{k}"], t[f"past_value.{k}"])]
    del layer
    sub, x_in, x_out = extract_layer(model, k, bb.hidden_size)
    got = run_graph(sub, path.parent, feeds | {x_in: x}, [x_out, f"new_key.{k}", f"new_value.{k}"])
    names = ["hidden", f"new_key.{k}", f"new_value.{k}"]
    return _rows(ParityReport(), "backbone", dtype, f"layer {k} rows=2 seq=3 past=5",
                 dict(zip(names, ref)), dict(zip(names, got)), quantized)


def head_check(path, model: onnx.ModelProto, sources: WeightSources, cfg: NextStepConfig) -> ParityReport:
    """head_step (x, t, cond -> v) against the torch head loaded from the checkpoint."""
    from nextstep_trt.ref.head import FlowMatchingHead

    dtype = graph_dtype(model, "head_step")
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((2, cfg.token_dim)).astype(np.float32),
             "t": rng.random(2).astype(np.float32),
             "cond": rng.standard_normal((2, cfg.backbone.hidden_size)).astype(np.float32)}
    head = _reference(FlowMatchingHead, cfg.head, sources.state("head_step", "image_head.", dtype))
    with torch.no_grad():
        ref = head(*(torch.from_numpy(feeds[n]) for n in ("x", "t", "cond"))).numpy()
    del head
    got = run_graph(model, path.parent, feeds, ["v"])[0]
    return _rows(ParityReport(), "head_step", dtype, "rows=2", {"v": ref}, {"v": got})


def vae_check(graph: str, path, model: onnx.ModelProto, sources: WeightSources,
              cfg: NextStepConfig) -> ParityReport:
    """vae_decoder (8x8 latents -> 64x64 image) or vae_encoder (the reverse) against the torch VAE."""
    from nextstep_trt.ref.vae import AutoEncoder

    dtype, side, rng = graph_dtype(model, graph), 64 // cfg.vae.downsample, np.random.default_rng(2)
    if graph == "vae_decoder":
        name, out, x = "latents", "image", rng.standard_normal((1, cfg.latent_channels, side, side))
    else:
        name, out, x = "image", "latents", rng.uniform(-1, 1, (1, cfg.vae.in_channels, 64, 64))
    x = x.astype(np.float32)
    vae = _reference(AutoEncoder, cfg.vae, sources.state(graph, "", dtype))
    with torch.no_grad():
        ref = (vae.decode if graph == "vae_decoder" else vae.encode)(torch.from_numpy(x)).numpy()
    del vae
    got = run_graph(model, path.parent, {name: x}, [out])[0]
    return _rows(ParityReport(), graph, dtype, "batch=1 64x64", {out: ref}, {out: got})


def spot_check(graph: str, path, model: onnx.ModelProto, sources: WeightSources, layer: int | None = None,
               quantized: Precision | None = None) -> ParityReport:
    """The graph's numeric spot check (backbone: one layer, default the middle one; a ``quantized`` int8/int4
    backbone is held to its precision's bound); empty for the samplers."""
    cfg = load_config(sources.model_dir)
    if graph == "backbone":
        k = cfg.backbone.num_layers // 2 if layer is None else layer
        if not 0 <= k < cfg.backbone.num_layers:
            raise UserError(f"--layer {k} is outside 0..{cfg.backbone.num_layers - 1}")
        return layer_check(path, model, sources, cfg, k, quantized)
    if graph == "head_step":
        return head_check(path, model, sources, cfg)
    if graph in ("vae_decoder", "vae_encoder"):
        return vae_check(graph, path, model, sources, cfg)
    return ParityReport()
