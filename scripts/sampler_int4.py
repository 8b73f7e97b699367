"""The fused sampler at fp32 against its int4 (or int8) MatMulNBits graph, one token per call, interleaved rounds.

    python scripts/sampler_int4.py MODEL_DIR ARTIFACTS [rounds] [bits] [block]      (defaults: 5 rounds, 4 bits, 32)

ARTIFACTS holds an fp32 ``head_sampler`` (``export``, or ``export --low-memory --dtype fp32 --graphs head_sampler``
for Large). The int4/int8 graph is made here by the quantize path's own functions (keep-list, RTN at the given
block, accuracy level 4) into a temporary folder — only the ONNX Runtime half, without the TensorRT half's AutoCast or the level-1
validation (for Large's head_sampler: about a minute, where the whole ``quantize --low-memory`` takes 15). Prints
ms per token for both, the paired speed-up, and the low-bit token's cosine / rel-L2 against fp32's on the same
inputs.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from nextstep_trt.engines.precision.weightonly import (WEIGHT_ONLY_EXCLUDE, Method, WeightOnlyConfig, choose_sites,
                                                       nbits_graph, quantize_sites)
from nextstep_trt.export.lowmem import open_checkpoint, small_bundle
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.ort_session import make_session
from nextstep_trt.export.profile import sampler_of


def nbits_sampler(model_dir: Path, fp32: Path, out: Path, bits: int, block: int) -> Path:
    cfg, sources = open_checkpoint(model_dir)
    bundle = small_bundle(cfg, sources, torch.float32, ["head_sampler"])
    params = {k: v.detach().float().numpy() for k, v in bundle.model.state_dict().items() if v.device.type != "meta"}
    model = onnx.load(fp32)
    sites, _ = choose_sites(model, params, WEIGHT_ONLY_EXCLUDE, block)
    quantized = quantize_sites(model, sites, WeightOnlyConfig(bits, block, Method.RTN, 4))
    onnx.save(nbits_graph(model, sites, quantized, 4), out, save_as_external_data=True, location=f"{out.name}.data")
    return out


def main(model_dir: str, artifacts: str, rounds: str = "5", bits: str = "4", block: str = "32") -> None:
    manifest = Manifest.load(artifacts)
    fp32 = manifest.path("head_sampler")
    spec = manifest.spec("head_sampler")
    with tempfile.TemporaryDirectory() as tmp:
        low = f"int{bits}"
        paths = {"fp32": fp32, low: nbits_sampler(Path(model_dir), fp32, Path(tmp) / "head_sampler.onnx", int(bits),
                                                 int(block))}
        sessions = {k: make_session(p) for k, p in paths.items()}
        rng = np.random.default_rng(0)
        cfg = manifest.config
        feeds = {"cond": rng.standard_normal((2, cfg.head.cond_dim)).astype(np.float32),
                 "noise": rng.standard_normal((sampler_of(spec).steps + 1, 1, cfg.token_dim)).astype(np.float32),
                 "cfg": np.full(1, 7.5, np.float32)}
        token = {k: s.run(None, feeds)[0].ravel() for k, s in sessions.items()}
        a, b = token["fp32"], token[low]
        print(f"{low} token vs fp32: cosine {a @ b / np.linalg.norm(a) / np.linalg.norm(b):.6f}, "
              f"rel-L2 {np.linalg.norm(a - b) / np.linalg.norm(a):.4f}")
        times = {k: [] for k in sessions}
        for _ in range(int(rounds)):
            for k, s in sessions.items():
                start = time.perf_counter()
                s.run(None, feeds)
                times[k].append(time.perf_counter() - start)
        for k, t in times.items():
            print(f"{k}: {statistics.median(t) * 1e3:.0f} ms per token (rounds {[round(x * 1e3) for x in t]})")
        pairs = [f / i for f, i in zip(times["fp32"], times[low])]
        print(f"{low} (block {block}) speed-up, paired by round: {statistics.median(pairs):.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
