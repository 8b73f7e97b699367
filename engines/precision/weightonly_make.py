"""One weight-only graph pair and its recipe, and the check that both files hold the same weights (torch-free)."""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from nextstep_trt.core.errors import CheckFailed
from nextstep_trt.core.precision import Precision

from .autocast import cast_summary, mixed_precision
from .awq import GramCollector, search_clips
from .blockquant import Quantized, from_dq, from_nbits, problems, scale_bits
from .keep import keep_fp32
from .weightonly import MS_DOMAIN, Method, Site, WeightOnlyConfig, dq_graph, nbits_graph, quantize_sites, site_record


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "unknown"


def make_pair(model: onnx.ModelProto, source: Path, sites: list[Site], kept: list[dict], cfg: WeightOnlyConfig,
              grams: GramCollector | None = None) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, dict]:
    """(ONNX Runtime graph, TensorRT graph, recipe, {weight: its codes}) from the fp32 graph at ``source``."""
    clips, awq = None, None
    if cfg.method is Method.AWQ and grams is not None:
        from .weightonly import matmul_weight

        weights = {s.weight: matmul_weight(model, s) for s in {s.weight: s for s in sites}.values()}
        clips, awq = search_clips(grams, weights, cfg.bits)
    quantized = quantize_sites(model, sites, cfg, clips)
    ort_model = nbits_graph(model, sites, quantized, cfg.accuracy_level)
    low = mixed_precision(source, Precision.BF16, keep_fp32(model))        # the bf16 graph's AutoCast policy
    trt_model = dq_graph(low, sites, quantized)
    recipe = {"tool": "nextstep-trt weight-only pass (numpy, onnx)", "bits": cfg.bits, "block_size": cfg.block,
              "method": cfg.method.value, "symmetric": True,
              "scale": f"block max|w|{' x clip ratio (awq search)' if clips else ''} / {2 ** (cfg.bits - 1) - 1}, "
                       f"rounded up to {scale_bits(cfg.bits)} significant bits (every q*s a bfloat16 value)",
              "quantized": [site_record(s, quantized[s.weight]) for s in sites], "kept_high_precision": kept,
              "weight_bytes": weight_bytes(quantized),
              "not_linear": "attention MatMuls (no weights) and embeddings (Gather) stay as they are"}
    if awq is not None:
        recipe["awq"] = {"clip_ratios": "1.00..0.50 step 0.05, per block and column", "weights": awq,
                         "samples": grams.samples}
    return ort_model, trt_model, recipe, quantized


def weight_bytes(quantized: dict[str, Quantized]) -> dict:
    """Bytes of the quantized weights as stored (codes + one 2-byte scale per block) against fp32 and bf16."""
    n = sum(q.q.size for q in quantized.values())
    bits = next(iter(quantized.values())).bits if quantized else 0
    scales = sum(q.scale.size for q in quantized.values())
    return {"weights": n, "packed": n * bits // 8 + 2 * scales, "fp32": 4 * n, "bf16": 2 * n}


def deployments(graph: str, precision: Precision, cfg: WeightOnlyConfig, accuracy_reason: str,
                trt_model: onnx.ModelProto) -> dict:
    """The manifest's record of the two files (hashes are in the entry's ``hashes``)."""
    p = Precision(precision).value
    opset = next(o.version for o in trt_model.opset_import if o.domain in ("", "ai.onnx"))
    return {"onnxruntime": {"file": f"{p}/{graph}.onnx", "op": f"{MS_DOMAIN}.MatMulNBits", "activations": "fp32",
                            "accuracy_level": cfg.accuracy_level, "accuracy_level_reason": accuracy_reason},
            "tensorrt": {"file": f"{p}/{graph}.trt.onnx", "op": "DequantizeLinear(block_size) -> MatMul/Gemm",
                         "activations": "bf16 (AutoCast policy of the bf16 graph)", "scales": "bf16",
                         "opset": opset, **cast_summary(trt_model, Precision.BF16)}}


def read_nbits(model: onnx.ModelProto) -> dict[str, Quantized]:
    """{node: codes and scales} of every MatMulNBits node, decoded from the graph's bytes."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "MatMulNBits":
            a = {x.name: x.i for x in n.attribute}
            out[n.name] = from_nbits(numpy_helper.to_array(inits[n.input[1]]), numpy_helper.to_array(inits[n.input[2]]),
                                     a["bits"], a["block_size"], a["K"])
    return out


def read_dq(model: onnx.ModelProto, bits: int) -> dict[str, Quantized]:
    """{consuming node: codes and scales} of every weight DequantizeLinear, decoded from the graph's bytes."""
    inits = {i.name: i for i in model.graph.initializer}
    consumer = {i: n.name for n in model.graph.node for i in n.input}
    out = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            a = {x.name: x.i for x in n.attribute}
            out[consumer[n.output[0]]] = from_dq(numpy_helper.to_array(inits[n.input[0]]),
                                                 numpy_helper.to_array(inits[n.input[1]]), bits, a["block_size"],
                                                 transposed=a.get("axis", 1) == 1)
    return out


def check_pair(ort_model: onnx.ModelProto, trt_model: onnx.ModelProto, sites: list[Site],
               weights: dict[str, np.ndarray], bits: int, clipped: bool) -> dict:
    """Both files decoded back: the same codes and scales at every site (so q*s is the same weight), codes and
    scales valid, each weight within its rounding bound of the fp32 weight; a CheckFailed naming the first
    problem, else a summary for the manifest."""
    nb, dq = read_nbits(ort_model), read_dq(trt_model, bits)
    for s in sites:
        a, b = nb.get(s.node), dq.get(s.node)
        if a is None or b is None:
            raise CheckFailed(f"{s.node}: missing from the {'ONNX Runtime' if a is None else 'TensorRT'} graph")
        if not (np.array_equal(a.q, b.q) and np.array_equal(a.scale, b.scale)):
            raise CheckFailed(f"{s.node}: the two deployments hold different codes or scales")
        found = problems(a, weights.get(s.weight), clip=clipped)
        if found:
            raise CheckFailed(f"{s.node} ({', '.join(s.params)}): {found[0]}")
    return {"sites": len(sites), "same_codes_and_scales": True, "codes_in_range": True,
            "scales_positive_and_short": True,
            "rounding_bound": "every element within its block's clip range" if clipped else
            "|w - q*s| <= s/2 for every element"}
