"""Model folders in the official layout: random init, save and load (torch)."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir

from .config import NextStepConfig, load_config, model_config_dict, vae_config_dict, vae_folder
from .model import NextStep
from .tokenizer import build_tokenizer, load_tokenizer, save_tokenizer
from .vae import AutoEncoder
from .weights import (
    check_keys,
    index_json,
    iter_shard_tensors,
    model_shapes,
    plan_shards,
    read_safetensors_header,
    safetensors_shapes,
    shard_files,
    shard_name,
    vae_shapes,
)

DEFAULT_SHARD_BYTES = 5 * 2**30


@dataclass
class ModelBundle:
    """Everything a folder holds: config, AR model, VAE and tokenizer."""

    config: NextStepConfig
    model: NextStep
    vae: AutoEncoder
    tokenizer: object
    path: Path | None = None


def perturb_(module: torch.nn.Module, seed: int) -> None:
    """Give 1-D weights (norm scales) values near 1 and biases small random values, so swapped or dropped norms and
    biases change outputs in tests (PyTorch initialises them to exactly 1 and 0)."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))


def init_random(cfg: NextStepConfig, seed: int = 0) -> tuple[NextStep, AutoEncoder]:
    """Seeded random weights for every module."""
    torch.manual_seed(seed)
    model, vae = NextStep(cfg).eval(), AutoEncoder(cfg.vae).eval()
    perturb_(model, seed)
    perturb_(vae, seed + 7)
    return model, vae


def save_safetensors_sharded(state: dict[str, torch.Tensor], out_dir: Path, max_shard_bytes: int) -> None:
    """Write ``model-0000i-of-0000n.safetensors`` shards and their index."""
    from safetensors.torch import save_file

    keys = list(state)
    shards = plan_shards(((k, state[k].numel() * state[k].element_size()) for k in keys), max_shard_bytes)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = shard_name(i, len(shards))
        save_file({k: state[k].contiguous() for k in shard}, str(out_dir / name), metadata={"format": "pt"})
        weight_map |= {k: name for k in shard}
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index_json(weight_map, total), indent=2))


def save_model_folder(out_dir: str | Path, cfg: NextStepConfig, model: NextStep, vae: AutoEncoder,
                      max_shard_bytes: int = DEFAULT_SHARD_BYTES, vae_format: str = "pt") -> Path:
    """Write config, sharded weights, tokenizer and ``vae/`` atomically (the folder appears complete or not at all)."""
    out_dir = Path(out_dir)
    try:
        _write_folder(out_dir, cfg, model, vae, max_shard_bytes, vae_format)
    except OSError as err:  # disk full, read-only: the folder is left as it was (atomic_dir)
        from nextstep_trt.core.fileio import describe_os_error

        raise UserError(f"cannot write the model folder {out_dir}: {describe_os_error(err)}") from None
    return out_dir


def _write_folder(out_dir: Path, cfg: NextStepConfig, model: NextStep, vae: AutoEncoder, max_shard_bytes: int,
                  vae_format: str) -> None:
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(model_config_dict(cfg), indent=2) + "\n")
        save_safetensors_sharded(model.state_dict(), tmp, max_shard_bytes)
        save_tokenizer(build_tokenizer(cfg.tokens, cfg.backbone.vocab_size), tmp)
        (tmp / "vae").mkdir()
        (tmp / "vae" / "config.json").write_text(json.dumps(vae_config_dict(cfg.vae), indent=2) + "\n")
        if vae_format == "pt":
            torch.save(vae.state_dict(), tmp / "vae" / "checkpoint.pt")
        else:
            from safetensors.torch import save_file

            save_file(vae.state_dict(), str(tmp / "vae" / "model.safetensors"))


def _load_vae_state(vae_dir: Path) -> dict[str, torch.Tensor]:
    """The VAE's state dict from ``model.safetensors`` or ``checkpoint.pt``; a damaged file is named in one line."""
    st, pt = vae_dir / "model.safetensors", vae_dir / "checkpoint.pt"
    if st.is_file():
        from safetensors.torch import load_file

        read_safetensors_header(st)
        try:
            return load_file(str(st))
        except Exception as err:  # safetensors' own error type: data the header check cannot see
            raise UserError(f"cannot load {st}: {str(err).splitlines()[0]}") from None
    if pt.is_file():
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:    # torch's text advises weights_only=False: never, for a file we read
            raise UserError(f"cannot load {pt}: not a weights-only torch checkpoint (damaged, or a pickle that "
                            f"runs code, which is never loaded)") from None
        except Exception as err:  # torch raises several unrelated types for a bad file
            raise UserError(f"cannot load {pt}: {str(err).splitlines()[0][:300]}") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise UserError(f"{pt} does not hold a state dict (name -> tensor)")
        return state
    raise UserError(f"{vae_dir} has neither checkpoint.pt nor model.safetensors")


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, with_tokenizer: bool = True) -> ModelBundle:
    """Load a model folder; every missing, unexpected or misshaped tensor is named in one error."""
    from nextstep_trt.core.jsonfile import read_json

    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    weight_map = shard_files(model_dir)
    expected = model_shapes(cfg)
    check_keys(safetensors_shapes(model_dir, weight_map), expected, str(model_dir))
    vae_dir = vae_folder(model_dir, read_json(model_dir / "config.json"))
    vae_state = _load_vae_state(vae_dir)
    check_keys({k: tuple(v.shape) for k, v in vae_state.items()}, vae_shapes(cfg.vae), str(vae_dir))
    with torch.device("meta"):
        model, vae = NextStep(cfg), AutoEncoder(cfg.vae)
    state = {k: t.to(dtype) for k, t in iter_shard_tensors(model_dir, weight_map) if k in expected}
    model.load_state_dict(state, strict=True, assign=True)
    vae.load_state_dict({k: v.to(dtype) for k, v in vae_state.items()}, strict=True, assign=True)
    tokenizer = load_tokenizer(model_dir, cfg.tokens) if with_tokenizer else None
    return ModelBundle(cfg, model.eval(), vae.eval(), tokenizer, model_dir)
