"""Two artifact folders side by side in the real generation loop, interleaved in this process.

    python scripts/loop_ab.py MODEL ART_A ART_B [PRECISION ...]          (default precisions: fp32 int4)

For each precision, one ONNX Runtime backend per folder; every round generates the bench's image (256x256, 50 steps,
cfg 7.5, seed 0) once with each, so a drift of the VM hits both alike. Prints per folder and precision the median
s/image and sampler ms/token over ROUNDS rounds (after one warm-up image each), fp32/PRECISION per folder, and the
PSNR of A's image against B's. Made to measure a graph change (e.g. the fused sampler's form) with everything else
equal: ``nextstep-trt bench`` compares precisions, not two exports.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from nextstep_trt.core.metrics import psnr
from nextstep_trt.core.precision import Precision
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.runtime.api import model_tokenizer
from nextstep_trt.runtime.loop import Request, run_request
from nextstep_trt.runtime.ort_backend import OrtBackend

ROUNDS = 4
PROMPT = "a photo of a red fox sitting in the snow, morning light"


class Timed:
    """A backend whose sample() calls are timed."""

    def __init__(self, art: str, precision: str):
        self.backend = OrtBackend(art, Precision(precision))
        self.sample_s: list[float] = []
        self.image_s: list[float] = []
        inner = self.backend.sample

        def sample(*args):
            start = time.perf_counter()
            out = inner(*args)
            self.sample_s.append(time.perf_counter() - start)
            return out

        self.backend.sample = sample

    def generate(self, tokenizer, req: Request) -> np.ndarray:
        start = time.perf_counter()
        image = run_request(self.backend, tokenizer, req)
        self.image_s.append(time.perf_counter() - start)
        return image


def main(argv: list[str]) -> None:
    model, a, b, *precisions = argv
    cells = {(art, p): Timed(art, p) for p in precisions or ["fp32", "int4"] for art in (a, b)}
    tokenizer = model_tokenizer(model, next(iter(cells.values())).backend.config)
    req = Request([PROMPT], GenerationOptions(height=256, width=256, steps=50, cfg=7.5, seed=0))
    images = {key: cell.generate(tokenizer, req) for key, cell in cells.items()}          # warm-up
    for cell in cells.values():
        cell.sample_s.clear()
        cell.image_s.clear()
    for _ in range(ROUNDS):
        images = {key: cell.generate(tokenizer, req) for key, cell in cells.items()}
    for (art, p), cell in cells.items():
        print(f"{art} {p}: {np.median(cell.image_s):.3f} s/image, sampler {np.median(cell.sample_s) * 1e3:.3f} "
              f"ms/token; rounds {', '.join(f'{t:.2f}' for t in cell.image_s)}")
    for p in {p for _, p in cells} - {"fp32"}:
        for art in (a, b):
            if (art, "fp32") in cells:
                ratios = np.array(cells[(art, "fp32")].image_s) / np.array(cells[(art, p)].image_s)
                print(f"{art}: fp32/{p} s/image per round {np.round(ratios, 3).tolist()}, median {np.median(ratios):.3f}")
    for p in {p for _, p in cells}:
        print(f"{p}: image of {a} vs {b}: PSNR {psnr(images[(a, p)], images[(b, p)]):.1f} dB")


if __name__ == "__main__":
    main(sys.argv[1:])
