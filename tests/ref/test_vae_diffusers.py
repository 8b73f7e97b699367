"""The reference Flux-style VAE equals diffusers' AutoencoderKL with the same weights (fp32, <= 1e-5).

Our keys use the Flux names of the official checkpoint; ``flux_to_diffusers`` is the explicit mapping.
"""
from __future__ import annotations

import re

import pytest
import torch

TOL = 1e-5


def flux_to_diffusers(key: str, value: torch.Tensor, n_levels: int) -> tuple[str, torch.Tensor]:
    """One Flux-named VAE tensor -> (diffusers name, tensor)."""
    side, rest = key.split(".", 1)
    m = re.fullmatch(r"down\.(\d+)\.block\.(\d+)\.(.+)", rest)
    if m:
        rest = f"down_blocks.{m[1]}.resnets.{m[2]}.{m[3]}"
    m = re.fullmatch(r"down\.(\d+)\.downsample\.(.+)", rest)
    if m:
        rest = f"down_blocks.{m[1]}.downsamplers.0.{m[2]}"
    m = re.fullmatch(r"up\.(\d+)\.block\.(\d+)\.(.+)", rest)
    if m:  # our up.{i} is level i (0 = full resolution); diffusers counts from the deepest level
        rest = f"up_blocks.{n_levels - 1 - int(m[1])}.resnets.{m[2]}.{m[3]}"
    m = re.fullmatch(r"up\.(\d+)\.upsample\.(.+)", rest)
    if m:
        rest = f"up_blocks.{n_levels - 1 - int(m[1])}.upsamplers.0.{m[2]}"
    rest = rest.replace(".nin_shortcut.", ".conv_shortcut.")
    rest = rest.replace("mid.block_1.", "mid_block.resnets.0.").replace("mid.block_2.", "mid_block.resnets.1.")
    m = re.fullmatch(r"mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", rest)
    if m:
        name = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[m[1]]
        rest = f"mid_block.attentions.0.{name}.{m[2]}"
        if m[1] != "norm" and m[2] == "weight":
            value = value[:, :, 0, 0]  # 1x1 conv -> Linear
    rest = re.sub(r"^norm_out\.", "conv_norm_out.", rest)
    return f"{side}.{rest}", value


def diffusers_vae(vae_cfg):
    from diffusers import AutoencoderKL

    n = len(vae_cfg.ch_mult)
    return AutoencoderKL(in_channels=vae_cfg.in_channels, out_channels=vae_cfg.out_ch,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(vae_cfg.ch * m for m in vae_cfg.ch_mult),
                         layers_per_block=vae_cfg.num_res_blocks, latent_channels=vae_cfg.z_channels,
                         norm_num_groups=32, act_fn="silu", use_quant_conv=False, use_post_quant_conv=False,
                         mid_block_add_attention=True).eval()


@pytest.fixture(scope="module")
def pair(tiny_random):
    cfg, _, vae = tiny_random
    ref = diffusers_vae(cfg.vae)
    n = len(cfg.vae.ch_mult)
    state = dict(flux_to_diffusers(k, v.clone(), n) for k, v in vae.state_dict().items())
    want = ref.state_dict()
    assert set(state) == set(want), (f"unmapped: {sorted(set(state) - set(want))[:5]}, "
                                     f"not covered: {sorted(set(want) - set(state))[:5]}")
    bad = [k for k in state if state[k].shape != want[k].shape]
    assert not bad, f"shape mismatch after mapping: {bad[:5]}"
    ref.load_state_dict(state, strict=True)
    return cfg, vae, ref


def test_mapping_is_a_bijection(tiny_random):
    cfg, _, vae = tiny_random
    keys = [flux_to_diffusers(k, v, len(cfg.vae.ch_mult))[0] for k, v in vae.state_dict().items()]
    assert len(set(keys)) == len(keys)
    # spot checks of the reversed up index
    assert flux_to_diffusers("decoder.up.0.block.2.conv1.weight", torch.zeros(1), 4)[0] == \
        "decoder.up_blocks.3.resnets.2.conv1.weight"
    assert flux_to_diffusers("decoder.up.3.upsample.conv.bias", torch.zeros(1), 4)[0] == \
        "decoder.up_blocks.0.upsamplers.0.conv.bias"


def test_decoder_matches_diffusers(pair, assert_close):
    cfg, vae, ref = pair
    latents = torch.randn(2, cfg.vae.z_channels, 8, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = vae.decode(latents)
        theirs = ref.decode(latents).sample
    assert ours.shape == (2, 3, 64, 48)
    assert_close("decoder image", ours, theirs, TOL, dims=("batch", "channel", "y", "x"))
    assert ours.std() > 0.05


def image_batch(seed=2):
    return torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_encoder_moments_match_diffusers(pair, assert_close):
    cfg, vae, ref = pair
    image = image_batch()
    with torch.no_grad():
        ours = vae.encoder(image)
        theirs = ref.encoder(image)
    assert ours.shape == (2, 2 * cfg.vae.z_channels, 8, 6)
    assert_close("encoder moments", ours, theirs, TOL, dims=("batch", "channel", "y", "x"))


def patch_layer_norm(mean: torch.Tensor, psz: int, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm (no affine) over the C*psz*psz values of every psz x psz latent patch, written out with loops."""
    out = torch.empty_like(mean)
    b, c, h, w = mean.shape
    for n in range(b):
        for row in range(h // psz):
            for col in range(w // psz):
                ys, xs = slice(row * psz, (row + 1) * psz), slice(col * psz, (col + 1) * psz)
                patch = mean[n, :, ys, xs].double()
                mu = patch.mean()
                var = ((patch - mu) ** 2).mean()
                out[n, :, ys, xs] = ((patch - mu) / torch.sqrt(var + eps)).to(mean.dtype)
    return out


def test_encode_is_token_normed_posterior_mean(pair, assert_close):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    cfg, vae, ref = pair
    assert cfg.vae.encoder_norm and cfg.vae.psz == 2
    image = image_batch(seed=5)
    with torch.no_grad():
        ours = vae.encode(image)
        posterior = ref.encode(image).latent_dist
    assert isinstance(posterior, DiagonalGaussianDistribution)
    want = patch_layer_norm(posterior.mean, cfg.vae.psz)
    assert_close("encode() latents", ours, want, TOL, dims=("batch", "channel", "y", "x"))
    # Not the raw mean: the norm must have done something.
    assert (ours - posterior.mean).abs().max() > 1e-2
