"""Two artifact folders side by side in the real generation loop, interleaved in this process.

    python scripts/loop_ab.py MODEL ART_A ART_B [PRECISION ...]          (default precisions: fp32 int4)

For each precision, one ONNX Runtime backend per folder; every round generates the bench's image (256x256, 50 steps,
cfg 7.5, seed 0) once with each, so a drift of the VM hits both alike. Prints per folder and precision the median
s/image and sampler ms/token over ROUNDS rounds (after one warm-up image each; timed by the bench's own
``LoopRunner``), fp32/PRECISION per folder, and the PSNR of A's image against B's. Made to measure a graph change
(e.g. the fused sampler's form) with everything else equal: ``nextstep-trt bench`` compares precisions, not two
exports. A and B may be the same folder (two backends of one export: how far apart two identical cells land, the
noise floor of an A/B).
"""
from __future__ import annotations

import sys

import numpy as np

from nextstep_trt.bench.loop_runner import LoopRunner
from nextstep_trt.bench.run import PROMPT
from nextstep_trt.core.metrics import psnr
from nextstep_trt.core.precision import Precision
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.runtime.api import model_tokenizer
from nextstep_trt.runtime.ort_backend import OrtBackend

ROUNDS = 4


def main(argv: list[str]) -> None:
    model, a, b, *precisions = argv
    folders = {"A": a, "B": b}                        # keyed by side, so A == B still gives two backends
    cells = {}
    for p in precisions or ["fp32", "int4"]:
        for side, art in folders.items():
            backend = OrtBackend(art, Precision(p))
            cells[(side, p)] = LoopRunner(f"{side} {p}", backend, model_tokenizer(model, backend.config), p)
    opts = GenerationOptions(height=256, width=256, steps=50, cfg=7.5, seed=0)
    for runner in cells.values():                                                      # warm-up
        runner.generate(opts, PROMPT)
    images, logs = {}, {key: [] for key in cells}
    for _ in range(ROUNDS):
        for key, runner in cells.items():
            images[key], log = runner.generate(opts, PROMPT)
            logs[key].append(log)
    image_s = {key: np.array([log.e2e for log in runs]) for key, runs in logs.items()}
    for key, runs in logs.items():
        sampler = np.median([t for log in runs for t in log.sampler])
        print(f"{key[0]} ({folders[key[0]]}) {key[1]}: {np.median(image_s[key]):.3f} s/image, "
              f"sampler {sampler * 1e3:.3f} ms/token; rounds {', '.join(f'{t:.2f}' for t in image_s[key])}")
    for p in {p for _, p in cells} - {"fp32"}:
        for side in folders:
            if (side, "fp32") in cells:
                ratios = image_s[(side, "fp32")] / image_s[(side, p)]
                print(f"{side}: fp32/{p} s/image per round {np.round(ratios, 3).tolist()}, median "
                      f"{np.median(ratios):.3f}")
    for p in {p for _, p in cells}:
        print(f"{p}: image of A vs B: PSNR {psnr(images[('A', p)], images[('B', p)]):.1f} dB")


if __name__ == "__main__":
    main(sys.argv[1:])
