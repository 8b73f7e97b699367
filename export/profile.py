"""The deployment profile and the graph specs it sizes (torch-free). design.md §1-2."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.sampling import Guidance, SamplerConfig, SamplerVariant

from .spec import Dim, GraphSpec, Profile, TensorSpec, kv_names

# Prompt-template tokens around the text: "<|image_area|>" + digits "rr*cc" + BOI (and EOI for an input image).
TEMPLATE_TOKENS = 16


@dataclass(frozen=True)
class SamplerGraph:
    """One fused sampler graph: the profile sampler it fixes (text-to-image or editing) and its CFG layout."""

    name: str
    edit: bool
    guidance: Guidance


# Every (task, guidance) the official pipeline can run gets its own fused graph (sampling.Guidance).
SAMPLER_GRAPHS = (
    SamplerGraph("head_sampler", False, Guidance.TEXT),
    SamplerGraph("head_sampler_nocfg", False, Guidance.NONE),
    SamplerGraph("head_sampler_edit", True, Guidance.TEXT_IMAGE),
    SamplerGraph("head_sampler_edit_text", True, Guidance.TEXT),
    SamplerGraph("head_sampler_edit_nocfg", True, Guidance.NONE),
)
SAMPLERS = {g.name: g for g in SAMPLER_GRAPHS}
GRAPHS = ("backbone", "head_step", *SAMPLERS, "vae_decoder", "vae_encoder")
EDIT_GRAPHS = (*(g.name for g in SAMPLER_GRAPHS if g.edit), "vae_encoder")


@dataclass(frozen=True)
class DeploymentProfile:
    """What one export serves; every Dim of every graph is sized from it."""

    max_batch: int = 4                                   # images per call (B)
    opt_batch: int = 1
    max_text_tokens: int = 128                           # caption (+ positive) or negative prompt tokens
    resolutions: tuple[tuple[int, int], ...] = ((512, 512),)   # (height, width) the VAE graphs range over
    t2i_sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=50, shift=1.0, use_norm=True))
    edit_sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=50, shift=3.2, use_norm=True))
    edit: bool = True                                    # export the 3-row sampler and the VAE encoder

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise UserError(f"profile: need 1 <= opt batch <= max batch, got {self.opt_batch}/{self.max_batch}")
        if self.max_text_tokens < 1:
            raise UserError("profile: max text tokens must be >= 1")
        if not self.resolutions:
            raise UserError("profile: at least one resolution is needed")

    def check_resolutions(self, pixels_per_token: int) -> None:
        for h, w in self.resolutions:
            if h <= 0 or w <= 0 or h % pixels_per_token or w % pixels_per_token:
                raise UserError(f"profile: resolution {h}x{w} is not a multiple of {pixels_per_token}")

    @property
    def cfg_rows(self) -> int:
        """The most CFG branches a backbone call carries: 3 with editing, else 2."""
        return 3 if self.edit else 2

    def side_range(self, axis: int) -> tuple[int, int]:
        sides = [r[axis] for r in self.resolutions]
        return min(sides), max(sides)

    def max_image_tokens(self, pixels_per_token: int) -> int:
        return max(h * w for h, w in self.resolutions) // pixels_per_token**2

    def max_prompt_tokens(self, pixels_per_token: int) -> int:
        """Longest prompt row: text + template, plus an input image's tokens when editing."""
        image = self.max_image_tokens(pixels_per_token) + TEMPLATE_TOKENS if self.edit else 0
        return self.max_text_tokens + TEMPLATE_TOKENS + image

    def kv_capacity(self, pixels_per_token: int) -> int:
        """Cache slots per row: the longest prompt plus every image token."""
        return self.max_prompt_tokens(pixels_per_token) + self.max_image_tokens(pixels_per_token)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DeploymentProfile":
        d = dict(d)
        d["resolutions"] = tuple(tuple(r) for r in d["resolutions"])
        for key in ("t2i_sampler", "edit_sampler"):
            s = dict(d[key])
            s["variant"] = SamplerVariant(s["variant"])
            d[key] = SamplerConfig(**s)
        return cls(**d)


def sampler_of(spec: GraphSpec) -> SamplerConfig:
    """The sampler a head_sampler graph was exported with (from its spec attrs)."""
    s = dict(spec.attrs["sampler"])
    return SamplerConfig(**{**s, "variant": SamplerVariant(s["variant"])})


def guidance_of(spec: GraphSpec) -> Guidance:
    """The CFG layout a head_sampler graph combines (graphs exported before layouts existed: 2 rows text, 3 image)."""
    if "guidance" in spec.attrs:
        return Guidance(spec.attrs["guidance"])
    return Guidance.TEXT_IMAGE if spec.attrs["cfg_rows"] == 3 else Guidance.TEXT


def _f32(name, *axes):
    return TensorSpec(name, "float32", tuple(axes))


def backbone_spec(cfg: NextStepConfig, prof: DeploymentProfile) -> GraphSpec:
    ppt, bb = cfg.pixels_per_token, cfg.backbone
    cap, seq_max = prof.kv_capacity(ppt), prof.max_prompt_tokens(ppt)
    rows = Dim("rows", 1, 2 * prof.opt_batch, prof.cfg_rows * prof.max_batch)
    prefill = Profile("prefill", (rows, Dim("seq", 1, min(64, seq_max), seq_max), Dim("past", 0, cap, cap)))
    decode = Profile("decode", (rows, Dim("seq", 1, 1, 1), Dim("past", 1, cap, cap)))
    kv = (bb.num_kv_heads, bb.head_dim)
    inputs = [TensorSpec("input_ids", "int64", ("rows", "seq")), _f32("image_tokens", "rows", "seq", cfg.token_dim),
              TensorSpec("image_mask", "bool", ("rows", "seq")), TensorSpec("position_ids", "int64", ("rows", "seq")),
              TensorSpec("token_mask", "int64", ("rows", "seq")), TensorSpec("past_mask", "int64", ("rows", "past"))]
    for k, v in zip(kv_names("past_key", bb.num_layers), kv_names("past_value", bb.num_layers)):
        inputs += [_f32(k, "rows", kv[0], "past", kv[1]), _f32(v, "rows", kv[0], "past", kv[1])]
    outputs = [_f32("cond", "rows", bb.hidden_size)]
    for k, v in zip(kv_names("new_key", bb.num_layers), kv_names("new_value", bb.num_layers)):
        outputs += [_f32(k, "rows", kv[0], "seq", kv[1]), _f32(v, "rows", kv[0], "seq", kv[1])]
    return GraphSpec("backbone", tuple(inputs), tuple(outputs), (prefill, decode),
                     {"layers": bb.num_layers, "kv_capacity": cap, "max_prompt_tokens": seq_max})


def head_step_spec(cfg: NextStepConfig, prof: DeploymentProfile) -> GraphSpec:
    rows = Dim("rows", 1, 2 * prof.opt_batch, prof.cfg_rows * prof.max_batch)
    d = cfg.token_dim
    return GraphSpec("head_step", (_f32("x", "rows", d), _f32("t", "rows"), _f32("cond", "rows", cfg.backbone.hidden_size)),
                     (_f32("v", "rows", d),), (Profile("step", (rows,)),))


def head_sampler_spec(cfg: NextStepConfig, prof: DeploymentProfile, graph: SamplerGraph) -> GraphSpec:
    r = graph.guidance.rows
    sampler = prof.edit_sampler if graph.edit else prof.t2i_sampler
    batch = Dim("batch", 1, prof.opt_batch, prof.max_batch)
    d = cfg.token_dim
    scales = {Guidance.NONE: [], Guidance.TEXT: ["cfg"], Guidance.TEXT_IMAGE: ["cfg", "cfg_img"]}[graph.guidance]
    rows = "batch" if r == 1 else "cond_rows"              # one row per image: the cond rows are the batch
    inputs = [_f32("cond", rows, cfg.backbone.hidden_size), _f32("noise", sampler.steps + 1, "batch", d),
              *(_f32(name, "batch") for name in scales)]
    dims = (batch,) if r == 1 else (batch, Dim("cond_rows", r, r * prof.opt_batch, r * prof.max_batch))
    attrs = {"cfg_rows": r, "guidance": graph.guidance.value,
             "sampler": {**dataclasses.asdict(sampler), "variant": sampler.variant.value},
             "derived": {} if r == 1 else {"cond_rows": ("batch", r)}}
    return GraphSpec(graph.name, tuple(inputs), (_f32("token", "batch", d),), (Profile("sampler", dims),), attrs)


def _vae_dims(cfg: NextStepConfig, prof: DeploymentProfile) -> tuple[Dim, ...]:
    f = cfg.vae.downsample
    (h0, h1), (w0, w1) = prof.side_range(0), prof.side_range(1)
    oh, ow = prof.resolutions[0]
    return (Dim("batch", 1, prof.opt_batch, prof.max_batch),
            Dim("height", h0, oh, h1), Dim("width", w0, ow, w1),
            Dim("latent_h", h0 // f, oh // f, h1 // f), Dim("latent_w", w0 // f, ow // f, w1 // f))


def vae_decoder_spec(cfg: NextStepConfig, prof: DeploymentProfile) -> GraphSpec:
    latents = _f32("latents", "batch", cfg.latent_channels, "latent_h", "latent_w")
    image = _f32("image", "batch", cfg.vae.out_ch, "height", "width")
    return GraphSpec("vae_decoder", (latents,), (image,), (Profile("vae", _vae_dims(cfg, prof)),))


def vae_encoder_spec(cfg: NextStepConfig, prof: DeploymentProfile) -> GraphSpec:
    image = _f32("image", "batch", cfg.vae.in_channels, "height", "width")
    latents = _f32("latents", "batch", cfg.latent_channels, "latent_h", "latent_w")
    return GraphSpec("vae_encoder", (image,), (latents,), (Profile("vae", _vae_dims(cfg, prof)),))


def graph_specs(cfg: NextStepConfig, prof: DeploymentProfile, names=GRAPHS) -> dict[str, GraphSpec]:
    """The specs of the requested graphs (edit graphs only when the profile enables editing)."""
    prof.check_resolutions(cfg.pixels_per_token)
    unknown = [n for n in names if n not in GRAPHS]
    if unknown:
        raise UserError(f"unknown graph(s) {', '.join(unknown)}; choose from {', '.join(GRAPHS)}")
    makers = {"backbone": lambda: backbone_spec(cfg, prof), "head_step": lambda: head_step_spec(cfg, prof),
              **{g.name: (lambda g=g: head_sampler_spec(cfg, prof, g)) for g in SAMPLER_GRAPHS},
              "vae_decoder": lambda: vae_decoder_spec(cfg, prof), "vae_encoder": lambda: vae_encoder_spec(cfg, prof)}
    return {n: makers[n]() for n in names if prof.edit or n not in EDIT_GRAPHS}
