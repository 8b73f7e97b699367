"""Generation options shared by the reference pipeline and the runtime (torch-free)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from nextstep_trt.core.errors import UserError

from .sampling import CfgSchedule, SamplerConfig, SamplerVariant

MAX_SIDE = 4096  # pixels; the runtime narrows this to the exported profile


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

    def __post_init__(self):
        if not self.cfg >= 1.0:
            raise UserError(f"cfg must be >= 1, got {self.cfg}")
        if not self.cfg_img >= 1.0:
            raise UserError(f"cfg-img must be >= 1, got {self.cfg_img}")
        if self.images_per_prompt < 1:
            raise UserError(f"images per prompt must be >= 1, got {self.images_per_prompt}")
        for name in ("height", "width"):
            if not 0 < getattr(self, name) <= MAX_SIDE:
                raise UserError(f"{name} {getattr(self, name)} is outside 1..{MAX_SIDE}")
        self.sampler_config()  # validates steps and shift

    def sampler_config(self) -> SamplerConfig:
        return SamplerConfig(steps=self.steps, shift=self.shift, variant=SamplerVariant(self.sampler),
                             use_norm=self.use_norm)

    def replace(self, **changes) -> "GenerationOptions":
        return dataclasses.replace(self, **changes)


# Recommended editing settings (NextStep-1-Large-Edit ``example.py``); cfg 7.5 and cfg_img 2.0 as above.
EDIT_DEFAULTS = {"shift": 3.2, "negative_prompt": "Copy original image."}
