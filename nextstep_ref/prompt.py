"""The prompt template of the official pipeline, as numpy arrays (torch-free).

Rows are branch-major, B = prompts x images per prompt, in the official ``_build_captions`` layout
(``sampling.Guidance``): [cond x B] alone at cfg = 1; + [negative x B] for text guidance; editing with image
guidance: [image + instruction x B] + [image + negative x B] + [negative x B].
Each row is left-padded text, then ``<|image_area|>{rows}*{cols}`` and ``<|begin_of_image|>``.
Position ids count the pad slots (arange over the whole row); pads are masked only as keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nextstep_trt.core.choices import check_text
from nextstep_trt.core.errors import UserError

from .config import SpecialTokens
from .sampling import Guidance
from .tokenizer import SPECIAL_STRINGS

IMAGE_TAG = "<image>"   # where the input image goes in an edit instruction (the official caption syntax)


@dataclass(frozen=True)
class PromptBatch:
    input_ids: np.ndarray      # [R*B,L] int64
    token_mask: np.ndarray     # [R*B,L] int64, 1 = real token, 0 = left pad
    image_mask: np.ndarray     # [R*B,L] bool, placeholder slots that take input-image tokens (editing)
    position_ids: np.ndarray   # [R*B,L] int64
    guidance: Guidance         # the branch layout; R = guidance.rows

    @property
    def cfg_rows(self) -> int:
        """R: rows per image (1, 2 or 3)."""
        return self.guidance.rows

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


def _pack(rows: list[list[int]], tokens: SpecialTokens, guidance: Guidance, max_tokens: int | None) -> PromptBatch:
    length = max(len(r) for r in rows)
    if max_tokens is not None and length > max_tokens:
        raise UserError(f"prompt is {length} tokens, over the budget of {max_tokens}")
    ids = np.full((len(rows), length), tokens.pad, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, length - len(r):] = r
        mask[i, length - len(r):] = 1
    positions = np.broadcast_to(np.arange(length, dtype=np.int64), ids.shape).copy()
    return PromptBatch(ids, mask, ids == tokens.placeholder, positions, guidance)


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
        if not isinstance(p, str):          # the API and the runtime loop take prompts as they come
            raise UserError(f"a prompt must be text, got {type(p).__name__}")
        check_text("prompt", p)             # lone surrogates: bytes that were not UTF-8
        if not p.strip():
            raise UserError("the prompt is empty")


def text_to_image_prompt(tokenizer, tokens: SpecialTokens, prompts: list[str], grid: tuple[int, int],
                         positive: str = "", negative: str | Sequence[str] = "", images_per_prompt: int = 1,
                         max_tokens: int | None = None, guidance: Guidance = Guidance.TEXT) -> PromptBatch:
    """cond row: caption (+ " " + positive); with text guidance an uncond row: the negative prompt (empty by
    default; one per prompt when a list)."""
    _check_prompts(prompts)
    if guidance is Guidance.TEXT_IMAGE:
        raise UserError("image guidance (cfg-img) needs an input image: text-to-image has text guidance only")
    suffix = _area_suffix(tokenizer, tokens, grid)
    cond = [_ids(tokenizer, p + (" " + positive if positive else "")) + suffix for p in prompts]
    rows = [r for r in cond for _ in range(images_per_prompt)]
    if guidance is Guidance.TEXT:
        uncond = [_ids(tokenizer, n) + suffix for n in _negatives(negative, len(prompts))]
        rows += [r for r in uncond for _ in range(images_per_prompt)]
    return _pack(rows, tokens, guidance, max_tokens)


def place_image(instruction: str, image: str) -> str:
    """The instruction with the image string at its ``<image>`` tag (exactly one, as the official pipeline
    asserts), or in front of it when it has none (the official examples write ``"<image>" + instruction``)."""
    count = instruction.count(IMAGE_TAG)
    if count > 1:
        raise UserError(f"the instruction has {count} {IMAGE_TAG} tags; editing takes one input image (one tag)")
    return instruction.replace(IMAGE_TAG, image, 1) if count else image + instruction


def edit_prompt(tokenizer, tokens: SpecialTokens, instructions: list[str], grid: tuple[int, int],
                positive: str = "", negative: str | Sequence[str] = "", images_per_prompt: int = 1,
                max_tokens: int | None = None, guidance: Guidance = Guidance.TEXT_IMAGE) -> PromptBatch:
    """[image + instruction (+ positive)], then with text guidance [negative only], or with image guidance
    [image + negative] [negative only].

    The input image enters as ``<|image_area|>h*w <boi> <placeholder> x (h*w) <eoi>``; ``image_mask`` marks the
    placeholder slots of the rows that carry the image, which take its tokens in raster order.
    """
    _check_prompts(instructions)
    n = grid[0] * grid[1]
    image = (f"{SPECIAL_STRINGS['image_area']}{grid[0]}*{grid[1]}{SPECIAL_STRINGS['boi']}"
             + SPECIAL_STRINGS["placeholder"] * n + SPECIAL_STRINGS["eoi"])
    suffix = _area_suffix(tokenizer, tokens, grid)
    cond = [_ids(tokenizer, place_image(p, image) + (" " + positive if positive else "")) + suffix
            for p in instructions]
    negatives = [n for n in _negatives(negative, len(instructions)) for _ in range(images_per_prompt)]
    rows = [r for r in cond for _ in range(images_per_prompt)]
    if guidance is Guidance.TEXT_IMAGE:
        rows += [_ids(tokenizer, image + n) + suffix for n in negatives]
    if guidance is not Guidance.NONE:
        rows += [_ids(tokenizer, n) + suffix for n in negatives]
    return _pack(rows, tokens, guidance, max_tokens)


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
