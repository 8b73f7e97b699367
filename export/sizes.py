"""What each graph weighs, from the checkpoint key map alone: no export, no torch (large() included)."""
from __future__ import annotations

import math

from nextstep_trt.ref.config import NextStepConfig
from nextstep_trt.ref.weights import backbone_shapes, head_shapes, model_shapes, vae_shapes

from .profile import SAMPLER_GRAPHS, DeploymentProfile, graph_specs

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}


def _count(shapes: dict[str, tuple[int, ...]], keep=lambda key: True) -> int:
    return sum(math.prod(s) for k, s in shapes.items() if keep(k))


def graph_parameters(cfg: NextStepConfig, profile: DeploymentProfile) -> dict[str, int]:
    """Parameters stored in each graph (constants such as the sampler's time embeddings included)."""
    model = model_shapes(cfg)
    backbone = _count(backbone_shapes(cfg.backbone), lambda k: k != "lm_head.weight")
    projectors = _count(model, lambda k: k.startswith(("image_in_projector", "image_out_projector")))
    head = _count(head_shapes(cfg.head))
    time_mlp = _count(head_shapes(cfg.head), lambda k: ".time_embed." in k)
    vae = vae_shapes(cfg.vae)
    sampler_steps = {g.name: (profile.edit_sampler if g.edit else profile.t2i_sampler).steps for g in SAMPLER_GRAPHS}
    out = {"backbone": backbone + projectors, "head_step": head,
           **{name: head - time_mlp + steps * cfg.head.dim for name, steps in sampler_steps.items()},
           "vae_decoder": _count(vae, lambda k: k.startswith("decoder.")),
           "vae_encoder": _count(vae, lambda k: k.startswith("encoder."))}
    return {name: out[name] for name in graph_specs(cfg, profile)}


def graph_weight_bytes(cfg: NextStepConfig, profile: DeploymentProfile, dtype: str = "fp32") -> dict[str, int]:
    """Bytes of weights per graph at a storage dtype."""
    return {k: v * DTYPE_BYTES[dtype] for k, v in graph_parameters(cfg, profile).items()}
