"""Thin torch modules that fix each graph's signature over ``nextstep_ref`` (nothing patched)."""
from __future__ import annotations

import torch
from torch import nn

from nextstep_trt.ref.head import FlowMatchingHead, token_norm
from nextstep_trt.ref.model import NextStep
from nextstep_trt.ref.sampling import Guidance, SamplerConfig, run_sampler, sampler_steps
from nextstep_trt.ref.vae import AutoEncoder

from .fuse import fuse_sibling_linears


class BackboneGraph(nn.Module):
    """(ids, image tokens, masks, positions, past K/V per layer) -> (cond, new K/V per layer). Prefill and decode.

    ``onnx_rewrites`` run on the traced ONNX model (exporter.trace, metatrace.trace_meta): the q/k/v and the
    gate/up projections of every layer become one MatMul each (fuse.py), a decode step's kernel count drops and
    ONNX Runtime / TensorRT read the layer's input once."""

    onnx_rewrites = (fuse_sibling_linears,)

    def __init__(self, model: NextStep):
        super().__init__()
        self.model = model

    def forward(self, input_ids, image_tokens, image_mask, position_ids, token_mask, past_mask, *past_kv):
        pairs = list(zip(past_kv[0::2], past_kv[1::2]))
        cond, new_kv = self.model(input_ids, image_tokens, image_mask, position_ids, token_mask, past_mask, pairs)
        return (cond, *[t for kv in new_kv for t in kv])


class HeadStepGraph(nn.Module):
    """(x, t, cond) -> v: one velocity evaluation."""

    def __init__(self, head: FlowMatchingHead):
        super().__init__()
        self.head = head

    def forward(self, x, t, cond):
        return self.head(x, t, cond)


class HeadSamplerGraph(nn.Module):
    """All N sampler steps with the CFG combine (and token norm) in one call; noise is an input.

    The condition embedding is computed once per call; the time embeddings of the fixed grid are constants; the
    adaLN modulations depend on time and condition only, so each layer's are one GEMM over all N steps (M = N*R*B
    rows, its weights read once per token), split into shift / 1 + scale / gate once, and cut into the N steps'
    [R*B,dim] pieces by one Split each: a step reads its pieces with no kernel of its own.
    """

    def __init__(self, head: FlowMatchingHead, sampler: SamplerConfig, guidance: Guidance):
        super().__init__()
        self.net, self.sampler, self.guidance = head.net, sampler, guidance
        grid = torch.tensor([s.t for s in sampler_steps(sampler)], dtype=torch.float32)
        with torch.no_grad():
            temb = self.net.time_embed(grid)                                          # [N,dim]
        self.register_buffer("time_embeddings", temb, persistent=False)

    def forward(self, cond, noise, cfg=None, cfg_img=None):
        n, dim = self.time_embeddings.shape
        y_cond = self.net.cond_embed(cond)                                            # [R*B,dim]
        y = (self.time_embeddings[:, None] + y_cond[None]).reshape(-1, dim)           # [N*R*B,dim], step-major
        rows = [cond.shape[0]] * n
        steps = [[part.split(rows, dim=0) for part in parts]                          # N pieces [R*B,dim] each
                 for parts in self.net.modulations(y)]

        def velocity(x: torch.Tensor, k: int) -> torch.Tensor:
            return self.net.velocity_modulated(x, [[piece[k] for piece in parts] for parts in steps])

        return run_sampler(velocity, noise, self.sampler, self.guidance, cfg, cfg_img, norm=token_norm)


class VaeDecoderGraph(nn.Module):
    def __init__(self, vae: AutoEncoder):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents)


class VaeEncoderGraph(nn.Module):
    def __init__(self, vae: AutoEncoder):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        return self.vae.encode(image)
