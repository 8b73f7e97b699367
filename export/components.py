"""One object per exported graph: its torch module, its independent reference and its validation cases (torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.sampler import sample_token

from . import graphs
from .profile import SAMPLERS, DeploymentProfile, guidance_of, sampler_of
from .spec import GraphSpec, kv_names

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    label: str
    feeds: Feeds


def _run_module(module: torch.nn.Module, spec: GraphSpec, feeds: Feeds) -> Feeds:
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names])
    out = out if isinstance(out, (tuple, list)) else (out,)
    return {n: t.float().numpy() for n, t in zip(spec.output_names, out)}


# --- backbone --------------------------------------------------------------------------------------------------------

def backbone_feeds(bundle: ModelBundle, spec: GraphSpec, rows: int, seq: int, past: int,
                   rng: np.random.Generator) -> Feeds:
    """Realistic inputs: left pads in a fresh prompt, invalid leading cache slots, positions after the past."""
    cfg = bundle.config
    bb = cfg.backbone
    token_mask = np.ones((rows, seq), np.int64)
    past_mask = np.ones((rows, past), np.int64)
    for r in range(rows):
        if past == 0:
            token_mask[r, : min(r, seq - 1)] = 0          # row r has r left pads
        else:
            past_mask[r, : min(r, past - 1)] = 0
    feeds = {"input_ids": rng.integers(0, bb.vocab_size, (rows, seq)).astype(np.int64),
             "image_tokens": rng.standard_normal((rows, seq, cfg.token_dim)).astype(np.float32),
             "image_mask": rng.random((rows, seq)) < 0.3,
             "position_ids": np.broadcast_to(past + np.arange(seq, dtype=np.int64), (rows, seq)).copy(),
             "token_mask": token_mask, "past_mask": past_mask}
    for name in kv_names("past_key", bb.num_layers) + kv_names("past_value", bb.num_layers):
        feeds[name] = rng.standard_normal((rows, bb.num_kv_heads, past, bb.head_dim)).astype(np.float32)
    return feeds


CASE_ROWS = 4   # the larger batch size validation tries, inside the exported range


def case_sizes(spec: GraphSpec, dim: str) -> list[int]:
    """The sizes of a batch-like dim that level-1 cases use: its min and min(CASE_ROWS, its max) over the spec's
    profiles, so validation, calibration and bench stay inside whatever profile was exported."""
    dims = [p.dim(dim) for p in spec.profiles if dim in {d.name for d in p.dims}]
    lo, hi = min(d.min for d in dims), max(d.max for d in dims)
    return sorted({lo, max(lo, min(CASE_ROWS, hi))})


def backbone_cases(bundle, spec, profile, rng) -> list[Case]:
    cap, seq_max = spec.attrs["kv_capacity"], spec.attrs["max_prompt_tokens"]
    shapes = [(1, 0), (min(7, seq_max), 0), (seq_max, 0), (1, 1), (1, cap // 2), (1, cap - 1),
              (min(7, seq_max), cap // 2)]
    shapes = list(dict.fromkeys(shapes))                       # a short profile repeats some shapes
    return [Case(f"rows={rows} seq={seq} past={past}", backbone_feeds(bundle, spec, rows, seq, past, rng))
            for rows in case_sizes(spec, "rows") for seq, past in shapes]


# --- head -----------------------------------------------------------------------------------------------------------

def head_step_cases(bundle, spec, profile, rng) -> list[Case]:
    cfg = bundle.config
    out = []
    for rows in case_sizes(spec, "rows"):
        feeds = {"x": rng.standard_normal((rows, cfg.token_dim)).astype(np.float32),
                 "t": rng.random(rows).astype(np.float32),
                 "cond": rng.standard_normal((rows, cfg.backbone.hidden_size)).astype(np.float32)}
        out.append(Case(f"rows={rows}", feeds))
    return out


def head_sampler_cases(bundle, spec, profile, rng) -> list[Case]:
    cfg, guidance = bundle.config, guidance_of(spec)
    steps = sampler_of(spec).steps
    out = []
    for batch in case_sizes(spec, "batch"):
        feeds = {"cond": rng.standard_normal((guidance.rows * batch, cfg.backbone.hidden_size)).astype(np.float32),
                 "noise": rng.standard_normal((steps + 1, batch, cfg.token_dim)).astype(np.float32)}
        if guidance.rows > 1:
            feeds["cfg"] = rng.uniform(1.0, 8.0, batch).astype(np.float32)
        if guidance.rows > 2:
            feeds["cfg_img"] = rng.uniform(1.0, 3.0, batch).astype(np.float32)
        out.append(Case(f"batch={batch}", feeds))
    return out


def head_sampler_reference(bundle, spec, feeds: Feeds) -> Feeds:
    """The reference sampler, step by step with full head calls (not the hoisted graph module)."""
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        token = sample_token(bundle.model.image_head, t["cond"], t["noise"], sampler_of(spec), guidance_of(spec),
                             t.get("cfg"), t.get("cfg_img"))
    return {"token": token.numpy()}


# --- VAE ------------------------------------------------------------------------------------------------------------

def vae_cases(bundle, spec, profile: DeploymentProfile, rng) -> list[Case]:
    cfg, f = bundle.config, bundle.config.vae.downsample
    out = []
    for h, w in profile.resolutions:
        for batch in case_sizes(spec, "batch"):
            if spec.name == "vae_decoder":
                feeds = {"latents": rng.standard_normal((batch, cfg.latent_channels, h // f, w // f)).astype(np.float32)}
            else:
                feeds = {"image": rng.uniform(-1, 1, (batch, cfg.vae.in_channels, h, w)).astype(np.float32)}
            out.append(Case(f"batch={batch} {h}x{w}", feeds))
    return out


# A cosine over a few dozen values scatters from one random draw to the next as much as fp8 rounding moves it
# (a 16-value sampler token: 0.9976-0.9999 over 30 draws): level-1 cases are drawn again until each case shape
# has produced at least this many values of its smallest output (at most MAX_DRAWS draws).
DRAW_ELEMENTS = 1024
MAX_DRAWS = 16


def _draws(spec: GraphSpec, feeds: Feeds) -> int:
    """Draws of one case: outputs with a dim the inputs do not set (a VAE's image size) are large and not counted."""
    sizes = spec.check_inputs(feeds)
    known = [t for t in spec.outputs if all(not isinstance(a, str) or a in sizes for a in t.axes)]
    smallest = min((int(np.prod(s)) for s in spec.shapes(sizes, known).values()), default=DRAW_ELEMENTS)
    return int(min(MAX_DRAWS, max(1, -(-DRAW_ELEMENTS // max(smallest, 1)))))


@dataclass(frozen=True)
class Component:
    name: str
    module: Callable[[ModelBundle, GraphSpec], torch.nn.Module]
    cases: Callable[..., list[Case]]
    reference: Callable[[ModelBundle, GraphSpec, Feeds], Feeds] | None = None   # default: run the module in torch

    def level1_cases(self, bundle: ModelBundle, spec: GraphSpec, profile: DeploymentProfile,
                     rng: np.random.Generator, redraw: bool = True) -> list[Case]:
        """The validation cases, then (``redraw``: for bounds on a mean over cases) fresh draws (``"<label> #k"``)
        of every case whose smallest output holds fewer than DRAW_ELEMENTS values, so each case shape is judged
        on enough elements (see level1_means)."""
        first = self.cases(bundle, spec, profile, rng)
        draws = [_draws(spec, c.feeds) if redraw else 1 for c in first]
        out = list(first)
        for k in range(1, max(draws, default=1)):
            again = self.cases(bundle, spec, profile, rng)
            out += [Case(f"{c.label} #{k + 1}", c.feeds) for c, n in zip(again, draws) if k < n]
        return out

    def level1_references(self, bundle: ModelBundle, spec: GraphSpec, profile: DeploymentProfile,
                          rng: np.random.Generator, progress: Callable[[str], None] | None = None,
                          redraw: bool = True):
        """(label, inputs, reference outputs) of every level-1 case, one case at a time; ``progress`` hears
        "i/n label" before each."""
        cases = self.level1_cases(bundle, spec, profile, rng, redraw)
        for i, case in enumerate(cases, 1):
            if progress is not None:
                progress(f"{i}/{len(cases)} {case.label}")
            yield case.label, case.feeds, self.run_reference(bundle, spec, case.feeds)

    def run_reference(self, bundle: ModelBundle, spec: GraphSpec, feeds: Feeds) -> Feeds:
        if self.reference is not None:
            return self.reference(bundle, spec, feeds)
        return _run_module(self.module(bundle, spec), spec, feeds)


COMPONENTS: dict[str, Component] = {
    "backbone": Component("backbone", lambda b, s: graphs.BackboneGraph(b.model), backbone_cases),
    "head_step": Component("head_step", lambda b, s: graphs.HeadStepGraph(b.model.image_head), head_step_cases),
    **{name: Component(name, lambda b, s: graphs.HeadSamplerGraph(b.model.image_head, sampler_of(s), guidance_of(s)),
                       head_sampler_cases, head_sampler_reference) for name in SAMPLERS},
    "vae_decoder": Component("vae_decoder", lambda b, s: graphs.VaeDecoderGraph(b.vae), vae_cases),
    "vae_encoder": Component("vae_encoder", lambda b, s: graphs.VaeEncoderGraph(b.vae), vae_cases),
}
