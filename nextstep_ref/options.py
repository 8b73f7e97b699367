"""Generation options shared by the reference pipeline, the runtime, the CLI and the server (torch-free).

``GenerationOptions`` is the one place options are read and checked: enum-typed fields accept the member or its
exact string value (as the official API spells them), numbers must be finite and inside ``LIMITS``, text must be
valid UTF-8; anything else is a one-line ``UserError``. Per-image guidance (batched serving) goes through
``check_scale``, the same rule.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass

from nextstep_trt.core.choices import check_int, check_number, check_text, parse_enum
from nextstep_trt.core.errors import UserError

from .sampling import CfgSchedule, Guidance, SamplerConfig, SamplerVariant, guidance_for

MAX_SIDE = 4096       # pixels; the runtime narrows this to the exported profile
MAX_STEPS = 1000      # sampler steps per token: 50 is the recommendation; 1000 x 1024 tokens is already ~a day
MAX_SCALE = 100.0     # guidance scales: the official examples use 7.5 and 2.0
MAX_SHIFT = 100.0
MAX_IMAGES = 64       # images per prompt in one call
SEED_MAX = 2**63 - 1  # numpy and torch both take any non-negative int64


class NoiseMode(str, enum.Enum):
    """``per-image``: one numpy PCG64 generator per image (seed + image index), so an image's noise never depends
    on the batch it runs in (every backend, batching and serving). ``official``: torch's global CPU generator,
    seeded and consumed exactly as the official pipeline does (needs torch)."""

    PER_IMAGE = "per-image"
    OFFICIAL = "official"


# option -> (low, high): the bounds every caller shares (README "Bad input")
LIMITS = {"height": (1, MAX_SIDE), "width": (1, MAX_SIDE), "steps": (1, MAX_STEPS), "seed": (0, SEED_MAX),
          "images_per_prompt": (1, MAX_IMAGES), "max_prompt_tokens": (1, 1 << 20),
          "cfg": (1.0, MAX_SCALE), "cfg_img": (1.0, MAX_SCALE), "shift": (0.0, MAX_SHIFT)}
ENUMS = {"cfg_schedule": CfgSchedule, "sampler": SamplerVariant, "noise": NoiseMode}


def check_scale(option: str, value) -> float:
    """A guidance scale (cfg, cfg_img): finite, in [1, MAX_SCALE]."""
    return check_number(option.replace("_", "-"), value, *LIMITS[option])


@dataclass(frozen=True)
class GenerationOptions:
    """Defaults are the recommended text-to-image settings of the official ``example.py``."""

    height: int = 512
    width: int = 512
    cfg: float = 7.5
    cfg_img: float = 2.0                 # image guidance, editing only
    cfg_schedule: CfgSchedule = CfgSchedule.CONSTANT
    steps: int = 50                      # sampler steps per image token
    shift: float = 1.0                   # timestep shift
    sampler: SamplerVariant = SamplerVariant.HF
    use_norm: bool = True                # LayerNorm each sampled token (NextStep-1-Large)
    seed: int = 42
    positive_prompt: str = ""
    negative_prompt: str = ""
    images_per_prompt: int = 1
    max_prompt_tokens: int = 4096        # per row, template included; the runtime uses its exported profile
    noise: NoiseMode = NoiseMode.PER_IMAGE

    def __post_init__(self):
        for name, cls in ENUMS.items():
            object.__setattr__(self, name, parse_enum(cls, getattr(self, name), name.replace("_", "-")))
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if name == "shift":
                value = check_number(name, value, lo, hi, lo_open=True)
            elif isinstance(lo, float):
                value = check_scale(name, value)
            else:
                value = check_int(name.replace("_", "-"), value, lo, hi)
            object.__setattr__(self, name, value)
        for name in ("positive_prompt", "negative_prompt"):
            check_text(name.replace("_", "-"), getattr(self, name))
        if not isinstance(self.use_norm, bool):
            raise UserError(f"use-norm must be true or false, got {self.use_norm!r}")

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(steps=self.steps, shift=self.shift, variant=self.sampler, use_norm=self.use_norm)

    def guidance(self, edit: bool) -> Guidance:
        """The official branch layout of this call (see ``sampling.Guidance``)."""
        return guidance_for(edit, self.cfg, self.cfg_img)

    def replace(self, **changes) -> "GenerationOptions":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready: enums as their string values."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in dataclasses.asdict(self).items()}


# Recommended editing settings (NextStep-1-Large-Edit ``example.py``); cfg 7.5 and cfg_img 2.0 as above.
EDIT_DEFAULTS = {"shift": 3.2, "negative_prompt": "Copy original image."}
