"""Thin torch modules that fix each graph's signature over ``nextstep_ref`` (nothing patched)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nextstep_trt.ref.head import FlowMatchingHead, token_norm
from nextstep_trt.ref.model import NextStep
from nextstep_trt.ref.sampling import Guidance, SamplerConfig, Step, sampler_steps, sde_noise_scale
from nextstep_trt.ref.vae import AutoEncoder

from .fuse import fuse_sibling_linears
from .norm_fold import fold_modulated_norms


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


def branch_weights(guidance: Guidance, cfg, cfg_img, like: torch.Tensor) -> list[torch.Tensor]:
    """``combine_cfg`` as weights [B] per branch: the guided velocity is sum_r w_r v_r (branch order as
    ``Guidance`` lays the rows out). text: cfg, 1 - cfg; text-image: cfg, cfg_img - cfg, 1 - cfg_img."""
    if guidance is Guidance.NONE:
        return [torch.ones(like.shape[0], dtype=like.dtype)]
    if guidance is Guidance.TEXT:
        return [cfg, 1 - cfg]
    return [cfg, cfg_img - cfg, 1 - cfg_img]


def step_coefficients(step: Step) -> tuple[float, float, float]:
    """(a, b, sigma) with x' = a x + b v + sigma xi: ``run_sampler``'s update x + ((1 + t) v - x) dt + sigma xi
    (SDE step) or x + dt v (the last ODE step) with the algebra done."""
    if step.stochastic:
        return 1.0 - step.dt, (1.0 + step.t) * step.dt, sde_noise_scale(step)
    return 1.0, step.dt, 0.0


class HeadSamplerGraph(nn.Module):
    """All N sampler steps with the CFG combine (and token norm) in one call; noise is an input.

    Computes what ``run_sampler`` over the head computes (level 1 compares it with that reference, step by step in
    torch), in few kernels per step for a CPU runtime to dispatch (29 on a 4-block head; the first form had 52):
    - the condition embedding once per call; the time embeddings of the fixed grid are constants; the adaLN
      modulations depend on time and condition only, so each layer's are one GEMM over all N steps (M = N*R*B
      rows, its weights read once per token), cut into the N steps' [R*B,dim] pieces by one Split each;
    - each norm's weight and bias folded into its modulation there (``ln(x) * w * s1 + (b * s1 + shift)``), so a
      step's modulated norm is one LayerNormalization with per-row scale and bias (``norm_fold.py``);
    - the state kept as R*B rows (every branch's copy of x, no Tile per step), and the CFG combine and the update
      as one GEMM: x' = a_k x + b_k M v + sigma_k xi, M [R*B,R*B] = the branch weights of ``branch_weights``,
      repeated for every branch's copy (Gemm's alpha and beta carry b_k and a_k), then the step's noise added.
    """

    onnx_rewrites = (fold_modulated_norms,)

    def __init__(self, head: FlowMatchingHead, sampler: SamplerConfig, guidance: Guidance):
        super().__init__()
        self.net, self.sampler, self.guidance = head.net, sampler, guidance
        steps = sampler_steps(sampler)
        self.coefficients = [step_coefficients(s) for s in steps]                    # (a, b, sigma) per step
        grid = torch.tensor([s.t for s in steps], dtype=torch.float32)
        with torch.no_grad():
            temb = self.net.time_embed(grid)                                          # [N,dim]
        self.register_buffer("time_embeddings", temb, persistent=False)
        self.register_buffer("sigmas", torch.tensor([c[2] for c in self.coefficients]), persistent=False)

    def step_pieces(self, cond: torch.Tensor) -> list[list[tuple[torch.Tensor, ...]]]:
        """Per step, each block's (norm scale, norm shift, gate) and the final layer's (scale, shift), [R*B,dim]."""
        net, (n, dim), rows = self.net, self.time_embeddings.shape, cond.shape[0]
        y = (self.time_embeddings[:, None] + net.cond_embed(cond)[None]).reshape(-1, dim)   # [N*R*B,dim], step-major
        mods = net.modulations(y)
        norms = [(b.in_ln.weight, b.in_ln.bias) for b in net.res_blocks]
        folded = [(w * scale1, b * scale1 + shift, *gate) for (w, b), (shift, scale1, *gate) in zip(norms, mods)]
        shift, scale1 = mods[-1]
        parts = [[p.split([rows] * n, dim=0) for p in layer] for layer in folded + [(scale1, shift)]]
        return [[tuple(p[k] for p in layer) for layer in parts] for k in range(n)]

    def velocity(self, x: torch.Tensor, pieces: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """x [R*B,token_dim] and one step's pieces -> v [R*B,token_dim]."""
        net = self.net
        h = net.input_proj(x)
        for block, (scale, shift, gate) in zip(net.res_blocks, pieces):
            h = h + gate * block.mlp(F.layer_norm(h, h.shape[-1:], eps=block.in_ln.eps) * scale + shift)
        scale, shift = pieces[-1]
        return net.final_layer.linear(F.layer_norm(h, h.shape[-1:], eps=net.final_layer.norm_final.eps) * scale + shift)

    def forward(self, cond, noise, cfg=None, cfg_img=None):
        r, (slots, b, d) = self.guidance.rows, noise.shape                              # slots = N + 1
        eye = (torch.arange(b)[:, None] == torch.arange(b)[None]).to(noise.dtype)       # [B,B]
        weights = branch_weights(self.guidance, cfg, cfg_img, noise[0])
        mix = torch.cat([eye * w[:, None] for w in weights], dim=1).repeat(r, 1)       # [R*B,R*B]
        xi = (noise[1:] * self.sigmas.to(noise.dtype)[:, None, None]).repeat(1, r, 1)  # [N,R*B,D]
        xi = xi.reshape(-1, d).split([r * b] * (slots - 1), dim=0)                     # N pieces [R*B,D]
        x = noise[0].repeat(r, 1)                                                      # [R*B,D]
        for k, ((a, c, sigma), pieces) in enumerate(zip(self.coefficients, self.step_pieces(cond))):
            x = torch.addmm(x, mix, self.velocity(x, pieces), beta=a, alpha=c)
            if sigma:
                x = x + xi[k]
        x = x[:b]
        return token_norm(x) if self.sampler.use_norm else x


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
