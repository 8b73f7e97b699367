"""Frozen configs of NextStep-1 and their mapping onto the official ``config.json`` files (torch-free)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from nextstep_trt.core.errors import UserError


@dataclass(frozen=True)
class BackboneConfig:
    """Qwen2.5-style causal decoder."""

    vocab_size: int = 152064
    hidden_size: int = 5120
    num_layers: int = 48
    num_heads: int = 40
    num_kv_heads: int = 8              # GQA: num_heads // num_kv_heads query heads share one K/V head
    head_dim: int = 128
    intermediate_size: int = 13824     # SwiGLU width
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-5
    attention_bias: bool = True        # q, k, v projections carry a bias
    o_attention_bias: bool = False     # o_proj does not


@dataclass(frozen=True)
class SpecialTokens:
    """Token ids the prompt template uses (Qwen2.5 ids for Large)."""

    bos: int = 151643
    eos: int = 151643
    pad: int = 151665
    image_area: int = 151666
    boi: int = 151667
    eoi: int = 151668
    placeholder: int = 151669


@dataclass(frozen=True)
class HeadConfig:
    """Flow-matching head: SimpleMLPAdaLN."""

    input_dim: int = 64                # token dim = latent_channels * patch**2
    cond_dim: int = 5120               # = backbone hidden size
    dim: int = 1536
    layers: int = 12
    mlp_ratio: float = 1.0
    freq_dim: int = 256                # sinusoidal time embedding width (cos first)


@dataclass(frozen=True)
class VAEConfig:
    """Flux-style f8 autoencoder with the NextStep per-token latent norm."""

    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    encoder_norm: bool = True
    psz: int = 2
    deterministic: bool = True

    @property
    def downsample(self) -> int:
        """Pixels per latent cell (8 for ch_mult of length 4)."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class NextStepConfig:
    """The whole model: backbone, projectors, head and VAE."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    tokens: SpecialTokens = field(default_factory=SpecialTokens)
    head: HeadConfig = field(default_factory=HeadConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    latent_channels: int = 16
    latent_patch_size: int = 2
    use_gen_pos_embed: bool = False

    @property
    def token_dim(self) -> int:
        """Features of one image token (16 * 2 * 2 = 64 for Large)."""
        return self.latent_channels * self.latent_patch_size**2

    @property
    def pixels_per_token(self) -> int:
        """Image pixels along one side of one token (8 * 2 = 16 for Large)."""
        return self.vae.downsample * self.latent_patch_size

    def fingerprint(self) -> str:
        """A short hash of every field, used to tie artifacts to the model they came from."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def large() -> NextStepConfig:
    """NextStep-1-Large (14.95 B parameters)."""
    return NextStepConfig()


def tiny() -> NextStepConfig:
    """The CPU test model of the architecture doc; every structural feature of Large is kept."""
    return NextStepConfig(
        backbone=BackboneConfig(vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                                head_dim=16, intermediate_size=128),
        tokens=SpecialTokens(bos=299, eos=299, pad=300, image_area=301, boi=302, eoi=303, placeholder=304),
        head=HeadConfig(input_dim=16, cond_dim=64, dim=32, layers=2),
        vae=VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, z_channels=4,
                      scaling_factor=0.7, shift_factor=0.1),
        latent_channels=4,
    )


def bench() -> NextStepConfig:
    """Large's proportions at ~100 M backbone parameters, for `nextstep-trt bench` on a CPU."""
    return NextStepConfig(
        backbone=BackboneConfig(vocab_size=8192, hidden_size=1024, num_layers=8, num_heads=16, num_kv_heads=4,
                                head_dim=64, intermediate_size=2816),
        tokens=SpecialTokens(bos=8171, eos=8171, pad=8172, image_area=8173, boi=8174, eoi=8175, placeholder=8176),
        head=HeadConfig(input_dim=64, cond_dim=1024, dim=192, layers=4),
        vae=VAEConfig(ch=32, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=16),
    )


PRESETS = {"large": large, "tiny": tiny, "bench": bench}


def preset(name: str) -> NextStepConfig:
    """Look a preset up by name."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]()


# --- official config.json <-> dataclasses -------------------------------------------------------------------------

# (config.json key, dataclass attribute) for the model config; the order is the order they are written.
_BACKBONE_KEYS = [("vocab_size", "vocab_size"), ("hidden_size", "hidden_size"),
                  ("num_hidden_layers", "num_layers"), ("num_attention_heads", "num_heads"),
                  ("num_key_value_heads", "num_kv_heads"), ("head_dim", "head_dim"),
                  ("intermediate_size", "intermediate_size"), ("rope_theta", "rope_theta"),
                  ("rms_norm_eps", "rms_norm_eps"), ("attention_bias", "attention_bias"),
                  ("o_attention_bias", "o_attention_bias")]
_TOKEN_KEYS = [("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id_added", "pad"),
               ("image_area_token_id", "image_area"), ("boi", "boi"), ("eoi", "eoi"),
               ("image_placeholder_id", "placeholder")]
_HEAD_KEYS = [("fm_head_dim", "dim"), ("fm_head_layers", "layers"), ("fm_head_mlp_ratio", "mlp_ratio")]
_VAE_KEYS = ["resolution", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "z_channels",
             "scaling_factor", "shift_factor", "encoder_norm", "psz", "deterministic"]


# Fields that may be any finite number, and those that must be > 0 (every int must be >= 1, token ids >= 0).
_ANY_SIGN = {"shift_factor"}
_POSITIVE = {"rope_theta", "rms_norm_eps", "mlp_ratio"}


def _check_value(cls, attr: str, key: str, value, where: str):
    """``value`` for field ``attr`` of dataclass ``cls`` (read from JSON key ``key``), or a UserError naming it."""
    kind = {f.name: f.type for f in dataclasses.fields(cls)}[attr]
    if kind == "bool":
        ok, need = isinstance(value, bool), "true or false"
    elif kind == "int":
        low = 0 if cls is SpecialTokens else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        need = f"an integer >= {low}"
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
            attr in _ANY_SIGN or (value > 0 if attr in _POSITIVE else value != 0))
        need = "a finite number" + ("" if attr in _ANY_SIGN else " > 0" if attr in _POSITIVE else " other than 0")
    else:  # tuple[int, ...]
        ok = isinstance(value, (list, tuple)) and len(value) > 0 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        need = "a non-empty list of integers >= 1"
        value = tuple(value) if ok else value
    if not ok:
        raise UserError(f"{where}: {key!r} must be {need}, got {value!r}"[:300])
    return value


def _pick(raw: dict, pairs, default, where: str) -> dict:
    return {attr: _check_value(type(default), attr, key, raw[key], where) if key in raw else getattr(default, attr)
            for key, attr in pairs}


def model_config_dict(cfg: NextStepConfig) -> dict:
    """The model's ``config.json`` in the official field names."""
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "nextstep", "torch_dtype": "float32",
           "mlp_bias": False, "tie_word_embeddings": False, "max_position_embeddings": 131072,
           "latent_channels": cfg.latent_channels, "latent_patch_size": cfg.latent_patch_size,
           "use_gen_pos_embed": cfg.use_gen_pos_embed, "vae_name_or_path": "vae/"}
    out.update({key: getattr(cfg.backbone, attr) for key, attr in _BACKBONE_KEYS})
    out.update({key: getattr(cfg.tokens, attr) for key, attr in _TOKEN_KEYS})
    out.update({key: getattr(cfg.head, attr) for key, attr in _HEAD_KEYS})
    return out


def vae_config_dict(vae: VAEConfig) -> dict:
    """The VAE's ``vae/config.json`` (fields of the official ``AutoEncoderParams``)."""
    out = {key: getattr(vae, key) for key in _VAE_KEYS}
    out["ch_mult"] = list(vae.ch_mult)
    return out


def config_from_dicts(model: dict, vae: dict, where: str = "config.json",
                      vae_where: str = "vae/config.json") -> NextStepConfig:
    """Build a config from the parsed ``config.json`` and ``vae/config.json``; missing fields take Large's values,
    a present field of the wrong type or range is a UserError naming the file and key."""
    for raw, name in ((model, where), (vae, vae_where)):
        if not isinstance(raw, dict):
            raise UserError(f"{name} must hold a JSON object, not {type(raw).__name__}")
    default = NextStepConfig()
    backbone = BackboneConfig(**_pick(model, _BACKBONE_KEYS, default.backbone, where))
    if backbone.num_heads % backbone.num_kv_heads:
        raise UserError(f"{where}: num_attention_heads {backbone.num_heads} is not a multiple of "
                        f"num_key_value_heads {backbone.num_kv_heads}")
    tokens = SpecialTokens(**_pick(model, _TOKEN_KEYS, default.tokens, where))
    top = _pick(model, [(k, k) for k in ("latent_channels", "latent_patch_size", "use_gen_pos_embed")], default, where)
    head = HeadConfig(input_dim=top["latent_channels"] * top["latent_patch_size"] ** 2, cond_dim=backbone.hidden_size,
                      **_pick(model, _HEAD_KEYS, default.head, where))
    vae_raw = dict(vae)
    if "scale_factor" in vae_raw and "scaling_factor" not in vae_raw:  # Flux's spelling
        vae_raw["scaling_factor"] = vae_raw["scale_factor"]
    vae_cfg = VAEConfig(**_pick(vae_raw, [(k, k) for k in _VAE_KEYS], default.vae, vae_where))
    return NextStepConfig(backbone=backbone, tokens=tokens, head=head, vae=vae_cfg, **top)


def vae_folder(model_dir: Path, model: dict) -> Path:
    """The VAE folder config.json names (``vae_name_or_path``, default ``vae/``), kept inside the model folder."""
    from nextstep_trt.core.paths import inside

    return inside(model_dir, model.get("vae_name_or_path", "vae/"), f"{model_dir / 'config.json'}: vae_name_or_path")


def load_config(model_dir: str | Path) -> NextStepConfig:
    """Read ``config.json`` and ``vae/config.json`` from a model folder."""
    from nextstep_trt.core.jsonfile import read_json

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise UserError(f"model folder {model_dir} does not exist")
    model = read_json(model_dir / "config.json", "model file")
    vae_config = vae_folder(model_dir, model) / "config.json"
    cfg = config_from_dicts(model, read_json(vae_config, "model file"), str(model_dir / "config.json"),
                            str(vae_config))
    if cfg.use_gen_pos_embed:
        raise UserError(f"{model_dir}: use_gen_pos_embed=true is not supported (NextStep-1-Large does not use it)")
    if cfg.vae.z_channels != cfg.latent_channels:
        raise UserError(f"{model_dir}: VAE z_channels {cfg.vae.z_channels} != latent_channels {cfg.latent_channels}")
    return cfg
