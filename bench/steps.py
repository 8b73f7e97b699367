"""The decode-step micro-benchmark: every backbone graph of the run (ours per precision, the peer's builds) on
identical inputs at fixed cache lengths, timed in interleaved rounds in this process (torch-free).

Each graph gets the same random past K/V of ``past`` slots for ``rows`` cache rows (2 = the CFG rows of one
image), the same text token at position ``past``, and one step is timed per call through IO binding with
preallocated outputs. Every graph reads its past from one buffer of ``past + 1`` slots per layer, the last one free
for the new token, as in the runtime's cache: ours with ``past_mask`` marking the ``past`` valid slots (a graph with
ONNX Runtime's fused attention gets its ``present_*`` outputs bound to that buffer, as the runtime binds them), the
peer's GroupQueryAttention graph in onnxruntime-genai's own mode, past and present sharing the buffer. Rounds interleave
the graphs (round r times ``steps`` calls of each graph in turn, in a new random order every round, seeded), so a
load change hits every graph alike and no graph always follows the same one; a round's median is one timed repeat
for the spread rule (``stability.py``).

Among the graphs are *controls* (``control_of``): a second session of a graph, the same file loaded
again, with its own weights and buffers (the bench controls our last precision and the peer's build of it). A
control's time over its twin's should be 1.00; how far it is tells how much a graph's place in this process alone
moves its time, its place in the round aside (measured on the 2-core VM: four sessions of one int4 graph in one
process were within 1-6% of each other in most processes, but 17% and 21% apart in two of eight), which bounds
every ratio with that graph in the cell. Beyond ``CONTROL_MARGIN`` the cell is flagged.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_trt.core.metrics import compare
from nextstep_trt.export.ort_attention import in_place_outputs
from nextstep_trt.export.ort_kvcache import quantize, read_scales
from nextstep_trt.export.spec import kv_names
from nextstep_trt.ref.config import NextStepConfig

from .graph_bytes import graph_stream_bytes
from .stability import LoadWatch, SpreadRule, Stability, run_stable, spread

CONTROL = "control"               # StepGraph.source of the control session
CONTROL_SUFFIX = " (control)"     # its label: the twin's label + this
CONTROL_MARGIN = 0.10             # control / twin farther from 1 than this: the cell's ratios are that uncertain


@dataclass(frozen=True)
class StepOptions:
    pasts: tuple[int, ...] = (300, 1000)
    rows: int = 2                      # cache rows: the 2 CFG rows of one image
    rounds: int = 5
    steps: int = 6                     # timed calls per graph per round
    threads: int = 0
    seed: int = 0
    rule: SpreadRule = field(default_factory=SpreadRule)


class StepGraph:
    """One backbone graph at a decode step. ``source`` is "ours" (output: cond) or "peer" (output: the final
    hidden state, mapped to cond by ``project``, our image_out_projector, so both compare on the same tensor).
    ``scales`` ({past_key.i: [KVH*D]}) quantize the shared past for a graph with an int8 cache; by default an
    int8-cache graph of ours brings its own (``export/ort_kvcache.py``)."""

    def __init__(self, label: str, source: str, precision: str, path: Path, cfg: NextStepConfig, threads: int = 0,
                 project: Callable[[np.ndarray], np.ndarray] | None = None, scales: dict | None = None,
                 layout: str | None = None):
        from nextstep_trt.export.ort_session import make_session

        self.label, self.source, self.precision, self.path, self.cfg = label, source, precision, Path(path), cfg
        self.threads, self.layout = threads, layout or source         # layout: "ours" or "peer" inputs and outputs
        self.session = make_session(path, threads=threads)
        self.project = project
        self.weight_bytes = graph_stream_bytes(path)
        self.scales = read_scales(path) if scales is None else scales   # an int8 cache: its per-layer scales
        self.kv_bytes = 0                                               # past K/V the step reads (set by bind)
        self._binding, self._out, self._keep = None, None, []

    def bind(self, past: dict[tuple[int, str], np.ndarray], position: int, ids: np.ndarray) -> None:
        """Bind this step's inputs (shared past K/V, token ``ids`` [rows,1] at ``position``) and its outputs."""
        import onnxruntime as ort

        b, rows, bb = self.session.io_binding(), ids.shape[0], self.cfg.backbone
        self._keep = []                                         # arrays the binding points into
        kv_out = (rows, bb.num_kv_heads, 1, bb.head_dim)
        buffers = {}
        for (i, kind), value in past.items():
            scale = self.scales.get(f"past_{kind}.{i}")
            value = quantize(value, scale) if scale is not None else value
            shared = np.zeros(value.shape[:2] + (position + 1, value.shape[3]), value.dtype)
            shared[:, :, :position] = value                   # [rows,KVH,past+1,D]: the new slot is written
            buffers[(i, kind)] = shared
        self.kv_bytes = sum(b[:, :, :position].nbytes for b in buffers.values())
        self._keep += list(buffers.values())
        if self.layout == "ours":
            feeds = {"input_ids": ids, "image_tokens": np.zeros((rows, 1, self.cfg.token_dim), np.float32),
                     "image_mask": np.zeros((rows, 1), bool), "position_ids": np.full((rows, 1), position, np.int64),
                     "token_mask": np.ones((rows, 1), np.int64),
                     "past_mask": (np.arange(position + 1) < position).astype(np.int64)[None].repeat(rows, 0)}
            for kind in ("key", "value"):
                feeds |= {n: buffers[(i, kind)] for i, n in enumerate(kv_names(f"past_{kind}", bb.num_layers))}
            outputs = {"cond": (rows, bb.hidden_size)}
            have = [o.name for o in self.session.get_outputs()]         # a timing variant may lack new_*
            for kind in ("key", "value"):
                outputs |= {n: kv_out for n in kv_names(f"new_{kind}", bb.num_layers) if n in have}
            for present, name in in_place_outputs(have).items():
                buf = feeds[name]
                b.bind_output(present, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
        else:
            feeds = {"input_ids": ids, "attention_mask": np.ones((rows, position + 1), np.int64)}
            for (i, kind), shared in buffers.items():
                ov = ort.OrtValue.ortvalue_from_numpy(shared)
                b.bind_ortvalue_input(f"past_key_values.{i}.{kind}", ov)
                b.bind_ortvalue_output(f"present.{i}.{kind}", ov)
                self._keep.append(ov)
            outputs = {"hidden_states": (rows, 1, bb.hidden_size)}
        for name, value in feeds.items():
            value = np.ascontiguousarray(value)
            self._keep.append(value)
            b.bind_cpu_input(name, value)
        for name, shape in outputs.items():
            dtype = np.int8 if self.scales and name.startswith("new_") else np.float32
            buf = np.empty(shape, dtype)
            self._keep.append(buf)
            b.bind_output(name, "cpu", 0, dtype, list(shape), buf.ctypes.data)
            if name in ("cond", "hidden_states"):
                self._out = buf
        self._binding = b

    def run(self) -> None:
        self.session.run_with_iobinding(self._binding)

    def output(self) -> np.ndarray:
        """cond [rows,H] of the last run."""
        out = self._out.reshape(self._out.shape[0], -1).copy()
        return self.project(out) if self.project is not None else out


@dataclass
class StepTiming:
    """One graph at one cache length."""

    label: str
    source: str
    precision: str
    past: int
    rows: int
    ms: float                            # median over every timed step of the kept attempt
    round_ms: list[float]                # each round's median
    weight_bytes: int                    # initializers the step reads (lookup tables excluded)
    kv_bytes: int                        # past K/V the step reads
    gbps: float
    fraction: float | None               # of the copy bandwidth
    read_fraction: float | None          # of the read-only bandwidth
    cosine: float | None = None          # cond vs the reference graph (ours, first precision)
    rel_l2: float | None = None
    max_abs: float | None = None

    @property
    def step_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def speedup_over(self, base: "StepTiming") -> float:
        """base's time / this one's, paired round by round (both ran in every round, one after the other), then
        the median over rounds: a drift of the machine's speed between rounds cancels out of each pair."""
        pairs = [b / o for b, o in zip(base.round_ms, self.round_ms) if o > 0]
        return statistics.median(pairs) if pairs else base.ms / self.ms


@dataclass
class StepCell:
    """Every graph at one cache length, with the cell's load and spread."""

    past: int
    timings: list[StepTiming]
    stability: Stability

    def get(self, source: str, precision: str) -> StepTiming | None:
        return next((t for t in self.timings if t.source == source and t.precision == precision), None)

    def controls(self) -> list[tuple[StepTiming, StepTiming]]:
        """(twin, control) per control session timed: its timing and the first session of the same graph."""
        twins = {t.label: t for t in self.timings if t.source != CONTROL}
        return [(twins[c.label.removesuffix(CONTROL_SUFFIX)], c) for c in self.timings
                if c.source == CONTROL and c.label.removesuffix(CONTROL_SUFFIX) in twins]

    def control_ratios(self) -> dict[str, float]:
        """{twin label: the control's time over its twin's, paired round by round} (1.00: a graph's place in the
        process does not move its time)."""
        return {twin.label: twin.speedup_over(ctl) for twin, ctl in self.controls()}

    def control_notes(self) -> list[str]:
        """A warning per control more than ``CONTROL_MARGIN`` away from its twin."""
        return [f"decode steps at past {self.past}: two sessions of one graph ({label}) ran {r:.2f}x apart in this "
                f"process (more than {CONTROL_MARGIN:.0%}): every ratio with it in this cell is uncertain by as much"
                for label, r in self.control_ratios().items() if abs(r - 1) > CONTROL_MARGIN]

    def warnings(self) -> list[str]:
        """The cell's load and spread warnings, then its controls'."""
        return self.stability.notes(f"decode steps at past {self.past}") + self.control_notes()

    def to_json(self) -> dict:
        return {"past": self.past, "timings": [asdict(t) | {"step_bytes": t.step_bytes} for t in self.timings],
                "stability": self.stability.to_json(), "control_ratios": self.control_ratios()}


def control_of(graph: StepGraph) -> StepGraph:
    """A second session of ``graph`` (the same file loaded again: its own weights, arena and buffers), labelled as
    its control."""
    return StepGraph(graph.label + CONTROL_SUFFIX, CONTROL, graph.precision, graph.path, graph.cfg, graph.threads,
                     graph.project, graph.scales, graph.layout)


def random_past(cfg: NextStepConfig, rows: int, past: int, seed: int) -> dict[tuple[int, str], np.ndarray]:
    """(layer, "key"/"value") -> [rows,KVH,past,D] standard-normal float32, the same for every graph."""
    rng, bb = np.random.default_rng(seed), cfg.backbone
    return {(i, kind): rng.standard_normal((rows, bb.num_kv_heads, past, bb.head_dim), dtype=np.float32)
            for i in range(bb.num_layers) for kind in ("key", "value")}


def round_order(graphs: list, rng: np.random.Generator) -> list:
    """The graphs in a fresh random order for one round: a graph's place in the round (what ran just before it)
    spreads over every graph instead of favouring one (measured: the two controls, always timed last, ran 15% faster
    than their twins in one run)."""
    return [graphs[i] for i in rng.permutation(len(graphs))]


def _timed_rounds(graphs: list[StepGraph], opts: StepOptions) -> tuple[float | None, dict[str, list[float]]]:
    """One attempt: (widest per-graph spread of round medians, label -> every timed step in seconds by round)."""
    steps: dict[str, list[list[float]]] = {g.label: [] for g in graphs}
    rng = np.random.default_rng(opts.seed)
    for _ in range(opts.rounds):
        for g in round_order(graphs, rng):
            times = []
            for _ in range(opts.steps):
                start = time.perf_counter()
                g.run()
                times.append(time.perf_counter() - start)
            steps[g.label].append(times)
    spreads = [spread([statistics.median(r) for r in rounds]) for rounds in steps.values()]
    known = [s for s in spreads if s is not None]
    return (max(known) if known else None), steps


def time_decode_steps(graphs: list[StepGraph], opts: StepOptions, bandwidth_gbps: float, read_gbps: float | None,
                      watch: Callable[[], LoadWatch] = LoadWatch) -> list[StepCell]:
    """Every graph at every cache length of ``opts.pasts``; outputs compared with the first "ours" graph's."""
    cfg = graphs[0].cfg
    ids = (np.arange(opts.rows, dtype=np.int64) % 7 + 5)[:, None]          # [rows,1] ordinary text tokens
    ref = next(g for g in graphs if g.source == "ours")
    cells = []
    for past in opts.pasts:
        kv = random_past(cfg, opts.rows, past, opts.seed)
        for g in graphs:
            g.bind(kv, past, ids)
            g.run()                                                  # warm-up: arena, prepacking
        outputs = {g.label: g.output() for g in graphs}
        steps, stability = run_stable(lambda: _timed_rounds(graphs, opts), opts.rule, watch)
        timings = []
        for g in graphs:
            ms = statistics.median(t for r in steps[g.label] for t in r) * 1e3
            gbps = (g.weight_bytes + g.kv_bytes) / (ms * 1e-3) / 1e9
            m = compare(outputs[ref.label], outputs[g.label])
            timings.append(StepTiming(g.label, g.source, g.precision, past, opts.rows, ms,
                                      [statistics.median(r) * 1e3 for r in steps[g.label]], g.weight_bytes,
                                      g.kv_bytes,
                                      gbps, gbps / bandwidth_gbps if bandwidth_gbps else None,
                                      gbps / read_gbps if read_gbps else None, m.cosine, m.rel_l2, m.max_abs))
        cells.append(StepCell(past, timings, stability))
    return cells
