"""The backend protocol: every backend runs the same graphs; the loop in ``nextstep_trt.runtime.loop`` is written once against it.

A backend implements ``run(graph, feeds)`` (one graph call on host arrays). The KV cache bookkeeping, the fused
sampler (or its per-step fallback through ``head_step``) and the VAE calls are shared here; a device backend
(TensorRT) overrides the hot paths to keep tensors on the GPU. Torch-free.
"""
from __future__ import annotations

import abc
from typing import Callable

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.precision import KVCache, block_misfit, misfit_text
from nextstep_trt.export.profile import SAMPLERS, guidance_of, sampler_of
from nextstep_trt.export.spec import GraphSpec, kv_names
from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.sampling import Guidance, SamplerConfig, run_sampler, sampler_steps

Feeds = dict[str, np.ndarray]


def layer_norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """No-affine LayerNorm over the last dim (the token norm), in numpy."""
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps)).astype(x.dtype)


def sampler_feeds(cond, noise, guidance: Guidance, cfg, cfg_img) -> Feeds:
    """The inputs of a fused sampler graph of this layout."""
    feeds = {"cond": cond, "noise": noise}
    if guidance is not Guidance.NONE:
        feeds["cfg"] = cfg
    if guidance is Guidance.TEXT_IMAGE:
        feeds["cfg_img"] = cfg_img
    return feeds


def unquantized_notices(manifest, graph_precision: dict) -> list[str]:
    """One notice per block-size miss for the graphs of a weight-only precision that quantize no linear (their
    weights then run at fp32): what the ONNX Runtime and TensorRT backends say when they open such graphs."""
    graphs: dict[tuple, list[str]] = {}
    for g, p in graph_precision.items():
        recipe = manifest.entry(g, p).get("recipe", {}) if p.weight_only else {}
        misfit = block_misfit(recipe) if recipe and not recipe.get("quantized") else None
        if misfit is not None:
            _, widths, fit = misfit
            graphs.setdefault((p.value, recipe["block_size"], widths, fit), []).append(g)
    return [f"the {p} {', '.join(names)} graph(s) quantize no linear (their linears of "
            f"{misfit_text(widths, block, fit)}): the weights run at fp32"
            for (p, block, widths, fit), names in graphs.items()]


class HostKVCache:
    """One [rows,KVH,C,D] buffer per layer and kind, preallocated once, plus the [rows,C] mask of valid slots."""

    def __init__(self, cfg: NextStepConfig, rows: int, capacity: int, dtype=np.float32):
        bb = cfg.backbone
        shape = (rows, bb.num_kv_heads, capacity, bb.head_dim)
        self.names = kv_names("past_key", bb.num_layers) + kv_names("past_value", bb.num_layers)
        self.buffers = {n: np.zeros(shape, dtype=dtype) for n in self.names}
        self.buffer_ids = frozenset(id(b) for b in self.buffers.values())    # is an array one of them (fast)
        self.mask = np.zeros((rows, capacity), dtype=np.int64)
        self.pos = 0

    @property
    def dtype(self) -> np.dtype:
        return self.buffers[self.names[0]].dtype

    @property
    def capacity(self) -> int:
        return self.mask.shape[1]

    def reset(self) -> None:
        self.mask[:] = 0
        self.pos = 0

    def feeds(self) -> Feeds:
        return {"past_mask": self.mask, **self.buffers}

    def write(self, outputs: Feeds, token_mask: np.ndarray) -> None:
        """Store the new K/V of S tokens at the current position."""
        s = token_mask.shape[1]
        end = self.pos + s
        if end > self.capacity:
            raise UserError(f"KV cache overflow: {end} slots needed, capacity {self.capacity}")
        for name in self.names:
            self.buffers[name][:, :, self.pos:end] = outputs[name.replace("past_", "new_")]
        self.mask[:, self.pos:end] = token_mask
        self.pos = end


class Backend(abc.ABC):
    """Runs the exported graphs. Use as a context manager."""

    name = "backend"

    def __init__(self, config: NextStepConfig, specs: dict[str, GraphSpec]):
        self.config, self.specs = config, specs
        self.cache: HostKVCache | None = None
        self.notices: list[str] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Release sessions, engines and buffers."""

    @abc.abstractmethod
    def run(self, graph: str, feeds: Feeds) -> Feeds:
        """One call of one graph on host arrays."""

    def level1_view(self, graph: str) -> tuple[GraphSpec, Callable[[Feeds], Feeds], KVCache]:
        """The spec and the runner level 1 checks ``graph`` through (inputs and outputs in the reference's types),
        and the cache type its bounds are for."""
        return self.spec(graph), lambda feeds: self.run(graph, feeds), KVCache.FP32

    def has(self, graph: str) -> bool:
        return graph in self.specs

    def spec(self, graph: str) -> GraphSpec:
        if graph not in self.specs:
            raise UserError(f"the {self.name} backend has no {graph} graph (have: {', '.join(self.specs)})")
        return self.specs[graph]

    # --- KV cache and backbone -------------------------------------------------------------------------------------

    def max_capacity(self) -> int | None:
        """Cache slots per row this backend supports (None: any)."""
        spec = self.specs.get("backbone")
        return spec.attrs.get("kv_capacity") if spec else None

    def cache_dtype(self) -> np.dtype:
        """What the backbone graph keeps its cache in (float32; int8 for an ONNX Runtime graph with an int8 cache)."""
        spec = self.specs.get("backbone")
        return spec.tensor(kv_names("past_key", 1)[0]).np_dtype if spec else np.dtype(np.float32)

    def check_capacity(self, needed: int) -> int:
        """The cache slots per row to allocate; a UserError when ``needed`` exceeds the exported capacity."""
        cap = self.max_capacity()
        if cap is not None and needed > cap:
            raise UserError(f"prompt + image need {needed} cache slots; the exported profile holds {cap} "
                            "(shorten the prompt, lower the resolution, or re-export with a bigger profile)")
        return cap or needed

    def start(self, rows: int, needed: int) -> None:
        """A fresh cache for ``rows`` rows that must hold ``needed`` tokens (prompt + image)."""
        capacity = self.check_capacity(needed)
        dtype = self.cache_dtype()
        if self.cache is None or self.cache.mask.shape != (rows, capacity) or self.cache.dtype != dtype:
            self.cache = HostKVCache(self.config, rows, capacity, dtype)
        self.cache.reset()

    def backbone(self, input_ids, image_tokens, image_mask, position_ids, token_mask) -> np.ndarray:
        """Run the backbone on S new tokens per row against the cache; store their K/V; return cond [rows,H]."""
        feeds = {"input_ids": input_ids, "image_tokens": image_tokens, "image_mask": image_mask,
                 "position_ids": position_ids, "token_mask": token_mask, **self.cache.feeds()}
        out = self.run("backbone", feeds)
        self.cache.write(out, token_mask)
        return out["cond"]

    # --- head ------------------------------------------------------------------------------------------------------

    def velocity(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        """One head_step call: v [rows,D]."""
        return self.run("head_step", {"x": x, "t": t, "cond": cond})["v"]

    def fused_sampler(self, sampler: SamplerConfig, guidance: Guidance) -> str | None:
        """The fused sampler graph exported for exactly this sampler and CFG layout, if any."""
        for name in SAMPLERS:
            spec = self.specs.get(name)
            if spec is not None and guidance_of(spec) is guidance and sampler_of(spec) == sampler:
                return name
        return None

    def sample(self, cond, noise, guidance: Guidance, cfg, cfg_img, sampler: SamplerConfig) -> np.ndarray:
        """One image token [B,D]: the fused graph when one matches ``sampler`` and ``guidance``, else N head_step
        calls (said once in ``notices``). cond [R*B,H], noise [N+1,B,D], cfg / cfg_img [B] or None."""
        fused = self.fused_sampler(sampler, guidance)
        if fused is not None:
            return self.run(fused, sampler_feeds(cond, noise, guidance, cfg, cfg_img))["token"]
        self._notice(f"no fused sampler for {sampler} with {guidance.value} guidance; running head_step once per "
                     "step")
        return self.sample_steps(cond, noise, guidance, cfg, cfg_img, sampler)

    def sample_steps(self, cond, noise, guidance: Guidance, cfg, cfg_img, sampler: SamplerConfig) -> np.ndarray:
        """One image token [B,D] through N head_step calls (the per-step loop; the fallback of ``sample``)."""
        grid = [s.t for s in sampler_steps(sampler)]

        def velocity(x: np.ndarray, k: int) -> np.ndarray:
            return self.velocity(x, np.full(x.shape[0], grid[k], np.float32), cond)

        return run_sampler(velocity, noise, sampler, guidance, cfg, cfg_img, norm=layer_norm).astype(np.float32)

    # --- VAE -------------------------------------------------------------------------------------------------------

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """VAE latents [B,z,h,w] -> image [B,3,8h,8w]."""
        return self.run("vae_decoder", {"latents": latents})["image"]

    def encode(self, image: np.ndarray) -> np.ndarray:
        """Image [B,3,H,W] in [-1,1] -> token-normed latents [B,z,H/8,W/8]."""
        return self.run("vae_encoder", {"image": image})["latents"]

    def _notice(self, text: str) -> None:
        if text not in self.notices:
            self.notices.append(text)
