"""A one-resolution profile exports the VAE's H/W as fixed sizes; the builder must accept them (min == max)."""
from engine_helpers import build, needs_rtx

from nextstep_trt.cli import main


def test_vae_of_a_single_resolution_profile_builds(tiny_dir, tmp_path, capsys):
    needs_rtx()
    art = tmp_path / "art"
    assert main(["export", "--model", str(tiny_dir), "--out", str(art), "--graphs", "vae_decoder",
                 "--resolutions", "64x64", "--max-batch", "2", "--steps", "3", "--max-text-tokens", "16"]) == 0
    built = build(art, "vae_decoder")
    io = {r["name"]: r["shape"] for r in built.manifest["io"]}
    assert io["latents"][2:] == [8, 8] and io["image"][2:] == [64, 64]     # fixed, and accepted as the spec's
    assert io["latents"][0] == -1                                           # batch stays dynamic
