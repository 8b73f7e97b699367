"""Small in-place edits of an ONNX graph for the ONNX Runtime rewrites: producers/consumers, dead-node removal, a
topological re-sort (torch-free)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class PatternError(ValueError):
    """A graph is not in the form a rewrite knows."""


def cast_to(node: onnx.NodeProto) -> int | None:
    """The element type a Cast node casts to."""
    return next((a.i for a in node.attribute if a.name == "to"), None)


class GraphIndex:
    """Producers and consumers of every tensor of a graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.inits = {i.name: i for i in graph.initializer}

    def single_use(self, tensor: str, op: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor`` when it is an ``op`` and the tensor is no graph output, else None."""
        uses = self.consumers.get(tensor, [])
        outputs = {o.name for o in self.graph.output}
        return uses[0] if len(uses) == 1 and uses[0].op_type == op and tensor not in outputs else None

    def only(self, tensor: str, op: str, layer: int) -> onnx.NodeProto:
        found = [n for n in self.consumers.get(tensor, []) if n.op_type == op]
        if len(found) != 1:
            raise PatternError(f"layer {layer}: expected one {op} reading {tensor}, found {len(found)}")
        return found[0]

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant held in the graph (an inline initializer or a Constant node), else None."""
        t = self.inits.get(name)
        if t is not None:
            return numpy_helper.to_array(t) if t.data_location != onnx.TensorProto.EXTERNAL else None
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        return None


def drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is read or a graph output, then unread initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in read for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input}
    inits = [i for i in graph.initializer if i.name in read]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def toposort(graph: onnx.GraphProto) -> None:
    """Order nodes so every input is produced before it is read (the new nodes were appended at the end); the
    original order is kept wherever it already is one."""
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    placed, order = set(), []
    for root in range(len(graph.node)):
        stack = [root]
        while stack:
            k = stack[-1]
            if k in placed:
                stack.pop()
                continue
            waiting = [producer[i] for i in graph.node[k].input if i in producer and producer[i] not in placed]
            if waiting:
                if len(stack) > len(graph.node):
                    raise PatternError(f"the rewritten graph has a cycle at {graph.node[k].name}")
                stack.extend(waiting)
                continue
            placed.add(k)
            order.append(graph.node[k])
            stack.pop()
    nodes = [onnx.NodeProto() for _ in order]
    for new, old in zip(nodes, order):
        new.CopyFrom(old)
    del graph.node[:]
    graph.node.extend(nodes)
