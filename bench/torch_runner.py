"""The eager PyTorch reference and its torch.compile twin, timed by instrumenting the reference pipeline (torch).

The loop is ``nextstep_trt.ref.pipeline.generate_image`` as the official pipeline runs it: one head call per sampler step.
Forward hooks on the backbone, the head and the VAE decoder time them; ``sample_token`` is wrapped for the per-token
sampler time. ``torch-compile`` replaces the forwards of those three modules by ``torch.compile`` (inductor) of the
same code; the hooks stay outside the compiled region.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from nextstep_trt.ref import pipeline
from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.latents import token_grid
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.prompt import text_to_image_prompt
from nextstep_trt.ref.sampler import sample_token
from nextstep_trt.ref.sampling import Guidance

from .timing import CallLog, grid_tokens, noise_source, time_calls, zero_tokens

SOURCE = ("instrumented reference loop (nextstep_trt.ref.pipeline.generate_image): forward hooks on the backbone, "
          "head and VAE decoder; sample_token wrapped")


class _Stop(Exception):
    """Ends a warm-up run after a few tokens."""


class TorchRunner:
    """``generate`` runs the reference pipeline and returns (uint8 images [B,H,W,3], the run's CallLog)."""

    def __init__(self, bundle: ModelBundle, compiled: bool = False):
        self.bundle, self.compiled = bundle, compiled
        self.config, self.precision = bundle.config, "fp32"
        self.name = "torch-compile" if compiled else "torch"
        self.timing_source = SOURCE + ("; forwards compiled with torch.compile(dynamic=False)" if compiled else "")
        self.log = CallLog()
        self.cond: torch.Tensor | None = None        # a condition the sampler saw, for the micro-benchmark
        self._modules = {"backbone": bundle.model, "head": bundle.model.image_head, "vae": bundle.vae.decoder}
        self._handles: list = []

    # --- instrumentation ---------------------------------------------------------------------------------------------

    def __enter__(self) -> "TorchRunner":
        if self.compiled:
            for module in self._modules.values():
                module.forward = torch.compile(module.forward, dynamic=False)   # instance attribute: undone on exit
        starts: dict[str, float] = {}

        def pre(key):
            return lambda *_: starts.__setitem__(key, time.perf_counter())

        def post_backbone(*_):
            stage = "decode" if self.log.prefill else "prefill"
            getattr(self.log, stage).append(time.perf_counter() - starts["backbone"])

        def post_head(*_):
            self.log.head_calls += 1

        def post_vae(*_):
            self.log.vae.append(time.perf_counter() - starts["vae"])

        for key, post in (("backbone", post_backbone), ("head", post_head), ("vae", post_vae)):
            module = self._modules[key]
            self._handles += [module.register_forward_pre_hook(pre(key)), module.register_forward_hook(post)]
        pipeline.sample_token = self._timed_sample_token
        return self

    def __exit__(self, *exc) -> None:
        pipeline.sample_token = sample_token
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for module in self._modules.values():
            module.__dict__.pop("forward", None)

    def _timed_sample_token(self, head, cond, *args):
        self.cond = cond
        start = time.perf_counter()
        out = sample_token(head, cond, *args)
        self.log.sampler.append(time.perf_counter() - start)
        return out

    # --- runs --------------------------------------------------------------------------------------------------------

    def generate(self, opts: GenerationOptions, prompt: str) -> tuple[np.ndarray, CallLog]:
        """One timed request of ``opts.images_per_prompt`` images."""
        self.log = CallLog()
        start = time.perf_counter()
        images = pipeline.generate_image(self.bundle, prompt, **vars(opts))
        self.log.e2e = time.perf_counter() - start
        return np.stack([np.asarray(im) for im in images]), self.log

    def warm_up(self, opts: GenerationOptions, prompt: str, tokens: int = 2) -> float:
        """Prefill, ``tokens`` sampler calls and decode steps, one VAE decode at this batch (compiles every shape)."""
        start = time.perf_counter()
        batch = self._prompt(opts, prompt)
        noise = noise_source(opts, self.config)

        def stop(k: int, _tokens) -> None:
            if k + 1 >= tokens:
                raise _Stop

        try:
            pipeline.generate_tokens(self.bundle, batch, opts, noise, callback=stop)
        except _Stop:
            pass
        pipeline.decode_tokens(self.bundle, zero_tokens(opts, self.config), opts.height, opts.width)
        self.log = CallLog()
        return time.perf_counter() - start

    def sampler_micro(self, opts: GenerationOptions, calls: int) -> tuple[float | None, float | None]:
        """(fused ms, per-step ms) per token: the reference has no fused sampler; its per-step loop is timed."""
        if self.cond is None:
            return None, None
        self.log = CallLog()                          # the hooks still count: keep the timed run's log clean
        b = opts.images_per_prompt
        noise = torch.from_numpy(noise_source(opts, self.config).next())
        cfg = torch.full((b,), opts.cfg)
        head, cond, sampler = self.bundle.model.image_head, self.cond, opts.sampler_config()
        with torch.no_grad():
            return None, time_calls(lambda: sample_token(head, cond, noise, sampler, Guidance.TEXT, cfg), calls)

    # --- sizes -------------------------------------------------------------------------------------------------------

    def _prompt(self, opts: GenerationOptions, prompt: str):
        grid = token_grid(opts.height, opts.width, self.bundle.config.pixels_per_token)
        return text_to_image_prompt(self.bundle.tokenizer, self.bundle.config.tokens, [prompt], grid,
                                    opts.positive_prompt, opts.negative_prompt, opts.images_per_prompt,
                                    opts.max_prompt_tokens)

    def kv_capacity(self, opts: GenerationOptions, prompt: str) -> int:
        """Slots per row of the reference's cache: prompt length + image tokens (it attends over all of them)."""
        return self._prompt(opts, prompt).length + grid_tokens(opts, self.config)

    def threads(self) -> dict[str, int]:
        return {"torch_intra_op": torch.get_num_threads()}
