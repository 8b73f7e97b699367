"""Exact token ids of the prompt template with the tiny tokenizer.

Expected ids are built independently: plain text pieces go through the raw ``tokenizers`` file (no transformers
wrapper, no specials), special tokens are the tiny config's fixed ids (cross-checked with convert_tokens_to_ids).
"""
from __future__ import annotations

import numpy as np
import pytest

from nextstep_trt.core.errors import UserError
from nextstep_trt.ref.prompt import edit_prompt, text_to_image_prompt

PAD, AREA, BOI, EOI, PLACEHOLDER = 300, 301, 302, 303, 304


@pytest.fixture(scope="module")
def tok(tiny_bundle):
    return tiny_bundle.tokenizer


@pytest.fixture(scope="module")
def plain(tiny_dir):
    """Plain-text ids from tokenizer.json itself."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    return lambda text: raw.encode(text, add_special_tokens=False).ids


@pytest.fixture(scope="module")
def tokens(tiny_bundle):
    return tiny_bundle.config.tokens


def test_special_ids(tok, tokens):
    assert tok.convert_tokens_to_ids(["[PAD]", "<|image_area|>", "<|begin_of_image|>", "<|end_of_image|>",
                                      "<|image_placeholder|>"]) == [PAD, AREA, BOI, EOI, PLACEHOLDER]
    assert (tokens.pad, tokens.image_area, tokens.boi, tokens.eoi, tokens.placeholder) == (PAD, AREA, BOI, EOI,
                                                                                            PLACEHOLDER)
    assert tok.bos_token is None  # no BOS: the suffix keeps its first token


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    length = max(len(r) for r in rows)
    ids = np.array([[PAD] * (length - len(r)) + r for r in rows])
    mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def check_layout(batch, rows, cfg_rows):
    ids, mask = left_pad(rows)
    assert batch.input_ids.tolist() == ids.tolist()
    assert batch.token_mask.tolist() == mask.tolist()
    assert batch.input_ids.dtype == np.int64 and batch.position_ids.dtype == np.int64
    assert batch.position_ids.tolist() == [list(range(ids.shape[1]))] * len(rows)
    assert batch.cfg_rows == cfg_rows and batch.batch == len(rows) // cfg_rows


def test_single_prompt(tok, tokens, plain):
    batch = text_to_image_prompt(tok, tokens, ["a cat"], (4, 4))
    suffix = [AREA] + plain("4*4") + [BOI]
    assert plain("4*4") == plain("4") + plain("*") + plain("4")  # digits, star, digits; nothing merged away
    cond, uncond = plain("a cat") + suffix, suffix
    check_layout(batch, [cond, uncond], 2)
    assert batch.token_mask[1].sum() == len(suffix) and batch.token_mask[1, 0] == 0
    assert not batch.image_mask.any()


def test_positive_negative_and_grid_order(tok, tokens, plain):
    batch = text_to_image_prompt(tok, tokens, ["a dog"], (2, 3), positive="best quality.", negative="blurry")
    suffix = [AREA] + plain("2*3") + [BOI]  # rows first: H/16 * W/16
    check_layout(batch, [plain("a dog best quality.") + suffix, plain("blurry") + suffix], 2)


def test_several_prompts_branch_major(tok, tokens, plain):
    prompts = ["a cat", "the sky is orange and purple", "fox"]
    batch = text_to_image_prompt(tok, tokens, prompts, (1, 2), negative="low quality", images_per_prompt=2)
    suffix = [AREA] + plain("1*2") + [BOI]
    cond = [plain(p) + suffix for p in prompts for _ in range(2)]      # prompt-major inside the cond branch
    uncond = [plain("low quality") + suffix] * 6
    check_layout(batch, cond + uncond, 2)
    assert batch.batch == 6 and batch.input_ids.shape[0] == 12


def image_string(plain, rows, cols):
    return [AREA] + plain(f"{rows}*{cols}") + [BOI] + [PLACEHOLDER] * (rows * cols) + [EOI]


def test_edit_prompt(tok, tokens, plain):
    grid = (2, 3)
    batch = edit_prompt(tok, tokens, ["Add a hat to the dog.", "Make it winter."], grid,
                        negative="Copy original image.", images_per_prompt=1)
    suffix = [AREA] + plain("2*3") + [BOI]
    image = image_string(plain, *grid)
    cond = [image + plain(t) + suffix for t in ["Add a hat to the dog.", "Make it winter."]]
    uncond1 = [image + plain("Copy original image.") + suffix] * 2
    uncond2 = [plain("Copy original image.") + suffix] * 2
    check_layout(batch, cond + uncond1 + uncond2, 3)
    counts = (batch.input_ids == PLACEHOLDER).sum(axis=1).tolist()
    assert counts == [6, 6, 6, 6, 0, 0]
    assert batch.image_mask.dtype == bool
    assert (batch.image_mask == (batch.input_ids == PLACEHOLDER)).all()
    assert batch.image_mask.sum() == 4 * 6


def test_edit_prompt_positive_and_copies(tok, tokens, plain):
    batch = edit_prompt(tok, tokens, ["Make it winter."], (1, 1), positive="sharp focus", images_per_prompt=2)
    suffix = [AREA] + plain("1*1") + [BOI]
    image = image_string(plain, 1, 1)
    cond = [image + plain("Make it winter. sharp focus") + suffix] * 2
    check_layout(batch, cond + [image + suffix] * 2 + [suffix] * 2, 3)


@pytest.mark.parametrize("prompts", [[""], ["   "], [], ["a cat", ""]])
def test_empty_prompt_rejected(tok, tokens, prompts):
    with pytest.raises(UserError):
        text_to_image_prompt(tok, tokens, prompts, (2, 2))
    with pytest.raises(UserError):
        edit_prompt(tok, tokens, prompts, (2, 2))


def test_over_budget(tok, tokens, plain):
    text = "a watercolor painting of mountains at sunset"
    need = len(plain(text)) + len(plain("2*2")) + 2
    ok = text_to_image_prompt(tok, tokens, [text], (2, 2), max_tokens=need)
    assert ok.length == need
    with pytest.raises(UserError, match="budget"):
        text_to_image_prompt(tok, tokens, [text], (2, 2), max_tokens=need - 1)
    with pytest.raises(UserError):
        edit_prompt(tok, tokens, ["x"], (4, 4), max_tokens=20)  # 16 placeholders + template do not fit
