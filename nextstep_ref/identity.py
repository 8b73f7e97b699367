"""The identity of a model folder: every file a run reads from it, with its size and sha256 (torch-free).

Artifacts record the identity of the folder they were exported from; a run given another ``--model`` is refused,
naming both folders. Kinds: ``config`` (config.json, the VAE's config.json), ``tokenizer`` (the tokenizer files)
and ``weights`` (the safetensors index and shards, the VAE checkpoint). A folder with no weight file at all (the
``assets/model`` folder of a Triton repository holds only configs and tokenizer) is compared on its configs and
tokenizer only, and the caller says so. Hashes come from the caller's ``sha256(path)`` (a stamp cache, so a
folder is hashed in full once and then only stat-ed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from nextstep_trt.core.jsonfile import read_json

from .config import vae_folder
from .weights import INDEX_NAME, read_index

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")
VAE_WEIGHTS = ("model.safetensors", "checkpoint.pt")


def model_files(model_dir: str | Path) -> dict[str, str]:
    """rel path -> kind of every file a run reads from ``model_dir`` (weights only when the folder has them)."""
    model_dir = Path(model_dir)
    vae = vae_folder(model_dir, read_json(model_dir / "config.json", "model file"))
    rel = lambda p: p.relative_to(model_dir).as_posix()  # noqa: E731
    out = {"config.json": "config", rel(vae / "config.json"): "config"}
    out |= {name: "tokenizer" for name in TOKENIZER_FILES if (model_dir / name).is_file()}
    weight_map = read_index(model_dir)
    if weight_map is not None:
        out |= {INDEX_NAME: "weights"} | {shard: "weights" for shard in sorted(set(weight_map.values()))}
    elif (model_dir / "model.safetensors").is_file():
        out["model.safetensors"] = "weights"
    for name in VAE_WEIGHTS:
        if (vae / name).is_file():
            out[rel(vae / name)] = "weights"
            break
    return out


def model_identity(model_dir: str | Path, sha256: Callable[[Path], str]) -> dict:
    """{"path": the folder, "files": {rel: {"kind", "bytes", "sha256"}}} for every file of ``model_files``."""
    model_dir = Path(model_dir)
    files = {}
    for rel, kind in model_files(model_dir).items():
        path = model_dir / rel
        files[rel] = {"kind": kind, "bytes": path.stat().st_size, "sha256": sha256(path)}
    return {"path": str(model_dir.resolve()), "files": files}


def identity_problems(recorded: dict, model_dir: str | Path, sha256: Callable[[Path], str]) -> tuple[list[str], bool]:
    """How ``model_dir`` differs from the recorded identity (sizes first, then hashes, stopping at the first
    differing weight file) and whether its weights were compared (False: it holds none)."""
    model_dir = Path(model_dir)
    want, have = recorded.get("files", {}), model_files(model_dir)
    weights = any(k == "weights" for k in have.values())
    kinds = {"config", "tokenizer"} | ({"weights"} if weights else set())
    problems = [f"{rel} is missing" for rel, f in want.items() if f.get("kind") in kinds and rel not in have]
    problems += [f"{rel} was not there at export" for rel, kind in have.items() if rel not in want]
    common = [rel for rel in have if rel in want]
    problems += [f"{rel} has {(model_dir / rel).stat().st_size} bytes, not {want[rel].get('bytes')}"
                 for rel in common if (model_dir / rel).stat().st_size != want[rel].get("bytes")]
    if problems:
        return problems, weights
    for rel in sorted(common, key=lambda r: (have[r] == "weights", want[r].get("bytes", 0))):
        if sha256(model_dir / rel) != want[rel].get("sha256"):
            problems.append(f"{rel} has other bytes (sha256)")
            if have[rel] == "weights":
                break                     # no need to hash the rest of a different checkpoint
    return problems, weights
