"""The prompt template of the official pipeline, as numpy arrays (torch-free).

Rows are branch-major: [cond x B] + [uncond x B] (+ [uncond2 x B] for editing), B = prompts x images per prompt.
Each row is left-padded text, then ``<|image_area|>{rows}*{cols}`` and ``<|begin_of_image|>``.
Position ids count the pad slots (arange over the whole row); pads are masked only as keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nextstep_trt.core.errors import UserError

from .config import SpecialTokens
from .tokenizer import SPECIAL_STRINGS


@dataclass(frozen=True)
class PromptBatch:
    input_ids: np.ndarray      # [R*B,L] int64
    token_mask: np.ndarray     # [R*B,L] int64, 1 = real token, 0 = left pad
    image_mask: np.ndarray     # [R*B,L] bool, placeholder slots that take input-image tokens (editing)
    position_ids: np.ndarray   # [R*B,L] int64
    cfg_rows: int              # R: 2 for text-to-image, 3 for editing

    @property
    def batch(self) -> int:
        """B: images generated."""
        return self.input_ids.shape[0] // self.cfg_rows

    @property
    def length(self) -> int:
        return self.input_ids.shape[1]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _area_suffix(tokenizer, tokens: SpecialTokens, grid: tuple[int, int]) -> list[int]:
    ids = _ids(tokenizer, f"{SPECIAL_STRINGS['image_area']}{grid[0]}*{grid[1]}")
    if getattr(tokenizer, "bos_token", None):  # the official code drops a BOS it assumes the tokenizer added
        ids = ids[1:]
    return ids + [tokens.boi]


def _pack(rows: list[list[int]], tokens: SpecialTokens, cfg_rows: int, max_tokens: int | None) -> PromptBatch:
    length = max(len(r) for r in rows)
    if max_tokens is not None and length > max_tokens:
        raise UserError(f"prompt is {length} tokens, over the budget of {max_tokens}")
    ids = np.full((len(rows), length), tokens.pad, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), ids.shape).copy()
    return PromptBatch(ids, mask, ids == tokens.placeholder, positions, cfg_rows)


def _negatives(negative: str | Sequence[str], n: int) -> list[str]:
    """One negative prompt per prompt: a single string is shared by all."""
    if isinstance(negative, str):
        return [negative] * n
    if len(negative) != n:
        raise UserError(f"{len(negative)} negative prompts for {n} prompts")
    return [x or "" for x in negative]


def _check_prompts(prompts: list[str]) -> None:
    if not prompts:
        raise UserError("no prompt given")
    for p in prompts:
        if not p or not p.strip():
            raise UserError("the prompt is empty")


def text_to_image_prompt(tokenizer, tokens: SpecialTokens, prompts: list[str], grid: tuple[int, int],
                         positive: str = "", negative: str | Sequence[str] = "", images_per_prompt: int = 1,
                         max_tokens: int | None = None) -> PromptBatch:
    """cond row: caption (+ " " + positive); uncond row: the negative prompt (empty by default; one per prompt
    when a list)."""
    _check_prompts(prompts)
    suffix = _area_suffix(tokenizer, tokens, grid)
    cond = [_ids(tokenizer, p + (" " + positive if positive else "")) + suffix for p in prompts]
    uncond = [_ids(tokenizer, n) + suffix for n in _negatives(negative, len(prompts))]
    rows = [r for r in cond for _ in range(images_per_prompt)]
    uncond_rows = [r for r in uncond for _ in range(images_per_prompt)]
    return _pack(rows + uncond_rows, tokens, 2, max_tokens)


def edit_prompt(tokenizer, tokens: SpecialTokens, instructions: list[str], grid: tuple[int, int],
                positive: str = "", negative: str | Sequence[str] = "", images_per_prompt: int = 1,
                max_tokens: int | None = None) -> PromptBatch:
    """Three branches: [image + instruction (+ positive)] [image + negative] [negative only].

    The input image enters as ``<|image_area|>h*w <boi> <placeholder> x (h*w) <eoi>``; ``image_mask`` marks the
    placeholder slots of the first two branches, which take the input image's tokens in raster order.
    """
    _check_prompts(instructions)
    n = grid[0] * grid[1]
    image = (f"{SPECIAL_STRINGS['image_area']}{grid[0]}*{grid[1]}{SPECIAL_STRINGS['boi']}"
             + SPECIAL_STRINGS["placeholder"] * n + SPECIAL_STRINGS["eoi"])
    suffix = _area_suffix(tokenizer, tokens, grid)
    cond = [_ids(tokenizer, image + p + (" " + positive if positive else "")) + suffix for p in instructions]
    negatives = [n for n in _negatives(negative, len(instructions)) for _ in range(images_per_prompt)]
    rows = [r for r in cond for _ in range(images_per_prompt)]
    uncond1 = [_ids(tokenizer, image + n) + suffix for n in negatives]
    uncond2 = [_ids(tokenizer, n) + suffix for n in negatives]
    return _pack(rows + uncond1 + uncond2, tokens, 3, max_tokens)


def scatter_image_tokens(prompt: PromptBatch, image_tokens: np.ndarray) -> np.ndarray:
    """The input image's tokens [B,N,D] placed in the placeholder slots of the rows that carry it -> [R*B,L,D]."""
    b = prompt.batch
    out = np.zeros(prompt.input_ids.shape + (image_tokens.shape[-1],), dtype=np.float32)
    for row in range(prompt.input_ids.shape[0]):
        slots = np.flatnonzero(prompt.image_mask[row])
        if slots.size:
            if slots.size != image_tokens.shape[1]:
                raise UserError(f"prompt row {row} has {slots.size} image slots for {image_tokens.shape[1]} tokens")
            out[row, slots] = image_tokens[row % b]
    return out
