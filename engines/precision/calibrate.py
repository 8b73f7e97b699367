"""Calibration inputs recorded from the PyTorch reference over real prompts and every sampler timestep (torch).

The reference runs the project's one generation loop (``nextstep_trt.runtime.loop``) through the torch backend; every graph
input it produces goes to a ``sink(graph, feeds)`` as it happens: the backbone's prefill and every decode step,
the fused sampler's (cond, noise, cfg[, cfg_img]) per token, every (x_t, t, cond) the reference sampler feeds
its head (all N steps of every token), the VAE decoder's latents and the encoder's images. Nothing is stored:
consumers keep running statistics. The prompts are disjoint from the parity cases (``nextstep_trt.runtime.cases``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.options import EDIT_DEFAULTS, GenerationOptions
from nextstep_trt.ref.sampling import SamplerConfig
from nextstep_trt.runtime.backend import sampler_feeds
from nextstep_trt.runtime.loop import Request, run_request
from nextstep_trt.runtime.torch_backend import TorchBackend

Feeds = dict[str, np.ndarray]
Sink = Callable[[str, Feeds], None]

DEFAULT_PROMPTS = (
    "a lighthouse on a rocky coast at sunset, oil painting",
    "close-up photo of a hummingbird drinking from a red flower",
    "an isometric pixel-art city block with neon signs at night",
    "a bowl of ramen with a soft-boiled egg, studio lighting",
    "a snowy mountain village under the northern lights",
    "portrait of an elderly fisherman, black and white photograph",
    "a vintage bicycle leaning against a yellow wall",
    "watercolor map of an imaginary archipelago",
)
EDIT_INSTRUCTIONS = ("add a small boat in the lower left corner", "make it look like a pencil sketch")
CFG_SCALES = (4.5, 7.5)       # alternated over prompt batches; the official defaults are 4.5-7.5
CFG_IMG = 2.0
# Below this many parameters the reference runs on one thread: on the shared 2-core machines (load ~4) the tiny
# model's calibration took 14-16 s with torch's 2 threads and 0.7-1.1 s with one (measured).
ONE_THREAD_PARAMS = 100_000_000


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read calibration prompts {path}: {getattr(err, 'strerror', None) or err}") from None
    prompts = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not prompts:
        raise UserError(f"{path} holds no prompt (one prompt per line)")
    return prompts


def calibration_image(height: int, width: int, k: int) -> np.ndarray:
    """A smooth synthetic picture to edit, different per ``k``: uint8 [H,W,3]."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(2 * np.pi * (x * (k + 1) + y * c + 0.3 * c)) for c in range(3)]
    return (127.5 * (1 + np.stack(channels, axis=-1))).astype(np.uint8)


class RecordingBackend(TorchBackend):
    """The torch reference behind the backend protocol; every graph input it sees goes to ``sink``."""

    def __init__(self, bundle: ModelBundle, profile: DeploymentProfile, sink: Sink):
        super().__init__(bundle, profile)
        self.sink = sink

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        self.sink(graph, feeds)
        return super().run(graph, feeds)

    def sample(self, cond, noise, guidance, cfg, cfg_img, sampler: SamplerConfig) -> np.ndarray:
        """Record the fused sampler's inputs, then the reference sampler's head calls while it runs."""
        fused = self.fused_sampler(sampler, guidance)
        if fused is not None:
            self.sink(fused, sampler_feeds(cond, noise, guidance, cfg, cfg_img))
        hook = self.bundle.model.image_head.register_forward_pre_hook(self._head_inputs)
        try:
            return super().sample(cond, noise, guidance, cfg, cfg_img, sampler)
        finally:
            hook.remove()

    def _head_inputs(self, module, args) -> None:
        x, t, c = (a.detach().float().numpy() for a in args)
        self.sink("head_step", {"x": x, "t": t, "cond": c})


def _options(sampler: SamplerConfig, size: tuple[int, int], seed: int, cfg: float, **extra) -> GenerationOptions:
    return GenerationOptions(height=size[0], width=size[1], cfg=cfg, steps=sampler.steps, shift=sampler.shift,
                             sampler=sampler.variant, use_norm=sampler.use_norm, seed=seed, **extra)


def calibration_requests(profile: DeploymentProfile, prompts: list[str], edit: bool) -> list[Request]:
    """Every prompt at every profile resolution (batches of up to 2), one unguided request, plus editing at the
    first resolution in every guidance layout (so each fused sampler graph sees its own inputs)."""
    batch = min(2, profile.max_batch)
    out = []
    for size in profile.resolutions:
        for j in range(0, len(prompts), batch):
            cfg = CFG_SCALES[(j // batch) % len(CFG_SCALES)]
            out.append(Request(prompts[j:j + batch], _options(profile.t2i_sampler, size, 1000 + j, cfg)))
    first = profile.resolutions[0]
    out.append(Request(prompts[:1], _options(profile.t2i_sampler, first, 999, 1.0)))    # no guidance: one row
    if edit and profile.edit:
        # every editing layout the samplers were exported for: image + text guidance, text only, none
        scales = [(CFG_SCALES[k % len(CFG_SCALES)], CFG_IMG) for k in range(len(EDIT_INSTRUCTIONS))]
        scales += [(CFG_SCALES[0], 1.0), (1.0, 1.0)]
        for k, (cfg, cfg_img) in enumerate(scales):
            opts = _options(profile.edit_sampler, first, 2000 + k, cfg, cfg_img=cfg_img,
                            negative_prompt=EDIT_DEFAULTS["negative_prompt"])
            text = EDIT_INSTRUCTIONS[k % len(EDIT_INSTRUCTIONS)]
            out.append(Request([text], opts, calibration_image(*first, k)))
    return out


@contextlib.contextmanager
def reference_threads(bundle: ModelBundle) -> Iterator[None]:
    """One torch thread for small models while the reference calibrates, restored afterwards."""
    before = torch.get_num_threads()
    small = sum(p.numel() for p in bundle.model.parameters()) < ONE_THREAD_PARAMS
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def record_calibration(bundle: ModelBundle, profile: DeploymentProfile, prompts: list[str], sink: Sink,
                       edit: bool = True) -> dict:
    """Run the reference over every calibration request, feeding ``sink``; returns what was run (for the recipe)."""
    counts: dict[str, int] = {}

    def counting(graph: str, feeds: Feeds) -> None:
        counts[graph] = counts.get(graph, 0) + 1
        sink(graph, feeds)

    backend = RecordingBackend(bundle, profile, counting)
    max_tokens = profile.max_prompt_tokens(bundle.config.pixels_per_token)
    requests = calibration_requests(profile, prompts, edit)
    with reference_threads(bundle):
        for req in requests:
            run_request(backend, bundle.tokenizer, req, max_tokens=max_tokens)
    return {"prompts": len(prompts), "edit_requests": sum(r.image is not None for r in requests),
            "requests": len(requests), "resolutions": [list(r) for r in profile.resolutions],
            "cfg": list(CFG_SCALES), "sampler_steps": {"t2i": profile.t2i_sampler.steps,
                                                       "edit": profile.edit_sampler.steps},
            "samples": counts}
