"""The server's work, free of Triton: turn a batch of requests into images, one batched generation loop per
(height, width, steps) group, with a separate result or error for every request (torch-free)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.ref.latents import token_grid
from nextstep_trt.core.choices import check_int, check_text
from nextstep_trt.ref.options import LIMITS, GenerationOptions, check_scale
from nextstep_trt.ref.prompt import edit_prompt, text_to_image_prompt
from nextstep_trt.ref.sampling import Guidance, guidance_for
from nextstep_trt.runtime.backend import Backend
from nextstep_trt.runtime.loop import Request, run_request

from .limits import ServeLimits, serve_limits

Inputs = dict[str, np.ndarray]     # one Triton request: input name -> array with the batch dim first


@dataclass(frozen=True)
class Job:
    """One image to make."""

    prompt: str
    negative: str
    height: int
    width: int
    steps: int
    seed: int
    cfg: float
    cfg_img: float
    guidance: Guidance
    image: np.ndarray | None = None      # uint8 [H,W,3] to edit

    @property
    def group(self) -> tuple:
        """Jobs with the same group run in one batched loop (one branch layout: the rows per image must agree)."""
        return self.height, self.width, self.steps, self.guidance


def _column(inputs: Inputs, name: str, n: int, default) -> list:
    """The n values of a [n,1] input, or the default n times when the input is absent."""
    a = inputs.get(name)
    if a is None:
        return [default] * n
    a = np.asarray(a)
    if a.shape != (n, 1):
        raise UserError(f"input {name!r} has shape {list(a.shape)}; expected [{n}, 1]")
    return list(a.reshape(-1))


def _text(value, name: str, cap: int) -> str:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    if len(raw) > cap:
        raise UserError(f"{name} is {len(raw)} bytes; the cap is {cap}")
    return check_text(name, raw)


class BatchRunner:
    """Parses, checks and runs requests for one served model (text-to-image or editing)."""

    def __init__(self, backend: Backend, tokenizer, limits: ServeLimits):
        self.backend, self.tokenizer, self.limits = backend, tokenizer, limits
        self.loops = 0          # batched generation loops run so far

    # --- parsing ---------------------------------------------------------------------------------------------------

    def _images(self, inputs: Inputs) -> tuple[np.ndarray | None, int, int]:
        """Editing: the [n,H,W,3] uint8 input images and their size; text-to-image: none."""
        if not self.limits.edit:
            return None, 0, 0
        image = inputs.get("image")
        if image is None:
            raise UserError("missing input 'image'")
        if image.dtype != np.uint8 or image.ndim != 4 or image.shape[-1] != 3:
            raise UserError(f"input 'image' must be uint8 [H, W, 3], got {image.dtype} {list(image.shape[1:])}")
        return image, int(image.shape[1]), int(image.shape[2])

    def parse(self, inputs: Inputs) -> list[Job]:
        """The jobs of one request (its batch rows); a UserError says what is wrong with it."""
        lim = self.limits
        if inputs.get("prompt") is None:
            raise UserError("missing input 'prompt'")
        n = int(np.asarray(inputs["prompt"]).shape[0])
        images, h, w = self._images(inputs)
        if images is not None and images.shape[0] != n:
            raise UserError(f"{images.shape[0]} images for {n} prompts")
        default_h, default_w = lim.resolutions[0]
        heights = [int(x) for x in _column(inputs, "height", n, h or default_h)]
        widths = [int(x) for x in _column(inputs, "width", n, w or default_w)]
        if len({*heights}) > 1 or len({*widths}) > 1:
            raise UserError("every image of one request must have the same height and width")
        prompts = [_text(x, "prompt", lim.max_prompt_bytes) for x in _column(inputs, "prompt", n, "")]
        negatives = [_text(x, "negative_prompt", lim.max_prompt_bytes)
                     for x in _column(inputs, "negative_prompt", n, lim.default_negative)]
        steps = [check_int("steps", x, *LIMITS["steps"]) for x in _column(inputs, "steps", n, lim.sampler.steps)]
        seeds = [check_int("seed", x, *LIMITS["seed"]) for x in _column(inputs, "seed", n, lim.default_seed)]
        cfgs = [check_scale("cfg", x) for x in _column(inputs, "cfg", n, lim.default_cfg)]
        cfg_imgs = [check_scale("cfg_img", x) for x in _column(inputs, "cfg_img", n, lim.default_cfg_img)]
        layouts = [guidance_for(lim.edit, c, ci) for c, ci in zip(cfgs, cfg_imgs)]
        lim.check_size(heights[0], widths[0])
        for s in steps:
            lim.check_steps(s)
        for p, neg, g in zip(prompts, negatives, layouts):
            self._check_tokens(p, neg, heights[0], widths[0], g)
        return [Job(prompts[i], negatives[i], heights[i], widths[i], steps[i], seeds[i], cfgs[i], cfg_imgs[i],
                    layouts[i], None if images is None else images[i]) for i in range(n)]

    def _check_tokens(self, prompt: str, negative: str, height: int, width: int, guidance: Guidance) -> None:
        """Build this image's prompt rows alone: empty prompts and over-long ones fail here, not in a batch."""
        grid = token_grid(height, width, self.limits.pixels_per_token)
        make = edit_prompt if self.limits.edit else text_to_image_prompt
        make(self.tokenizer, self.backend.config.tokens, [prompt], grid, negative=negative,
             max_tokens=self.limits.max_prompt_tokens, guidance=guidance)

    # --- running ---------------------------------------------------------------------------------------------------

    def run_group(self, jobs: list[Job]) -> np.ndarray:
        """One batched loop for jobs that share height, width, steps and guidance layout: uint8 [B,H,W,3]."""
        first, sampler = jobs[0], self.limits.sampler
        opts = GenerationOptions(height=first.height, width=first.width, steps=first.steps, shift=sampler.shift,
                                 sampler=sampler.variant, use_norm=sampler.use_norm)
        image = np.stack([j.image for j in jobs]) if self.limits.edit else None
        req = Request([j.prompt for j in jobs], opts, image, seeds=[j.seed for j in jobs],
                      negatives=[j.negative for j in jobs], cfgs=[j.cfg for j in jobs],
                      cfg_imgs=[j.cfg_img for j in jobs] if self.limits.edit else None)
        self.loops += 1
        return run_request(self.backend, self.tokenizer, req, max_tokens=self.limits.max_prompt_tokens)

    def run(self, jobs: list[Job]) -> list[np.ndarray | Exception]:
        """An image [H,W,3] per job, or the error of the loop it ran in; groups run one after another."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(job.group, []).append(i)
        out: list[np.ndarray | Exception] = [None] * len(jobs)
        for idx in groups.values():
            for start in range(0, len(idx), self.limits.max_batch):
                chunk = idx[start:start + self.limits.max_batch]
                try:
                    images = list(self.run_group([jobs[i] for i in chunk]))
                except Exception as err:  # noqa: BLE001 - the error belongs to this group's requests only
                    images = [err] * len(chunk)
                for i, image in zip(chunk, images):
                    out[i] = image
        return out

    def execute(self, requests: list[Inputs]) -> list[np.ndarray | Exception]:
        """Per request: uint8 [n,H,W,3], or the exception that explains why it failed."""
        results: list[np.ndarray | Exception] = [None] * len(requests)
        jobs: list[Job] = []
        owners: list[int] = []
        for r, inputs in enumerate(requests):
            try:
                parsed = self.parse(inputs)
            except (UserError, ValueError, TypeError) as err:
                results[r] = err if isinstance(err, UserError) else UserError(f"bad input: {err}")
                continue
            jobs += parsed
            owners += [r] * len(parsed)
        images = self.run(jobs)
        for r in range(len(requests)):
            if results[r] is not None:
                continue
            mine = [im for im, o in zip(images, owners) if o == r]
            errors = [im for im in mine if isinstance(im, Exception)]
            results[r] = errors[0] if errors else np.stack(mine)
        return results

    def warm_up(self) -> None:
        """One image at the smallest exported size, so the first request does not pay for session creation."""
        h, w = min(self.limits.resolutions, key=lambda r: r[0] * r[1])
        image = np.zeros((h, w, 3), np.uint8) if self.limits.edit else None
        lim = self.limits
        guidance = guidance_for(lim.edit, lim.default_cfg, lim.default_cfg_img)
        self.run_group([Job("warm up", lim.default_negative, h, w, lim.sampler.steps, 0, lim.default_cfg,
                            lim.default_cfg_img, guidance, image)])

    def close(self) -> None:
        self.backend.close()


def open_runner(artifacts: str | Path, model_dir: str | Path, backend: str = "onnxruntime", precision: str = "fp32",
                edit: bool = False, max_batch: int | None = None, threads: int = 0) -> BatchRunner:
    """A runner over a freshly opened backend and the model folder's tokenizer."""
    from nextstep_trt.runtime.api import model_tokenizer, open_backend

    limits = serve_limits(Manifest.load(artifacts), edit, max_batch)
    be = open_backend(backend, model_dir, artifacts, precision, threads=threads)
    return BatchRunner(be, model_tokenizer(model_dir, be.config), limits)
