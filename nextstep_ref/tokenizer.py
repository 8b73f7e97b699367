"""Tokenizers: load the checkpoint's Hugging Face tokenizer, or build a small byte-level BPE one for tests (torch-free)."""
from __future__ import annotations

import json
from pathlib import Path

from nextstep_trt.core.errors import UserError

from .config import SpecialTokens

# Special token strings of the NextStep tokenizer, keyed by the SpecialTokens field holding their id.
SPECIAL_STRINGS = {"bos": "<|endoftext|>", "pad": "[PAD]", "image_area": "<|image_area|>",
                   "boi": "<|begin_of_image|>", "eoi": "<|end_of_image|>", "placeholder": "<|image_placeholder|>"}
# Added after the placeholder in the official tokenizer; unused at inference.
EXTRA_SPECIALS = ("<|begin_of_prompt_refinement|>", "<|end_of_prompt_refinement|>",
                  "<|begin_of_thinking|>", "<|end_of_thinking|>")

_CORPUS = (
    "a photo of a cat sitting on a red sofa in the living room, masterpiece, film grained, best quality. "
    "a watercolor painting of mountains at sunset with a lake and trees; the sky is orange and purple. "
    "an astronaut riding a horse on the moon, highly detailed digital art, 4k, sharp focus, 0123456789*x "
    "Copy original image. Add a hat to the dog. Make it winter. Change the background to a beach. "
    "The quick brown fox jumps over the lazy dog. low quality, blurry, deformed, watermark, text, signature."
)


def build_tokenizer(tokens: SpecialTokens, vocab_size: int):
    """A byte-level BPE tokenizer whose special tokens sit at exactly the ids of ``tokens``.

    Ids below ``tokens.bos`` are BPE tokens (256 bytes plus merges learned from a fixed corpus, padded with
    reserved tokens); the specials follow in the official order. No BOS is added, as with Qwen tokenizers.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    order = ["bos", "pad", "image_area", "boi", "eoi", "placeholder"]
    ids = [getattr(tokens, name) for name in order]
    gap = tokens.pad - tokens.bos - 1                 # Qwen's own specials sit between them in Large (21)
    if ids[1:] != list(range(tokens.pad, tokens.pad + len(ids) - 1)) or tokens.eos != tokens.bos or gap < 0:
        raise UserError("the tiny tokenizer needs bos=eos, then pad, image_area, boi, eoi, placeholder in a row")
    if tokens.pad + len(ids) - 1 + len(EXTRA_SPECIALS) > vocab_size:
        raise UserError(f"special tokens from id {tokens.bos} do not fit a vocabulary of {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=tokens.bos, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    fillers = [f"<|reserved_{i}|>" for i in range(tokens.bos - tok.get_vocab_size())]
    tok.add_tokens(fillers)
    reserved = [f"<|reserved_special_{i}|>" for i in range(gap)]
    tok.add_special_tokens([SPECIAL_STRINGS["bos"], *reserved] + [SPECIAL_STRINGS[name] for name in order[1:]]
                           + list(EXTRA_SPECIALS))
    for name, want in zip(order, ids):
        got = tok.token_to_id(SPECIAL_STRINGS[name])
        assert got == want, f"{name}: id {got} != {want}"
    return tok


def save_tokenizer(tok, out_dir: Path) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that ``AutoTokenizer`` loads without remote code."""
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None,
              "eos_token": SPECIAL_STRINGS["bos"], "pad_token": SPECIAL_STRINGS["pad"],
              "padding_side": "left", "add_bos_token": False, "model_max_length": 131072}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(model_dir: str | Path, tokens: SpecialTokens):
    """The checkpoint's tokenizer through ``transformers.AutoTokenizer`` (never remote code), ids checked."""
    from transformers import AutoTokenizer
    from transformers.utils import logging

    from nextstep_trt.core.jsonfile import read_json

    for name in ("tokenizer.json", "tokenizer_config.json"):      # a damaged file is named before the library
        if (Path(model_dir) / name).exists():
            read_json(Path(model_dir) / name, "tokenizer file")
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # config.json's model_type "nextstep" is unknown to transformers; that is fine
    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as err:  # tokenizers raises bare Exception/TypeError/AttributeError for wrong field types
        raise UserError(f"cannot load the tokenizer from {model_dir}: {(str(err).splitlines() or [''])[0][:300]}") \
            from None
    finally:
        logging.set_verbosity(verbosity)
    for name, text in SPECIAL_STRINGS.items():
        got = tok.convert_tokens_to_ids(text)
        if got != getattr(tokens, name):
            raise UserError(f"{model_dir}: tokenizer maps {text} to {got}, config says {getattr(tokens, name)}")
    return tok
