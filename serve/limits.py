"""What a served model accepts: its tensors (one declaration for config.pbtxt, parsing and the client) and the caps
every request is checked against, all taken from the exported profile (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.ref.options import EDIT_DEFAULTS, SEED_MAX
from nextstep_trt.ref.sampling import SamplerConfig

T2I_MODEL, EDIT_MODEL = "nextstep_t2i", "nextstep_edit"
PROMPT_BYTES_PER_TOKEN = 32     # a prompt longer than this many bytes per allowed token is refused before tokenizing


@dataclass(frozen=True)
class TensorDecl:
    """One input or output of a served model; dims exclude the batch dim Triton adds."""

    name: str
    dtype: str                   # Triton data type without the TYPE_ prefix: STRING, INT32, INT64, FP32, UINT8
    dims: tuple[int, ...]
    optional: bool = False

    @property
    def wire_dtype(self) -> str:
        """The KServe v2 datatype clients send (BYTES for STRING)."""
        return "BYTES" if self.dtype == "STRING" else self.dtype


_COMMON = (TensorDecl("prompt", "STRING", (1,)), TensorDecl("negative_prompt", "STRING", (1,), True),
           TensorDecl("steps", "INT32", (1,), True), TensorDecl("seed", "INT64", (1,), True),
           TensorDecl("cfg", "FP32", (1,), True))
INPUTS = {
    T2I_MODEL: _COMMON + (TensorDecl("height", "INT32", (1,), True), TensorDecl("width", "INT32", (1,), True)),
    EDIT_MODEL: (TensorDecl("image", "UINT8", (-1, -1, 3)),) + _COMMON + (TensorDecl("cfg_img", "FP32", (1,), True),),
}
OUTPUTS = {name: (TensorDecl("image", "UINT8", (-1, -1, 3)),) for name in INPUTS}


@dataclass(frozen=True)
class ServeLimits:
    """Caps and defaults of one served model, from the artifacts' profile."""

    edit: bool
    max_batch: int                       # images per Triton batch (= max_batch_size)
    resolutions: tuple[tuple[int, int], ...]
    side_ranges: tuple[tuple[int, int], tuple[int, int]]
    pixels_per_token: int
    max_image_tokens: int
    sampler: SamplerConfig               # the exported fused sampler; its steps are the most a request may ask for
    fewer_steps: bool                    # head_step was exported, so fewer steps run through it
    max_prompt_tokens: int               # per prompt row, template (and input image) included
    default_cfg: float = 7.5
    default_cfg_img: float = 2.0
    default_negative: str = ""
    default_seed: int = 42

    @property
    def max_prompt_bytes(self) -> int:
        return PROMPT_BYTES_PER_TOKEN * self.max_prompt_tokens

    @property
    def max_image_bytes(self) -> int:
        """The largest valid input image (editing), uint8 H*W*3."""
        return max(h * w for h, w in self.resolutions) * 3 if self.edit else 0

    @property
    def max_request_bytes(self) -> int:
        """Payload of the largest valid one-image request (binary tensors): configure a front proxy's body cap
        from this (JSON encoding takes up to ~4x)."""
        return self.max_image_bytes + 2 * self.max_prompt_bytes + 64

    def check_size(self, height: int, width: int) -> None:
        """Inside the profile's side ranges, a multiple of the token size, no more tokens than exported."""
        ppt = self.pixels_per_token
        for name, size, (lo, hi) in (("height", height, self.side_ranges[0]), ("width", width, self.side_ranges[1])):
            if size % ppt:
                raise UserError(f"{name} {size} is not a multiple of {ppt}")
            if not lo <= size <= hi:
                raise UserError(f"{name} {size} is outside the exported profile ({lo}..{hi})")
        if (height // ppt) * (width // ppt) > self.max_image_tokens:
            raise UserError(f"{height}x{width} needs more image tokens than the exported profile holds "
                            f"({self.max_image_tokens})")

    def check_steps(self, steps: int) -> None:
        """``steps`` == the exported fused steps, or fewer when head_step was exported."""
        top = self.sampler.steps
        if steps == top:
            return
        if not self.fewer_steps:
            raise UserError(f"steps {steps}: this server runs exactly {top} sampler steps (the exported sampler)")
        if not 1 <= steps <= top:
            raise UserError(f"steps {steps} is outside 1..{top} (the exported sampler has {top})")

    def to_dict(self) -> dict:
        return {"max_batch": self.max_batch, "resolutions": [list(r) for r in self.resolutions],
                "steps": self.sampler.steps, "fewer_steps": self.fewer_steps,
                "max_prompt_tokens": self.max_prompt_tokens, "max_prompt_bytes": self.max_prompt_bytes,
                "max_request_bytes": self.max_request_bytes}


def serve_limits(manifest: Manifest, edit: bool, max_batch: int | None = None) -> ServeLimits:
    """Caps for the t2i or edit model of an artifacts folder; ``max_batch`` may only narrow the profile's."""
    profile: DeploymentProfile = manifest.profile
    if max_batch is not None and not 1 <= max_batch <= profile.max_batch:
        raise UserError(f"--max-batch {max_batch} is outside 1..{profile.max_batch} (the exported max batch)")
    graphs = manifest.graphs
    needed = ("backbone", "vae_decoder") + (("vae_encoder",) if edit else ())
    missing = [g for g in needed if g not in graphs]
    if missing:
        raise UserError(f"{manifest.root} has no {', '.join(missing)} graph: cannot serve "
                        f"{EDIT_MODEL if edit else T2I_MODEL}")
    ppt = manifest.config.pixels_per_token
    backbone = manifest.data["graphs"]["backbone"]["spec"]
    defaults = {"default_negative": EDIT_DEFAULTS["negative_prompt"]} if edit else {}
    return ServeLimits(edit=edit, max_batch=max_batch or profile.max_batch, resolutions=profile.resolutions,
                       side_ranges=(profile.side_range(0), profile.side_range(1)), pixels_per_token=ppt,
                       max_image_tokens=profile.max_image_tokens(ppt),
                       sampler=profile.edit_sampler if edit else profile.t2i_sampler,
                       fewer_steps="head_step" in graphs,
                       max_prompt_tokens=int(backbone["attrs"]["max_prompt_tokens"]), **defaults)


def served_models(manifest: Manifest) -> list[str]:
    """nextstep_t2i always; nextstep_edit when the VAE encoder was exported (each guidance layout runs its fused
    sampler when it was exported, head_step otherwise)."""
    edit = "vae_encoder" in manifest.graphs
    return [T2I_MODEL] + ([EDIT_MODEL] if edit else [])
