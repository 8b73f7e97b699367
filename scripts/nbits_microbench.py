"""MatMulNBits (int8/int4, accuracy level 1 and 4) against fp32 MatMul at a few shapes, one thread, on this CPU.

    python scripts/nbits_microbench.py [M,K,N ...]        (default: the bench head's and Large head's linears)

Each graph chains the same linear 10 times (K = N) so a call is not all session overhead; prints microseconds per
linear. The weights are quantized by the project's own blockquant (block 32), as `quantize` does.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import helper, numpy_helper

from nextstep_trt.engines.precision.blockquant import nbits, quantize

CHAIN, CALLS, BLOCK = 10, 2000, 32
SHAPES = [(2, 192, 192), (2, 1536, 1536), (8, 1536, 1536)]


def _session(nodes, inits, m: int, k: int, n: int) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [m, k])],
                              [helper.make_tensor_value_info(nodes[-1].output[0], 1, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _us_per_linear(session: ort.InferenceSession, x: np.ndarray, calls: int) -> float:
    for _ in range(50):
        session.run(None, {"x": x})
    start = time.perf_counter()
    for _ in range(calls):
        session.run(None, {"x": x})
    return (time.perf_counter() - start) / calls / CHAIN * 1e6


def measure(m: int, k: int, n: int, calls: int = CALLS) -> dict[str, float]:
    """{variant: microseconds per linear} for an [m,k] x [k,n] linear (k == n: chained)."""
    assert k == n, "the chain needs square linears"
    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((k, n)).astype(np.float32), rng.standard_normal((m, k)).astype(np.float32)
    ins = ["x"] + [f"y{i}" for i in range(CHAIN - 1)]
    fp32 = [helper.make_node("MatMul", [a, "w"], [f"y{i}"]) for i, a in enumerate(ins)]
    out = {"fp32 MatMul": _us_per_linear(_session(fp32, [numpy_helper.from_array(w, "w")], m, k, n), x, calls)}
    for bits in (8, 4):
        b, s = nbits(quantize(w, bits, BLOCK))
        inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(s, "s")]
        for level in (1, 4):
            nodes = [helper.make_node("MatMulNBits", [a, "b", "s"], [f"y{i}"], domain="com.microsoft", K=k, N=n,
                                      bits=bits, block_size=BLOCK, accuracy_level=level) for i, a in enumerate(ins)]
            out[f"int{bits} level {level}"] = _us_per_linear(_session(nodes, inits, m, k, n), x, calls)
    return out


def main(args: list[str]) -> None:
    shapes = [tuple(int(v) for v in a.split(",")) for a in args] or SHAPES
    for m, k, n in shapes:
        calls = max(20, CALLS * 192 * 192 // (k * n))
        row = measure(m, k, n, calls)
        print(f"M={m} K={k} N={n}: " + ", ".join(f"{name} {us:.1f} us" for name, us in row.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
