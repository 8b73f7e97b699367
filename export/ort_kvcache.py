"""An int8 KV cache for the ONNX Runtime backbone graph (`quantize --kv-cache int8`; torch-free).

The fused attention (``ort_attention.py``) runs ONNX Runtime's GroupQueryAttention, whose CPU kernel can keep the
cache in int8 with one static scale per channel (``k_quant_type`` / ``v_quant_type`` = PER_CHANNEL,
``kv_cache_bit_width`` = 8): it quantizes the new keys and values as it writes them and reads the int8 cache
directly. At a past of 1000 slots the bench preset's cache is 33 MB of fp32 per decode step against 61 MB of
weights (int4 and the layers kept fp32), so a 4x smaller cache is what moves a long decode step once the weights
are int4.

This is not weight-only: the cache is an activation. It is opt-in, for the ONNX Runtime file of an int4/int8
graph only (the TensorRT file keeps its cache in the graph's float type), and the graph's contract changes where
the cache crosses it: ``past_key.i`` / ``past_value.i`` in, ``new_key.i`` / ``new_value.i`` and ``present_*`` out
are int8 (the manifest's ``deployments.onnxruntime.io_dtypes``; the runtime allocates its cache from them).

* Scales: per layer, per (KV head, channel), ``2 max |x| / 127`` with ``max |x|`` over every key and value the
  reference wrote into its cache over the calibration prompts (prefill and every decode step; ``KVRangeCollector``),
  stored in the graph as ``kv_cache/key_scale.i`` / ``kv_cache/value_scale.i`` ([KVH*D] fp32). The headroom of 2
  costs one bit and keeps inputs unlike the calibration's from clipping: without it, the tiny model's level-1
  cases (random image tokens) reached 1.53x the calibrated range and failed on the clipped keys.
* Codes: ``clip(rint(x * (1/scale)), -128, 127)`` (float32 reciprocal, ties to even) -- what the kernel computes,
  to the bit (tested); a value is ``code * scale``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.core.precision import KVCache

from .spec import kv_names

QMAX = 127
HEADROOM = 2.0                   # scale = HEADROOM * calibrated max |x| / QMAX (above)
SCALE_NAME = "kv_cache/{kind}_scale.{layer}"
KINDS = ("key", "value")
Runner = Callable[[dict], dict]  # feeds -> outputs of one graph
GQA_SCALE_INPUTS = 12            # GroupQueryAttention's k_scale, v_scale input slots (com.microsoft, ORT >= 1.23)


def cache_tensors(num_layers: int) -> list[str]:
    """Every graph input/output that carries cache values: past_*, new_*, present_* of every layer."""
    return [n for role in ("past", "new", "present") for kind in KINDS for n in kv_names(f"{role}_{kind}", num_layers)]


def quantize(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 codes of ``x`` [..., KVH, C, D] with a per-channel ``scale`` [KVH*D], as the kernel writes them."""
    inv = (np.float32(1) / scale.astype(np.float32)).reshape(-1, 1, x.shape[-1])              # [KVH,1,D]
    return np.clip(np.rint(np.asarray(x, np.float32) * inv), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The values int8 codes ``q`` [..., KVH, C, D] stand for."""
    return q.astype(np.float32) * scale.astype(np.float32).reshape(-1, 1, q.shape[-1])


def scales_from_amax(amax: np.ndarray) -> np.ndarray:
    """[KVH, D] max |x| -> [KVH*D] scales with ``HEADROOM``; a channel that never moved gets a tiny positive one."""
    amax = np.maximum(np.asarray(amax, np.float32), np.float32(1e-6))
    return (HEADROOM * amax / QMAX).reshape(-1).astype(np.float32)


class KVRangeCollector:
    """Per layer and kind, the [KVH, D] max |x| over every cache the backbone is fed (a calibration consumer)."""

    def __init__(self, num_layers: int):
        self.names = {(kind, i): f"past_{kind}.{i}" for kind in KINDS for i in range(num_layers)}
        self.amax: dict[tuple[str, int], np.ndarray] = {}
        self.samples = 0

    def update(self, feeds: dict) -> None:
        for key, name in self.names.items():
            x = np.abs(np.asarray(feeds[name], np.float32))                                  # [B,KVH,C,D]
            if x.shape[2] == 0:
                continue
            m = x.max(axis=(0, 2))                                                            # [KVH,D]
            self.amax[key] = np.maximum(self.amax[key], m) if key in self.amax else m
        self.samples += 1

    def scales(self) -> dict[tuple[str, int], np.ndarray]:
        if not self.amax:
            raise ValueError("no cache seen: the calibration never fed the backbone a past")
        return {key: scales_from_amax(m) for key, m in self.amax.items()}


def quantize_cache(model: onnx.ModelProto, num_layers: int, scales: dict[tuple[str, int], np.ndarray]) -> dict:
    """In place: every fused attention node of ``model`` keeps an int8 cache with ``scales``; the graph's cache
    inputs and outputs become int8. Returns the manifest's record (with the ONNX Runtime file's ``io_dtypes``)."""
    past = kv_names("past_key", num_layers)
    gqa = {n.input[3]: n for n in model.graph.node if n.op_type == "GroupQueryAttention"}       # by its past keys
    if sorted(gqa) != sorted(past):
        raise ValueError(f"an int8 KV cache needs the fused attention in every layer (found {len(gqa)} of "
                         f"{num_layers})")
    for i in range(num_layers):
        node, names = gqa[past[i]], [SCALE_NAME.format(kind=k, layer=i) for k in KINDS]
        model.graph.initializer.extend(numpy_helper.from_array(scales[(k, i)], n) for k, n in zip(KINDS, names))
        inputs = list(node.input) + [""] * (GQA_SCALE_INPUTS + 2 - len(node.input))
        inputs[GQA_SCALE_INPUTS:GQA_SCALE_INPUTS + 2] = names
        node.input[:] = inputs
        node.attribute.extend([helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                               helper.make_attribute("kv_cache_bit_width", 8)])
    cache = set(cache_tensors(num_layers))
    retyped = [vi for vi in list(model.graph.input) + list(model.graph.output) if vi.name in cache]
    for vi in retyped:
        vi.type.tensor_type.elem_type = TensorProto.INT8
    return {"dtype": KVCache.INT8.value, "granularity": "per layer, per KV head and channel (static)",
            "scales": f"{HEADROOM:g} max |x| / {QMAX} over the calibration's caches, in the graph as {SCALE_NAME}",
            "io_dtypes": {vi.name: "int8" for vi in retyped}}


def read_scales(model: onnx.ModelProto | str | Path) -> dict[str, np.ndarray]:
    """{past_key.i / past_value.i: its [KVH*D] scale} of a graph with an int8 cache; {} for a float cache."""
    base = ""
    if not isinstance(model, onnx.ModelProto):
        base = str(Path(model).parent)                   # a big graph keeps even its scales in its external data
        model = onnx.load(str(model), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        kind, _, layer = t.name.removeprefix("kv_cache/").partition("_scale.")
        if t.name.startswith("kv_cache/") and kind in KINDS:
            out[f"past_{kind}.{layer}"] = numpy_helper.to_array(t, base)
    return out


def quantize_feeds(feeds: dict, scales: dict[str, np.ndarray]) -> dict:
    """``feeds`` with each float past cache that has a scale in ``scales`` as int8 codes."""
    return {k: quantize(v, scales[k]) if k in scales else v for k, v in feeds.items()}


def quantized_runner(run: Runner, scales: dict[str, np.ndarray]) -> Runner:
    """A float-cache runner (feeds -> outputs) in front of an int8-cache graph's ``run``: past_* quantized with the
    graph's scales on the way in, new_* / present_* dequantized on the way out -- for level 1 and the tools that
    feed the reference's float cache."""
    def layer_scale(name: str) -> np.ndarray:
        role_kind, _, layer = name.partition(".")
        return scales[f"past_{role_kind.split('_', 1)[1]}.{layer}"]

    def wrapped(feeds: dict) -> dict:
        out = {k: np.asarray(v) for k, v in run(quantize_feeds(feeds, scales)).items()}
        return {k: dequantize(v, layer_scale(k)) if v.dtype == np.int8 else v for k, v in out.items()}

    return wrapped


def level1_runner(run: Runner, scales: dict[str, np.ndarray]) -> tuple[Runner, KVCache]:
    """(runner, cache type) that level 1 checks a graph through: ``run`` itself for a float cache; for a graph with
    an int8 cache (its ``scales``) ``quantized_runner``, whose bounds are the int8 cache's rows."""
    return (quantized_runner(run, scales), KVCache.INT8) if scales else (run, KVCache.FP32)
