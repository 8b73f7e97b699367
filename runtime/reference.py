"""The reference side of parity, computed live with the PyTorch reference (torch)."""
from __future__ import annotations

import numpy as np
import torch

from nextstep_trt.export.components import COMPONENTS
from nextstep_trt.export.profile import DeploymentProfile
from nextstep_trt.export.spec import GraphSpec
from nextstep_trt.ref.checkpoint import ModelBundle
from nextstep_trt.ref.pipeline import decode_tokens, encode_image, generate_tokens
from nextstep_trt.ref.prompt import scatter_image_tokens

from .cases import loop_cases
from .parity import LoopCase, LoopTrace, ReplayNoise, run_trace
from .torch_backend import TorchBackend


class LiveReference:
    """Level-1 cases and outputs, level-2 traces (torch backend, its own tokens) and level-3 runs of the
    reference pipeline, which is a separate loop from the runtime's."""

    def __init__(self, bundle: ModelBundle, profile: DeploymentProfile, seed: int = 0):
        self.bundle, self.profile, self.seed = bundle, profile, seed
        self._cases: list[LoopCase] | None = None

    def level1(self, spec: GraphSpec, redraw: bool = True) -> list[tuple[str, dict, dict]]:
        """(case label, inputs, reference outputs) for one graph, on the same cases as export validation
        (``redraw``: with the extra draws a bound on the mean over cases needs)."""
        return list(COMPONENTS[spec.name].level1_references(self.bundle, spec, self.profile,
                                                            np.random.default_rng(self.seed), redraw=redraw))

    def cases(self) -> list[LoopCase]:
        if self._cases is None:
            self._cases = loop_cases(self.bundle.tokenizer, self.bundle.config, self.profile)
            for case in self._cases:
                if case.source_image is not None:
                    source = encode_image(self.bundle, np.repeat(case.source_image, case.prompt.batch, axis=0))
                    case.image_tokens = scatter_image_tokens(case.prompt, source)
        return self._cases

    def level2(self, case: LoopCase) -> LoopTrace:
        """The teacher-forcing reference: cond, velocity and tokens of the torch backend on its own tokens."""
        return run_trace(TorchBackend(self.bundle), case, image_tokens=case.image_tokens)

    def level3(self, case: LoopCase) -> LoopTrace:
        """The reference pipeline (nextstep_ref, official loop structure) on the case's noise."""
        with torch.no_grad():
            tokens = generate_tokens(self.bundle, case.prompt, case.opts, ReplayNoise(case.noise), case.image_tokens)
        image = decode_tokens(self.bundle, tokens, case.opts.height, case.opts.width)
        return LoopTrace(tokens=tokens, image=image)
