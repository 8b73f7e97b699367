"""The Python cost of one decode step through the ONNX Runtime backend, beside the session's own run.

    python scripts/call_overhead.py ART [PRECISION] [TOKENS]        (defaults: int4, 256)

Opens ``OrtBackend(ART, PRECISION)``, prefills a 20-token prompt for the 2 CFG rows, then makes TOKENS decode calls
``backend.backbone(...)`` as the generation loop does, timing each call and, inside it, the session's
``run_with_iobinding``. Prints the medians (after 20 warm-up calls) and their difference: what the backend's
Python (input checks, bindings, the cache write, the copy of ``cond``) adds to every step.
"""
from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from nextstep_trt.core.precision import Precision
from nextstep_trt.runtime.ort_backend import OrtBackend

PROMPT, ROWS, WARM = 20, 2, 20


def main(argv: list[str]) -> None:
    art, precision, tokens = argv[0], Precision(argv[1] if len(argv) > 1 else "int4"), int(argv[2] if len(argv) > 2
                                                                                             else 256)
    with OrtBackend(art, precision) as be:
        cfg = be.config
        be.start(ROWS, PROMPT + tokens)
        be.backbone(np.full((ROWS, PROMPT), 5, np.int64), np.zeros((ROWS, PROMPT, cfg.token_dim), np.float32),
                    np.zeros((ROWS, PROMPT), bool), np.tile(np.arange(PROMPT), (ROWS, 1)),
                    np.ones((ROWS, PROMPT), np.int64))
        session, runs = be.session("backbone"), []
        inner = session.run_with_iobinding

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            runs.append(time.perf_counter() - start)
            return out

        session.run_with_iobinding = timed
        ids, ones, calls = np.full((ROWS, 1), 7, np.int64), np.ones((ROWS, 1), np.int64), []
        for k in range(tokens - 1):
            start = time.perf_counter()
            be.backbone(ids, np.zeros((ROWS, 1, cfg.token_dim), np.float32), ones.astype(bool),
                        np.full((ROWS, 1), PROMPT + k, np.int64), ones)
            calls.append(time.perf_counter() - start)
    calls, runs = calls[WARM:], runs[WARM:]
    extra = statistics.median(c - r for c, r in zip(calls, runs))
    print(f"{precision.value}: backbone() {statistics.median(calls) * 1e3:.3f} ms, session run "
          f"{statistics.median(runs) * 1e3:.3f} ms, Python around it {extra * 1e6:.0f} us a step")


if __name__ == "__main__":
    main(sys.argv[1:])
