"""Our backbone checkpoint as a Hugging Face Qwen2 folder, the input of onnxruntime-genai's model builder (torch-free).

NextStep's backbone is Qwen2 (GQA, RoPE, RMSNorm, q/k/v biases, no o_proj bias). The folder holds:

* ``model.safetensors``: every backbone tensor of the checkpoint, keys prefixed ``model.`` (``lm_head.weight`` kept
  as is); the image projectors and the flow head are left out. float32.
* ``config.json`` for ``Qwen2ForCausalLM`` from our BackboneConfig.
* our ``tokenizer.json`` / ``tokenizer_config.json`` (the builder loads a tokenizer), ``generation_config.json``.
* ``nextstep_hf.json``: where it came from and whether the vocabulary was padded.

Vocabulary padding: the builder takes *any* ``nn.Linear`` whose output width equals the vocab size for the lm_head
(``has_lm_head`` in onnxruntime_genai/models/builders/base.py), so a vocab equal to the hidden size (or a K/V, MLP
width) silently turns a projection into a second lm_head. When the vocab collides with a linear width, the HF copy
gets a larger vocab (the next multiple of 64 that collides with nothing): the embedding table and lm_head are padded
with zero rows no token id reaches. Hidden states are unchanged; logits gain columns past the real vocab.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir
from nextstep_trt.ref.config import BackboneConfig, NextStepConfig, load_config
from nextstep_trt.ref.weights import backbone_shapes, iter_shard_tensors, shard_files

PAD_TO = 64
MAX_POSITIONS = 32768              # Qwen2's default; the builder's RoPE cos/sin cache covers this many positions
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def linear_widths(b: BackboneConfig) -> set[int]:
    """Output widths of the decoder layers' linears (q, k/v, o, gate/up, down)."""
    return {b.num_heads * b.head_dim, b.num_kv_heads * b.head_dim, b.hidden_size, b.intermediate_size}


def hf_vocab_size(b: BackboneConfig) -> int:
    """The vocab of the HF copy: ours, unless a linear has that width (then the next free multiple of 64)."""
    widths, vocab = linear_widths(b), b.vocab_size
    if vocab not in widths:
        return vocab
    vocab = -(-(vocab + 1) // PAD_TO) * PAD_TO
    while vocab in widths:
        vocab += PAD_TO
    return vocab


def hf_config(cfg: NextStepConfig, vocab: int) -> dict:
    """config.json of a Qwen2ForCausalLM with our backbone's sizes."""
    b = cfg.backbone
    if b.hidden_size != b.num_heads * b.head_dim:
        raise UserError(f"the peer needs head_dim = hidden / heads (Qwen2 derives it): {b.head_dim} != "
                        f"{b.hidden_size} / {b.num_heads}")
    if not b.attention_bias or b.o_attention_bias:
        raise UserError("the peer needs Qwen2's biases: q/k/v with bias, o_proj without")
    rope = {"rope_type": "default", "rope_theta": b.rope_theta}
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
            "hidden_size": b.hidden_size, "intermediate_size": b.intermediate_size,
            "num_hidden_layers": b.num_layers, "num_attention_heads": b.num_heads,
            "num_key_value_heads": b.num_kv_heads, "hidden_act": "silu", "rms_norm_eps": b.rms_norm_eps,
            "rope_theta": b.rope_theta, "rope_parameters": rope, "max_position_embeddings": MAX_POSITIONS,
            "tie_word_embeddings": False, "use_sliding_window": False, "attention_dropout": 0.0,
            "torch_dtype": "float32", "dtype": "float32", "bos_token_id": cfg.tokens.bos,
            "eos_token_id": cfg.tokens.eos, "pad_token_id": cfg.tokens.pad}


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """[V,H] -> [rows,H] with zero rows appended."""
    out = np.zeros((rows,) + array.shape[1:], array.dtype)
    out[: array.shape[0]] = array
    return out


def hf_state(model_dir: Path, cfg: NextStepConfig, vocab: int) -> dict[str, np.ndarray]:
    """The backbone tensors under Qwen2's names, float32, vocab-sized tables padded to ``vocab`` rows."""
    wanted = backbone_shapes(cfg.backbone)
    state = {}
    for key, tensor in iter_shard_tensors(model_dir, shard_files(model_dir), "np"):
        if key not in wanted:
            continue                                             # image projectors, head: not part of Qwen2
        array = np.ascontiguousarray(tensor, dtype=np.float32)
        if key in ("embed_tokens.weight", "lm_head.weight") and vocab != array.shape[0]:
            array = _pad_rows(array, vocab)
        state[key if key.startswith("lm_head") else "model." + key] = array
    missing = sorted(set(wanted) - {k.removeprefix("model.") for k in state})
    if missing:
        raise UserError(f"{model_dir}: the checkpoint lacks backbone tensor(s) {', '.join(missing[:5])}")
    return state


def write_hf_folder(model_dir: str | Path, out: str | Path) -> dict:
    """Write the Qwen2 folder atomically; returns what ``nextstep_hf.json`` records."""
    from safetensors.numpy import save_file

    model_dir, out = Path(model_dir), Path(out)
    cfg = load_config(model_dir)
    vocab = hf_vocab_size(cfg.backbone)
    info = {"source": str(model_dir), "fingerprint": cfg.fingerprint(), "vocab_size": cfg.backbone.vocab_size,
            "hf_vocab_size": vocab, "padded_rows": vocab - cfg.backbone.vocab_size,
            "why_padded": "the builder takes any linear of vocab width for the lm_head" if vocab !=
            cfg.backbone.vocab_size else None}
    with atomic_dir(out) as tmp:
        save_file(hf_state(model_dir, cfg, vocab), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, vocab), indent=2) + "\n")
        gen = {"bos_token_id": cfg.tokens.bos, "eos_token_id": cfg.tokens.eos, "pad_token_id": cfg.tokens.pad}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if not (model_dir / name).is_file():
                raise UserError(f"{model_dir} has no {name}: the peer's builder loads the tokenizer")
            shutil.copyfile(model_dir / name, tmp / name)
        (tmp / "nextstep_hf.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
