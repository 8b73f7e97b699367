"""The reference backbone equals transformers' Qwen2ForCausalLM loaded with the same weights.

NextStep convention: left padding, position_ids = arange(L) on every row (pad slots included), pads masked only
as keys. Compared at the non-pad positions: final-normed hidden states and lm_head logits, fp32, <= 1e-5.
"""
from __future__ import annotations

import pytest
import torch

TOL = 1e-5


def qwen2_from_ours(cfg, model):
    """A stock Qwen2ForCausalLM with our weights: backbone keys get ``model.``, lm_head stays, image_* are dropped."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    b = cfg.backbone
    assert b.hidden_size // b.num_heads == b.head_dim  # Qwen2 derives head_dim from hidden / heads
    hf_cfg = Qwen2Config(vocab_size=b.vocab_size, hidden_size=b.hidden_size, intermediate_size=b.intermediate_size,
                         num_hidden_layers=b.num_layers, num_attention_heads=b.num_heads,
                         num_key_value_heads=b.num_kv_heads, hidden_act="silu", rms_norm_eps=b.rms_norm_eps,
                         rope_parameters={"rope_type": "default", "rope_theta": b.rope_theta},
                         tie_word_embeddings=False, use_sliding_window=False, max_position_embeddings=4096,
                         attention_dropout=0.0)
    hf_cfg._attn_implementation = "eager"
    hf = Qwen2ForCausalLM(hf_cfg).eval()
    # transformers 5.23 hard-codes q/k/v bias=True and o_proj bias=False; make sure that is what we get.
    attn = hf.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.k_proj.bias is not None and attn.v_proj.bias is not None
    assert attn.o_proj.bias is None
    assert b.attention_bias and not b.o_attention_bias

    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(("image_in_projector", "image_out_projector", "image_head")):
            continue
        state[key if key.startswith("lm_head") else "model." + key] = value.clone()
    result = hf.load_state_dict(state, strict=False)
    hf_keys = set(hf.state_dict())
    assert not result.unexpected_keys, result.unexpected_keys
    # Only non-persistent buffers (rotary inv_freq) may be left out.
    assert set(result.missing_keys) <= {k for k in hf_keys if "rotary_emb" in k}, result.missing_keys
    assert hf_keys - set(state) <= {k for k in hf_keys if "rotary_emb" in k}
    return hf


@pytest.fixture(scope="module")
def pair(tiny_random):
    cfg, model, _ = tiny_random
    hf = qwen2_from_ours(cfg, model)
    # Sanity: the weights really are shared (no re-init by post_init or a tied lm_head).
    assert torch.equal(hf.lm_head.weight, model.lm_head.weight)
    assert torch.equal(hf.model.embed_tokens.weight, model.embed_tokens.weight)
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    return cfg, model, hf


def left_padded(lengths, pad_id, seed=0):
    gen = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.full((len(lengths), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(lengths), length), dtype=torch.int64)
    for row, n in enumerate(lengths):
        ids[row, length - n:] = torch.randint(0, 299, (n,), generator=gen)
        mask[row, length - n:] = 1
    positions = torch.arange(length).expand(len(lengths), -1).clone()
    return ids, mask, positions


def run_ours(model, cfg, ids, mask, positions):
    b = cfg.backbone
    past = [(torch.zeros(ids.shape[0], b.num_kv_heads, 0, b.head_dim),) * 2 for _ in range(b.num_layers)]
    past_mask = torch.zeros(ids.shape[0], 0, dtype=torch.int64)
    with torch.no_grad():
        h, new_kv = model.run_layers(model.embed_tokens(ids), positions, mask, past_mask, past)
        logits = model.lm_head(h)
    assert len(new_kv) == b.num_layers and new_kv[0][0].shape == (ids.shape[0], b.num_kv_heads, ids.shape[1],
                                                                   b.head_dim)
    return h, logits


def run_hf(hf, ids, mask, positions):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                 use_cache=False)
        last = hf.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
    return out, last.last_hidden_state


@pytest.mark.parametrize("lengths", [(7, 4, 1), (6, 6)], ids=["left-padded", "no-padding"])
def test_backbone_matches_qwen2(pair, lengths, assert_close):
    cfg, model, hf = pair
    ids, mask, positions = left_padded(lengths, cfg.tokens.pad)
    h, logits = run_ours(model, cfg, ids, mask, positions)
    out, last_hidden = run_hf(hf, ids, mask, positions)

    # The last entry of hidden_states is taken after the final norm: it equals Qwen2Model's last_hidden_state
    # and feeds lm_head. (Checked, not assumed.)
    assert len(out.hidden_states) == cfg.backbone.num_layers + 1
    hf_h = out.hidden_states[-1]
    assert torch.equal(hf_h, last_hidden), "HF hidden_states[-1] is not the final-normed state"
    assert torch.allclose(hf.lm_head(hf_h), out.logits, atol=1e-6)

    assert_close("final hidden state", h, hf_h, TOL, dims=("row", "position", "feature"), mask=mask)
    assert_close("logits", logits, out.logits, TOL, dims=("row", "position", "vocab"), mask=mask)
    # Non-trivial: the outputs actually vary with the input.
    assert h[mask.bool()].std() > 0.1


def test_left_pad_row_equals_unpadded_row(pair, assert_close):
    """The 4-token row inside the padded batch equals the same 4 tokens alone (RoPE is relative)."""
    cfg, model, hf = pair
    ids, mask, positions = left_padded((7, 4, 1), cfg.tokens.pad)
    h, _ = run_ours(model, cfg, ids, mask, positions)
    alone_ids = ids[1:2, 3:]
    h_alone, _ = run_ours(model, cfg, alone_ids, torch.ones_like(alone_ids), torch.arange(4)[None])
    assert_close("row 1 hidden state (padded vs alone)", h[1:2, 3:], h_alone, TOL, dims=("row", "position", "feature"))


def test_parity_check_detects_a_wrong_weight(pair):
    """The comparison is sensitive: perturbing one q_proj bias in the HF copy breaks it."""
    cfg, model, hf = pair
    ids, mask, positions = left_padded((7, 4, 1), cfg.tokens.pad)
    h, _ = run_ours(model, cfg, ids, mask, positions)
    bias = hf.model.layers[1].self_attn.q_proj.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[0] += 0.5
        out, _ = run_hf(hf, ids, mask, positions)
        err = (h - out.hidden_states[-1])[mask.bool()].abs().max()
        assert err > 1e-3
    finally:
        with torch.no_grad():
            bias.copy_(saved)
