"""The torch backend: the reference modules behind the backend protocol (the sampler as the official code runs it)."""
from __future__ import annotations

import numpy as np
import torch

from nextstep_trt.export.components import COMPONENTS
from nextstep_trt.export.profile import GRAPHS, DeploymentProfile, graph_specs
from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.sampler import sample_token
from nextstep_trt.ref.sampling import Guidance, SamplerConfig

from .backend import Backend, Feeds


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, bundle: ModelBundle, profile: DeploymentProfile | None = None):
        super().__init__(bundle.config, graph_specs(bundle.config, profile or DeploymentProfile(), GRAPHS))
        self.bundle = bundle
        self._modules: dict[str, torch.nn.Module] = {}

    def max_capacity(self) -> int | None:
        return None  # eager torch has no exported profile

    def run(self, graph: str, feeds: Feeds) -> Feeds:
        spec = self.spec(graph)
        if graph not in self._modules:
            self._modules[graph] = COMPONENTS[graph].module(self.bundle, spec).eval()
        with torch.no_grad():
            out = self._modules[graph](*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.input_names])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: t.numpy() for n, t in zip(spec.output_names, out)}

    def sample(self, cond, noise, guidance: Guidance, cfg, cfg_img, sampler: SamplerConfig) -> np.ndarray:
        """The reference sampler: a full head call per step."""
        t = lambda a: None if a is None else torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        with torch.no_grad():
            return sample_token(self.bundle.model.image_head, t(cond), t(noise), sampler, guidance, t(cfg),
                                t(cfg_img)).float().numpy()
