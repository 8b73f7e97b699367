"""``quantize --sensitivity``: the level-1 error each layer type causes when it alone is quantized (torch for the
reference; the quantized graphs run in ONNX Runtime).

A layer type is the set of parameter-name globs of a linear with the layer (or block) index replaced by ``*``
(``layers.*.self_attn.o_proj.*``; a fused q/k/v linear is the three globs together). For each graph, each type is
quantized alone (RTN, the asked block size and accuracy level), the graph runs on the level-1 cases (inputs and
reference outputs computed once), and its outputs are compared with the fp32 reference: the mean cosine over
every case and output, the worst rel-L2 and the lowest cosine. The row's globs, comma separated, are a value for
``--exclude`` (which replaces the built-in keep-list: add the built-in globs you want to keep too).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnx

from nextstep_trt.core.metrics import compare
from nextstep_trt.core.precision import Precision

from .naming import check_globs
from .options import QuantizeOptions
from .ranges import Runner
from .weightonly import WEIGHT_ONLY_EXCLUDE, Method, Site, choose_sites, nbits_graph, quantize_sites

ALL = "(every quantized linear)"


def layer_type(params: tuple[str, ...]) -> str:
    """Parameter names -> their globs with layer indices as ``*``, comma separated (an ``--exclude`` value)."""
    globs = []
    for p in params:
        g = re.sub(r"(^|\.)\d+(?=\.)", r"\1*", p, count=1)          # the first index: the layer / block
        g = g.rsplit(".", 1)[0] + ".*"
        if g not in globs:
            globs.append(g)
    return ",".join(globs)


@dataclass(frozen=True)
class SensitivityRow:
    graph: str
    layer_type: str
    linears: int
    weights: int
    mean_cosine: float
    lowest_cosine: float
    worst_rel_l2: float


@dataclass
class SensitivityReport:
    precision: str
    block: int
    accuracy_level: int
    rows: list[SensitivityRow] = field(default_factory=list)

    def table(self) -> str:
        head = f"{'graph':<24} {'linears':>7} {'weights':>9} {'mean cos':>10} {'low cos':>10} {'rel_l2':>9}  layer type"
        lines = [f"sensitivity at {self.precision}, block {self.block}, accuracy level {self.accuracy_level} "
                 "(each layer type quantized alone, RTN; most sensitive first)", head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.graph[:24]:<24} {r.linears:>7} {r.weights:>9} {r.mean_cosine:10.6f} "
                         f"{r.lowest_cosine:10.6f} {r.worst_rel_l2:9.2e}  {r.layer_type}")
        lines.append("a row's layer type (comma separated) is a value for --exclude; --exclude replaces the built-in "
                     "keep-list")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"precision": self.precision, "block_size": self.block, "accuracy_level": self.accuracy_level,
                "method": "rtn", "rows": [r.__dict__ for r in self.rows]}


def _errors(model: onnx.ModelProto, precision: Precision, cases: list) -> tuple[float, float, float]:
    """(mean cosine, lowest cosine, worst rel-L2) of ``model`` over the cases, every output tensor."""
    run = Runner(model, precision).run
    cos, rel = [], []
    for _, feeds, ref in cases:
        got = run(feeds)
        for name, want in ref.items():
            m = compare(np.asarray(want, np.float32), np.asarray(got[name], np.float32))
            cos.append(m.cosine)
            rel.append(m.rel_l2)
    return float(np.mean(cos)), float(np.min(cos)), float(np.max(rel))


def graph_rows(graph: str, model: onnx.ModelProto, sites: list[Site], cfg, precision: Precision,
               cases: list) -> list[SensitivityRow]:
    """One row per layer type of one graph, plus one with every quantized linear."""
    quantized = quantize_sites(model, sites, cfg)
    groups: dict[str, list[Site]] = {}
    for s in sites:
        groups.setdefault(layer_type(s.params), []).append(s)
    groups[ALL] = sites
    rows = []
    for name, group in groups.items():
        weights = sum(quantized[w].q.size for w in {s.weight for s in group})
        mean, low, rel = _errors(nbits_graph(model, group, quantized, cfg.accuracy_level), precision, cases)
        rows.append(SensitivityRow(graph, name, len(group), weights, mean, low, rel))
    return rows


def sensitivity_report(opts: QuantizeOptions, bundle=None, log=print) -> SensitivityReport:
    """The sensitivity rows of every graph ``opts`` names (the same graphs quantize would make)."""
    from dataclasses import replace

    from nextstep_trt.core.tolerances import has_mean_bound
    from nextstep_trt.export.components import COMPONENTS
    from nextstep_trt.export.manifest import Manifest
    from nextstep_trt.ref.checkpoint import load_model

    from .run import select_graphs
    from .weightonly_run import weight_only_config

    manifest = Manifest.load(opts.artifacts)
    names = select_graphs(manifest, opts.precision, opts.graphs, log)
    bundle = bundle or load_model(opts.model_dir)
    manifest.check_model(bundle.config, opts.model_dir)
    check_globs(opts.exclude, bundle.model.state_dict().keys())
    cfg, _ = weight_only_config(replace(opts, method=Method.RTN))
    params = {k: v.detach().float().numpy() for k, v in bundle.model.state_dict().items()}
    exclude = list(opts.exclude) if opts.exclude is not None else WEIGHT_ONLY_EXCLUDE
    report = SensitivityReport(opts.precision.value, cfg.block, cfg.accuracy_level)
    for g in names:
        model = onnx.load(manifest.path(g))
        sites, _ = choose_sites(model, params, exclude, cfg.block)
        spec = manifest.spec(g)
        cases = list(COMPONENTS[g].level1_references(bundle, spec, manifest.profile, np.random.default_rng(0),
                                                     redraw=has_mean_bound(g, opts.precision)))
        log(f"{g}: {len(sites)} linears in {len({layer_type(s.params) for s in sites})} layer types, "
            f"{len(cases)} level-1 cases")
        report.rows += graph_rows(g, model, sites, cfg, opts.precision, cases)
    report.rows.sort(key=lambda r: (r.layer_type == ALL, r.mean_cosine))
    return report
