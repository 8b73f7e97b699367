"""One weight-only graph pair and its recipe, and the check that both files hold the same weights (torch-free)."""
from __future__ import annotations

import importlib.metadata as md
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from nextstep_trt.core.errors import CheckFailed
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.initializers import dedupe_initializers

from .autocast import cast_summary, mixed_precision_light
from .awq import GramCollector, search_clips
from .blockquant import Quantized, from_dq, from_nbits, problems, scale_bits
from .keep import keep_fp32
from .weightonly import MS_DOMAIN, Method, Site, WeightOnlyConfig, dq_graph, nbits_graph, quantize_sites, site_record


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "unknown"


def make_pair(model: onnx.ModelProto, sites: list[Site], kept: list[dict], cfg: WeightOnlyConfig,
              grams: GramCollector | None = None) -> tuple[onnx.ModelProto, onnx.ModelProto, dict, dict]:
    """(ONNX Runtime graph, TensorRT graph, recipe, {weight: its codes}) from the fp32 graph ``model``."""
    clips, awq = None, None
    if cfg.method is Method.AWQ and grams is not None:
        from .weightonly import matmul_weight

        weights = {s.weight: matmul_weight(model, s) for s in {s.weight: s for s in sites}.values()}
        clips, awq = search_clips(grams, weights, cfg.bits)
    quantized = quantize_sites(model, sites, cfg, clips)
    ort_model = nbits_graph(model, sites, quantized, cfg.accuracy_level)
    low = mixed_precision_light(model, Precision.BF16, keep_fp32(model))   # the bf16 graph's AutoCast policy
    dropped = dedupe_initializers(low)      # AutoCast copies small weights once per use (every sampler step)
    trt_model = dq_graph(low, sites, quantized)
    recipe = base_recipe(cfg, [site_record(s, quantized[s.weight]) for s in sites], kept, bool(clips))
    recipe["deduplicated_initializers"] = dropped
    if awq is not None:
        recipe["awq"] = {"clip_ratios": "1.00..0.50 step 0.05, per block and column", "weights": awq,
                         "samples": grams.samples}
    return ort_model, trt_model, recipe, quantized


def base_recipe(cfg: WeightOnlyConfig, records: list[dict], kept: list[dict], clipped: bool) -> dict:
    """What the manifest records of how the weights were quantized (both paths)."""
    return {"tool": "nextstep-trt weight-only pass (numpy, onnx)", "bits": cfg.bits, "block_size": cfg.block,
            "method": cfg.method.value, "symmetric": True,
            "scale": f"block max|w|{' x clip ratio (awq search)' if clipped else ''} / {2 ** (cfg.bits - 1) - 1}, "
                     f"rounded up to {scale_bits(cfg.bits)} significant bits (every q*s a bfloat16 value)",
            "quantized": records, "kept_high_precision": kept,
            "weight_bytes": weight_bytes(records, cfg.bits, cfg.block),
            "not_linear": "attention MatMuls (no weights) and embeddings (Gather) stay as they are"}


def weight_bytes(records: list[dict], bits: int, block: int) -> dict:
    """Bytes of the quantized weights as stored (codes + one 2-byte scale per block) against fp32 and bf16, from the
    site records (``site_record``)."""
    n = sum(r["K"] * r["N"] for r in records)
    scales = sum(r["K"] // block * r["N"] for r in records)
    return {"weights": n, "packed": n * bits // 8 + 2 * scales, "fp32": 4 * n, "bf16": 2 * n}


def deployments(graph: str, precision: Precision, cfg: WeightOnlyConfig, accuracy_reason: str,
                trt_model: onnx.ModelProto, activations: str = "bf16 (AutoCast policy of the bf16 graph)",
                fusions: dict | None = None, kv_cache: dict | None = None) -> dict:
    """The manifest's record of the two files (hashes are in the entry's ``hashes``); ``fusions`` is the record
    of the ONNX Runtime-only rewrites (``export/ort_fusions.py``) when the ONNX Runtime graph has them, ``kv_cache``
    that of its int8 cache (``export/ort_kvcache.py``)."""
    p = Precision(precision).value
    opset = next(o.version for o in trt_model.opset_import if o.domain in ("", "ai.onnx"))
    fused = {"fusions": fusions} if fusions else {}
    if kv_cache:                        # the int8 cache: its record, and the file's cache I/O types
        fused |= {"kv_cache": {k: v for k, v in kv_cache.items() if k != "io_dtypes"},
                  "io_dtypes": kv_cache["io_dtypes"]}
    return {"onnxruntime": {"file": f"{p}/{graph}.onnx", "op": f"{MS_DOMAIN}.MatMulNBits", "activations": "fp32",
                            "accuracy_level": cfg.accuracy_level, "accuracy_level_reason": accuracy_reason, **fused},
            "tensorrt": {"file": f"{p}/{graph}.trt.onnx", "op": "DequantizeLinear(block_size) -> MatMul/Gemm",
                         "activations": activations, "scales": "bf16",
                         "opset": opset, **cast_summary(trt_model, Precision.BF16)}}


def _array(t: onnx.TensorProto, base_dir: Path | None) -> np.ndarray:
    return numpy_helper.to_array(t, str(base_dir) if base_dir else "")


def read_nbits(model: onnx.ModelProto, base_dir: Path | None = None) -> dict[str, Callable[[], Quantized]]:
    """{node: a reader of its codes and scales} for every MatMulNBits node; each reader decodes that node's bytes
    when called (external data read from ``base_dir``), so a caller holds one weight at a time."""
    inits = {i.name: i for i in model.graph.initializer}

    def reader(n: onnx.NodeProto) -> Callable[[], Quantized]:
        a = {x.name: x.i for x in n.attribute}
        return lambda: from_nbits(_array(inits[n.input[1]], base_dir), _array(inits[n.input[2]], base_dir),
                                  a["bits"], a["block_size"], a["K"])

    return {n.name: reader(n) for n in model.graph.node if n.op_type == "MatMulNBits"}


def read_dq(model: onnx.ModelProto, bits: int, base_dir: Path | None = None) -> dict[str, Callable[[], Quantized]]:
    """{consuming node: a reader of its codes and scales} for every weight DequantizeLinear, decoded when called."""
    inits = {i.name: i for i in model.graph.initializer}
    consumer = {i: n.name for n in model.graph.node for i in n.input}

    def reader(n: onnx.NodeProto) -> Callable[[], Quantized]:
        a = {x.name: x.i for x in n.attribute}
        return lambda: from_dq(_array(inits[n.input[0]], base_dir), _array(inits[n.input[1]], base_dir), bits,
                               a["block_size"], transposed=a.get("axis", 1) == 1)

    return {consumer[n.output[0]]: reader(n) for n in model.graph.node
            if n.op_type == "DequantizeLinear" and n.input[0] in inits}


def check_pair(ort_model: onnx.ModelProto, trt_model: onnx.ModelProto, sites: list[Site],
               weight_of: Callable[[Site], np.ndarray | None], bits: int, clipped: bool,
               base_dir: Path | None = None) -> dict:
    """Both files decoded back, site by site: the same codes and scales (so q*s is the same weight), codes and
    scales valid, each weight within its rounding bound of the fp32 weight ``weight_of(site)`` [K,N]; a
    CheckFailed naming the first problem, else a summary for the manifest."""
    nb, dq = read_nbits(ort_model, base_dir), read_dq(trt_model, bits, base_dir)
    for s in sites:
        if s.node not in nb or s.node not in dq:
            raise CheckFailed(f"{s.node}: missing from the {'ONNX Runtime' if s.node not in nb else 'TensorRT'} graph")
        a, b = nb[s.node](), dq[s.node]()
        if not (np.array_equal(a.q, b.q) and np.array_equal(a.scale, b.scale)):
            raise CheckFailed(f"{s.node}: the two deployments hold different codes or scales")
        found = problems(a, weight_of(s), clip=clipped)
        if found:
            raise CheckFailed(f"{s.node} ({', '.join(s.params)}): {found[0]}")
    return {"sites": len(sites), "same_codes_and_scales": True, "codes_in_range": True,
            "scales_positive_and_short": True,
            "rounding_bound": "every element within its block's clip range" if clipped else
            "|w - q*s| <= s/2 for every element"}
