"""``--method awq``: activation-aware clip ratios per weight block, from the calibration inputs (torch-free).

AWQ's clip search (``auto_clip`` in the AWQ paper's code): for each block of ``block`` input rows of each output
column, try shrinking the block's range to ``r * amax`` and keep the ratio whose quantized weights change the
layer's OUTPUT least on real activations: error ``d^T G d`` with ``d = w - Q_r(w)`` the block's weight error and
``G = sum_x x_b x_b^T`` the Gram matrix of the activations' matching block of input channels, accumulated over
every calibration input each linear sees (``GramCollector``: the reference loop's prefill, every decode step and
every sampler step; a weight shared by the fused sampler's steps sums all of them). Only the diagonal blocks of
the Gram matrix are kept (``[K/block, block, block]`` per linear, about K*block floats), so blocks are chosen
independently. The output stays plain block-wise codes and scales: both deployments, all runtimes, unchanged.

AWQ's other half, per-input-channel scales, is not done: a scale on W's rows must be undone on the activations,
by folding ``1/s`` into the op before (the RMSNorm weight, or the previous projection) or by one more Mul per
linear; the first is a graph rewrite the two deployments and the low-memory export would each need, the second
adds the kernels point 3 of issue 18 removes. On a random-weight model (no outlier channels) it has nothing to
find either: ModelOpt's awq_lite measured 7.6e-2 against RTN's 7.4e-2 (research notes).
"""
from __future__ import annotations

import numpy as np
import onnx

from .blockquant import quantize
from .ranges import Feeds, MarkedRunner
from .weightonly import Site

CLIP_RATIOS = tuple(round(1.0 - 0.05 * i, 2) for i in range(11))       # 1.00, 0.95, ..., 0.50


class GramCollector:
    """Block-diagonal Gram matrices of the activations of a graph's quantized linears over many input sets."""

    def __init__(self, model: onnx.ModelProto, sites: list[Site], block: int):
        nodes = {n.name: n for n in model.graph.node}
        inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
        self.block = block
        self.weight_of: dict[str, list[str]] = {}       # activation tensor -> the weights it multiplies
        self.k: dict[str, int] = {}
        for s in sites:
            x = nodes[s.node].input[0]
            self.weight_of.setdefault(x, []).append(s.weight)
            dims = inits[s.weight]
            self.k[s.weight] = dims[1] if s.gemm else dims[0]
        self.gram = {w: np.zeros((k // block, block, block)) for w, k in self.k.items()}
        self.rows = dict.fromkeys(self.k, 0)
        inputs = {i.name for i in model.graph.input}
        self.inputs = sorted(x for x in self.weight_of if x in inputs)          # read from the feeds as they are
        self.runner = MarkedRunner(model, sorted(x for x in self.weight_of if x not in inputs))
        self.samples = 0

    def update(self, feeds: Feeds) -> None:
        """Run the graph on one input set and add every activation's block Grams."""
        for x in self.inputs:
            self._add(x, np.asarray(feeds[x], np.float64))
        if not self.runner.tensors:
            self.samples += 1
            return
        chunks = self.runner.chunks(feeds)
        for chunk, out in zip(chunks, self.runner.run(feeds, chunks)):
            for x in chunk:
                self._add(x, np.asarray(out[x], np.float64))
        self.samples += 1

    def _add(self, x: str, value: np.ndarray) -> None:
        weights = self.weight_of[x]
        k = self.k[weights[0]]
        rows = value.reshape(-1, k // self.block, self.block)                               # [R,K/bs,bs]
        gram = np.einsum("rbi,rbj->bij", rows, rows)                                        # [K/bs,bs,bs]
        for w in set(weights):
            self.gram[w] += gram
            self.rows[w] += rows.shape[0]


def clip_ratios(w: np.ndarray, gram: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, dict]:
    """Per block and column of ``w [K,N]``: the ratio in CLIP_RATIOS with the least output error under ``gram``;
    returns the ratios [K/bs, N] and a summary (how the output error compares with plain RTN)."""
    k, n = w.shape
    blocks = w.reshape(k // block, block, n)                                                # [K/bs,bs,N]
    best_err = best = None
    rtn_err = None
    for r in CLIP_RATIOS:
        ratio = np.full((k // block, n), r, np.float32)
        d = blocks - quantize(w, bits, block, ratio).dequantize().reshape(blocks.shape)                  # [K/bs,bs,N]
        err = np.einsum("bin,bij,bjn->bn", d, gram, d)                                      # [K/bs,N]
        if rtn_err is None:
            rtn_err, best_err, best = err, err, np.full(err.shape, r, np.float32)
            continue
        better = err < best_err
        best_err, best = np.where(better, err, best_err), np.where(better, r, best)
    total_rtn, total = float(rtn_err.sum()), float(best_err.sum())
    return best.astype(np.float32), {"output_error_vs_rtn": total / total_rtn if total_rtn > 0 else 1.0,
                                     "clipped_blocks": float((best < 1.0).mean())}


def search_clips(collector: GramCollector, weights: dict[str, np.ndarray], bits: int) -> tuple[dict, dict]:
    """{weight: ratios} for every weight the collector saw activations for, and a per-weight summary."""
    clips, summary = {}, {}
    for name, w in weights.items():
        if collector.rows.get(name, 0) == 0:
            summary[name] = {"rows": 0, "note": "no calibration activation reached it: plain RTN"}
            continue
        clips[name], info = clip_ratios(w, collector.gram[name], bits, collector.block)
        summary[name] = {"rows": collector.rows[name], **info}
    return clips, summary
