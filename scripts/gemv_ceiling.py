"""The decode step's ceiling in ONNX Runtime: a graph of nothing but the backbone's weight MatMuls (no attention, no
norms), timed at the decode step's row counts, against the copy bandwidth measured in the same run.

    python scripts/gemv_ceiling.py [--preset bench] [--rows 2,8] [--threads 0]

If this graph cannot reach a bandwidth target, no decode step built from the same MatMuls can.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nextstep_trt.bench.memory import measure_bandwidth
from nextstep_trt.ref.config import preset


def matmul_graph(path: Path, hidden: int, q: int, kv: int, inter: int, layers: int) -> int:
    """Write the graph (external data) and return its weight bytes."""
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inter), (hidden, inter),
              (inter, hidden)] * layers                                                   # [in, out] per MatMul
    rng = np.random.default_rng(0)
    inputs = {n: helper.make_tensor_value_info(f"x{n}", TensorProto.FLOAT, ["rows", n]) for n in {hidden, q, inter}}
    nodes, weights, outputs = [], [], []
    for i, (a, b) in enumerate(shapes):
        weights.append(numpy_helper.from_array(rng.standard_normal((a, b), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"x{a}", f"w{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["rows", b]))
    graph = helper.make_graph(nodes, "matmuls", list(inputs.values()), outputs, weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path,
              save_as_external_data=True, location=path.name + ".data")
    return sum(a * b * 4 for a, b in shapes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="bench")
    p.add_argument("--rows", default="2,8", help="rows per decode step (2 x images: the CFG pair)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: one per core)")
    args = p.parse_args()
    bb = preset(args.preset).backbone
    bw = measure_bandwidth(512)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmuls.onnx"
        nbytes = matmul_graph(path, bb.hidden_size, bb.num_heads * bb.head_dim, bb.num_kv_heads * bb.head_dim,
                              bb.intermediate_size, bb.num_layers)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        print(f"copy bandwidth {bw.gbps:.1f} GB/s (read-only {bw.read_gbps:.1f}); {nbytes / 2**20:.0f} MiB of weights")
        for rows in (int(r) for r in args.rows.split(",")):
            feeds = {i.name: np.ones((rows, i.shape[1]), np.float32) for i in session.get_inputs()}
            times = []
            for _ in range(20):
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            ms = statistics.median(times[4:]) * 1e3
            gbps = nbytes / ms / 1e6
            print(f"rows {rows}: {ms:.1f} ms -> {gbps:.1f} GB/s = {100 * gbps / bw.gbps:.0f}% of copy, "
                  f"{100 * gbps / bw.read_gbps:.0f}% of read-only")


if __name__ == "__main__":
    main()
