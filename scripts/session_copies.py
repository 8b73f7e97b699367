"""Several backbone graphs (or several sessions of one) at a decode step, interleaved in this process.

    python scripts/session_copies.py MODEL PAST GRAPH [GRAPH ...]

Each GRAPH path gets its own session (give one path four times for four sessions of the same graph; a path with
"peer" in it is read as an onnxruntime-genai build). Every round times 10 steps of each session in turn (the bench's
own step: ``bench/steps.py``, batch 2, one text token over PAST cached slots); after 40 rounds it prints, per
session, the median step time at each of the 10 positions after the switch, in ms, and the overall median.

Made to measure what the bench's control sessions guard against: how much a session's place in the process alone
moves its time (README, "How much of 'ours vs the peer' is the process"). Run it with and without
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` to compare huge pages, alternating processes.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nextstep_trt.bench.steps import StepGraph, random_past
from nextstep_trt.ref.config import load_config

ROUNDS, STEPS = 40, 10


def main(argv: list[str]) -> None:
    model, past, *paths = argv
    cfg, past = load_config(Path(model)), int(past)
    graphs = [StepGraph(f"{i}:{p}", "peer" if "peer" in p else "ours", "-", Path(p), cfg) for i, p in enumerate(paths)]
    kv, ids = random_past(cfg, 2, past, 0), np.array([[5], [6]], np.int64)
    for g in graphs:
        g.bind(kv, past, ids)
        g.run()
    times = {g.label: [[] for _ in range(STEPS)] for g in graphs}
    for _ in range(ROUNDS):
        for g in graphs:
            for k in range(STEPS):
                start = time.perf_counter()
                g.run()
                times[g.label][k].append(time.perf_counter() - start)
    for label, by_step in times.items():
        medians = " ".join(f"{statistics.median(t) * 1e3:.2f}" for t in by_step)
        overall = statistics.median(t for step in by_step for t in step) * 1e3
        print(f"{label}: {overall:.2f} ms  (by step after the switch: {medians})")


if __name__ == "__main__":
    main(sys.argv[1:])
