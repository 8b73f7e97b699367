"""Graph specs: declared once, everything derived; bad profiles and bad inputs are refused with names."""
import subprocess
import sys

import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.export.profile import GRAPHS, DeploymentProfile, graph_specs
from nextstep_trt.export.spec import Dim, GraphSpec, export_sizes, kv_names, sample_feeds
from nextstep_trt.ref.config import large, tiny


def test_dim_rejects_max_below_min():
    with pytest.raises(UserError, match="min <= opt <= max"):
        Dim("seq", 8, 4, 2)


def test_profile_rejects_bad_batch_and_resolution():
    with pytest.raises(UserError):
        DeploymentProfile(max_batch=1, opt_batch=2)
    with pytest.raises(UserError, match="multiple of 16"):
        graph_specs(tiny(), DeploymentProfile(resolutions=((40, 32),)))


def test_unknown_graph_is_refused():
    with pytest.raises(UserError, match="unknown graph"):
        graph_specs(tiny(), DeploymentProfile(), ["backbone", "decoder"])


def test_backbone_names_and_profiles_follow_the_design():
    cfg, prof = tiny(), DeploymentProfile(resolutions=((64, 64),), max_text_tokens=16)
    spec = graph_specs(cfg, prof, ["backbone"])["backbone"]
    assert spec.input_names[:6] == ["input_ids", "image_tokens", "image_mask", "position_ids", "token_mask",
                                    "past_mask"]
    layers = cfg.backbone.num_layers
    assert spec.input_names[6:] == [n for pair in zip(kv_names("past_key", layers), kv_names("past_value", layers))
                                    for n in pair]
    assert spec.output_names[0] == "cond" and spec.output_names[1:3] == ["new_key.0", "new_value.0"]
    prefill, decode = spec.profiles
    assert (prefill.name, decode.name) == ("prefill", "decode")
    assert decode.dim("seq").max == 1 and prefill.dim("seq").max == prof.max_prompt_tokens(16)
    cap = prof.kv_capacity(16)
    # 16 text + 16 template + (16 image + 16 template) + 16 image tokens at 64x64
    assert cap == 16 + 16 + 16 + 16 + 16 == spec.attrs["kv_capacity"]
    assert decode.dim("past").min == 1 and decode.dim("past").max == cap
    assert spec.envelope()["past"].min == 0
    assert spec.dynamic_axes()["past_key.0"] == {0: "rows", 2: "past"}


def test_sampler_spec_fixes_steps_and_rows():
    prof = DeploymentProfile(resolutions=((64, 64),))
    specs = graph_specs(tiny(), prof, ["head_sampler", "head_sampler_edit"])
    t2i, edit = specs["head_sampler"], specs["head_sampler_edit"]
    assert t2i.tensor("noise").axes == (prof.t2i_sampler.steps + 1, "batch", 16)
    assert edit.input_names == ["cond", "noise", "cfg", "cfg_img"] and t2i.input_names == ["cond", "noise", "cfg"]
    assert (t2i.attrs["cfg_rows"], edit.attrs["cfg_rows"]) == (2, 3)
    sizes = export_sizes(edit)
    assert sizes["cond_rows"] == 3 * sizes["batch"]


def test_export_sizes_avoid_zero_and_one_and_stay_in_range():
    for spec in graph_specs(tiny(), DeploymentProfile(resolutions=((32, 32), (64, 64)))).values():
        sizes = export_sizes(spec)
        for name, dim in spec.envelope().items():
            assert sizes[name] >= 2 and dim.min <= sizes[name] <= dim.max, (spec.name, name, sizes[name])


def test_round_trip_through_dict():
    for spec in graph_specs(large(), DeploymentProfile()).values():
        assert GraphSpec.from_dict(spec.to_dict()) == spec
    prof = DeploymentProfile(resolutions=((512, 512), (256, 512)))
    assert DeploymentProfile.from_dict(prof.to_dict()) == prof


def test_check_inputs_names_the_tensor():
    spec = graph_specs(tiny(), DeploymentProfile(resolutions=((32, 32),)), ["head_step"])["head_step"]
    feeds = sample_feeds(spec, {"rows": 2}, np.random.default_rng(0))
    spec.check_inputs(feeds)
    with pytest.raises(UserError, match="head_step.x: dtype float64"):
        spec.check_inputs({**feeds, "x": feeds["x"].astype(np.float64)})
    with pytest.raises(UserError, match="head_step.t: rows=3 disagrees"):
        spec.check_inputs({**feeds, "t": np.zeros(3, np.float32)})
    big = spec.envelope()["rows"].max + 1
    with pytest.raises(UserError, match="outside the exported profile"):
        spec.check_inputs(sample_feeds(spec, {"rows": big}, np.random.default_rng(0)))
    with pytest.raises(UserError, match="missing input"):
        spec.check_inputs({"x": feeds["x"]})


def test_large_graph_sizes_from_the_spec_alone():
    """Large graph sizes come from the spec and the key map, without exporting anything."""
    from nextstep_trt.export.sizes import graph_weight_bytes

    sizes = graph_weight_bytes(large(), DeploymentProfile())
    assert sizes["backbone"] > 14e9 * 4 * 0.99            # fp32 backbone incl. embeddings (no lm_head)
    assert abs(sizes["head_step"] - 157_228_096 * 4) < 1e6
    assert set(sizes) == set(GRAPHS)


def test_spec_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import nextstep_trt.export.spec, nextstep_trt.export.profile, nextstep_trt.export.manifest, nextstep_trt.ref.config, nextstep_trt.ref.prompt\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
