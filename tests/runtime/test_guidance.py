"""The runtime loop runs the official branch layout of every (cfg, cfg_img) case on its own fused sampler, builds
no unconditional rows at cfg = 1, and reproduces the reference's official-noise images on ONNX Runtime."""
import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.metrics import psnr
from nextstep_trt.ref.options import GenerationOptions
from nextstep_trt.ref.pipeline import edit_image, generate_image
from nextstep_trt.runtime.cases import source_image
from nextstep_trt.runtime.loop import Request, run_request
from nextstep_trt.runtime.ort_backend import OrtBackend

T2I = GenerationOptions(height=32, width=32, steps=3, seed=4, shift=1.0)
EDIT = T2I.replace(shift=3.2, negative_prompt="Copy original image.")


class Counting(OrtBackend):
    """Records the rows of every backbone call and which sampler graph ran."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.rows, self.graphs = [], []

    def run(self, graph, feeds):
        if graph == "backbone":
            self.rows.append(feeds["input_ids"].shape[0])
        self.graphs.append(graph)
        return super().run(graph, feeds)


@pytest.mark.parametrize("edit,cfg,cfg_img,rows,sampler", [
    (False, 2.0, 1.0, 2, "head_sampler"), (False, 1.0, 1.0, 1, "head_sampler_nocfg"),
    (True, 2.0, 1.5, 3, "head_sampler_edit"), (True, 2.0, 1.0, 2, "head_sampler_edit_text"),
    (True, 1.0, 1.0, 1, "head_sampler_edit_nocfg")])
def test_each_layout_runs_its_rows_and_fused_sampler_and_matches_the_reference(tiny_artifacts, tiny_bundle, edit,
                                                                               cfg, cfg_img, rows, sampler):
    art, _ = tiny_artifacts
    opts = (EDIT if edit else T2I).replace(cfg=cfg, cfg_img=cfg_img)
    image = source_image(32, 32) if edit else None
    with Counting(art) as backend:
        got = run_request(backend, tiny_bundle.tokenizer, Request(["make it blue"], opts, image))
        assert not backend.notices, backend.notices          # no head_step fallback
    assert set(backend.rows) == {rows}                      # B = 1 image: R rows in every backbone call
    assert sampler in backend.graphs and "head_step" not in backend.graphs
    ref = (edit_image(tiny_bundle, image, "make it blue", **opts.to_dict()) if edit else
           generate_image(tiny_bundle, "make it blue", **opts.to_dict()))
    assert psnr(np.asarray(ref[0])[None], got) >= 60.0


@pytest.mark.parametrize("edit", [False, True])
def test_official_noise_gives_the_reference_image_on_onnxruntime(tiny_artifacts, tiny_bundle, edit):
    art, _ = tiny_artifacts
    opts = (EDIT if edit else T2I).replace(cfg=2.0, noise="official")
    image = source_image(32, 32) if edit else None
    with OrtBackend(art) as backend:
        got = run_request(backend, tiny_bundle.tokenizer, Request(["a red cube"], opts, image))
        per_image = run_request(backend, tiny_bundle.tokenizer, Request(["a red cube"], opts.replace(noise="per-image"),
                                                                       image))
    ref = (edit_image(tiny_bundle, image, "a red cube", **opts.to_dict()) if edit else
           generate_image(tiny_bundle, "a red cube", **opts.to_dict()))
    assert psnr(np.asarray(ref[0])[None], got) >= 60.0
    assert np.abs(got.astype(int) - per_image).max() > 20


def test_a_batch_that_mixes_layouts_is_refused(tiny_artifacts, tiny_bundle):
    art, _ = tiny_artifacts
    with OrtBackend(art) as backend, pytest.raises(UserError, match="mixes guidance layouts"):
        run_request(backend, tiny_bundle.tokenizer, Request(["a", "b"], T2I, cfgs=[1.0, 2.0]))
    with OrtBackend(art) as backend, pytest.raises(UserError, match="cfg"):
        run_request(backend, tiny_bundle.tokenizer, Request(["a"], T2I, cfgs=[float("inf")]))
