"""Bytes an ONNX graph's call reads from its initializers, read from the graph file's headers (torch-free)."""
from __future__ import annotations

# (op, input positions) that read one row per token of an initializer, not all of it: embedding tables, RoPE caches.
LOOKUP_INPUTS = {"Gather": (0,), "GatherBlockQuantized": (0, 1, 2), "GroupQueryAttention": (7, 8)}


def graph_stream_bytes(path, lookups: bool = False) -> int:
    """Initializer bytes one call of an ONNX graph must read: every initializer, as stored (4-bit packed weights and
    their scales included), except lookup tables whose every use is a row gather (``LOOKUP_INPUTS``); with
    ``lookups`` every initializer (what a session of the graph holds in memory)."""
    import onnx

    from nextstep_trt.export.lint import tensor_nbytes

    graph = onnx.load(str(path), load_external_data=False).graph
    full: set[str] = set()
    for node in graph.node:
        lookup = () if lookups else LOOKUP_INPUTS.get(node.op_type, ())
        full.update(name for i, name in enumerate(node.input) if name and i not in lookup)
    return sum(tensor_nbytes(t) for t in graph.initializer if t.name in full)
