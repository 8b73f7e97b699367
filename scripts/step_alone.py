"""One backbone graph's decode step timed alone, in this process only (no other graph interleaved).

    python scripts/step_alone.py MODEL ours|peer GRAPH [PAST ...]        (default pasts: 300 1000)

``nextstep-trt bench`` interleaves every graph in rounds, so a drift of the machine hits all alike; this script
answers the other question, how fast a graph runs when nothing else touched the caches in between. Run it once
per graph, alternating, e.g. ours then the peer's build (``ART/peer/.../int4/model.onnx``) three times. The step
is bench's own (``bench/steps.py``: batch 2 = the CFG rows, one text token over PAST cached slots, IO binding);
prints the median of 300 timed steps after 20 warm-up steps, in ms.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nextstep_trt.bench.steps import StepGraph, random_past
from nextstep_trt.ref.config import load_config

WARM, TIMED = 20, 300


def median_ms(graph: StepGraph) -> float:
    for _ in range(WARM):
        graph.run()
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        graph.run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str]) -> None:
    model, source, path, *pasts = argv
    cfg = load_config(Path(model))
    graph = StepGraph(source, source, "-", Path(path), cfg)
    ids = np.array([[5], [6]], np.int64)                            # the bench's two text tokens
    for past in [int(p) for p in pasts] or [300, 1000]:
        graph.bind(random_past(cfg, 2, past, 0), past, ids)
        print(f"{source} past {past}: {median_ms(graph):.3f} ms")


if __name__ == "__main__":
    main(sys.argv[1:])
