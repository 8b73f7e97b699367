"""ONNX Runtime / TensorRT timed through the runtime loop with a timing wrapper around the Backend (torch-free)."""
from __future__ import annotations

import time

import numpy as np

from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.sampling import Guidance
from nextstep_trt.runtime.backend import Backend
from nextstep_trt.runtime.loop import Request, decode_images, run_request

from .timing import CallLog, TimedBackend, noise_source, time_calls, zero_tokens

SOURCE = ("instrumented runtime loop (nextstep_trt.runtime.loop.run_request): timing wrapper around the Backend's backbone, "
          "sample and decode calls")


class _Stop(Exception):
    """Ends a warm-up run after a few tokens."""


class LoopRunner:
    """``generate`` runs ``run_request`` on the wrapped backend and returns (uint8 images [B,H,W,3], its CallLog)."""

    def __init__(self, name: str, backend: Backend, tokenizer, precision: str = "fp32"):
        self.name, self.backend, self.tokenizer = name, backend, tokenizer
        self.config = backend.config
        graph_precision = getattr(backend, "graph_precision", {}).get("backbone")   # fp32 where no such graph
        self.precision = graph_precision.value if graph_precision is not None else precision
        self.timed = TimedBackend(backend)
        self.timing_source = SOURCE
        self.cond: np.ndarray | None = None           # a condition the sampler saw, for the micro-benchmark
        self.max_tokens = backend.spec("backbone").attrs.get("max_prompt_tokens")

    def __enter__(self) -> "LoopRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.backend.close()

    def _keep_cond(self, k: int, tokens: np.ndarray, cond: np.ndarray) -> None:
        if k == 0:
            self.cond = cond.copy()

    def generate(self, opts: GenerationOptions, prompt: str) -> tuple[np.ndarray, CallLog]:
        """One timed request of ``opts.images_per_prompt`` images."""
        self.timed.log = CallLog()
        start = time.perf_counter()
        images = run_request(self.timed, self.tokenizer, Request([prompt], opts), callback=self._keep_cond,
                             max_tokens=self.max_tokens)
        self.timed.log.e2e = time.perf_counter() - start
        return images, self.timed.log

    def warm_up(self, opts: GenerationOptions, prompt: str, tokens: int = 2) -> float:
        """Prefill, ``tokens`` sampler calls and decode steps and one VAE decode at this batch (sessions, arenas)."""
        start = time.perf_counter()

        def stop(k: int, tok: np.ndarray, cond: np.ndarray) -> None:
            self._keep_cond(k, tok, cond)
            if k + 1 >= tokens:
                raise _Stop

        try:
            run_request(self.backend, self.tokenizer, Request([prompt], opts), callback=stop,
                        max_tokens=self.max_tokens)
        except _Stop:
            pass
        decode_images(self.backend, zero_tokens(opts, self.config), opts.height, opts.width)
        return time.perf_counter() - start

    def sampler_micro(self, opts: GenerationOptions, calls: int) -> tuple[float | None, float | None]:
        """(fused graph ms, per-step head_step loop ms) per token, on a condition the loop produced."""
        if self.cond is None:
            return None, None
        b, sampler = opts.images_per_prompt, opts.sampler_config()
        noise = noise_source(opts, self.config).next()
        cfg = np.full(b, opts.cfg, np.float32)
        fused = None
        text = Guidance.TEXT
        if self.backend.fused_sampler(sampler, text) is not None:
            fused = time_calls(lambda: self.backend.sample(self.cond, noise, text, cfg, None, sampler), calls)
        steps = None
        if self.backend.has("head_step"):
            steps = time_calls(lambda: self.backend.sample_steps(self.cond, noise, text, cfg, None, sampler), calls)
        return fused, steps

    def kv_capacity(self, opts: GenerationOptions, prompt: str) -> int:
        """Slots per row of the backend's cache (the exported capacity: the graph attends over all of them)."""
        cache = getattr(self.backend, "cache", None)
        return self.backend.max_capacity() or (cache.capacity if cache is not None else 0)

    def stream_bytes(self) -> tuple[int | None, float | None]:
        """(backbone weight bytes a decode step reads, head bytes per parameter), from the graph files run."""
        manifest = getattr(self.backend, "manifest", None)
        precisions = getattr(self.backend, "graph_precision", {})
        if manifest is None or "backbone" not in precisions:
            return None, None
        from .graph_bytes import graph_stream_bytes

        decode = graph_stream_bytes(manifest.path("backbone", precisions["backbone"]))
        head = next((g for g in ("head_sampler", "head_step") if g in precisions), None)
        if head is None:
            return decode, None
        fp32 = graph_stream_bytes(manifest.path(head))
        return decode, 4 * graph_stream_bytes(manifest.path(head, precisions[head])) / fp32 if fp32 else None

    def threads(self) -> dict[str, int]:
        return dict(getattr(self.backend, "thread_counts", lambda: {})())
