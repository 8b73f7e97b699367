"""Write a Triton model repository: one Python-backend model per task (nextstep_t2i, nextstep_edit), each running
the whole loop, with its config.pbtxt, a model.py that imports this package, and its artifacts (torch-free).

    REPO/nextstep_t2i/config.pbtxt
    REPO/nextstep_t2i/1/model.py
    REPO/nextstep_t2i/assets/artifacts/   manifest.json + graphs (copied, hard-linked or symlinked)
    REPO/nextstep_t2i/assets/model/       config.json, vae/config.json, tokenizer files
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir, describe_os_error
from nextstep_trt.export.manifest import Manifest
from nextstep_trt.ref.config import load_config
from nextstep_trt.ref.identity import model_files

from .limits import EDIT_MODEL, INPUTS, OUTPUTS, T2I_MODEL, ServeLimits, serve_limits, served_models

LINK_MODES = ("copy", "hardlink", "symlink")
# what a repository never takes from an artifacts folder: scratch of interrupted runs, locks, temporary files
NOT_COPIED = (".export-*", "*.tmp", ".lock", "*.lock", ".probe-*")
MODEL_PY = '''"""NextStep-1 on Triton's Python backend, written by `nextstep-trt triton-repo`: the whole generation loop
(prefill, per-token sampler and backbone steps, VAE) runs inside this one model. The Python environment of the
backend stub needs nextstep-trt installed (plus tensorrt for the tensorrt backend)."""
from nextstep_trt.serve.triton_model import TritonPythonModel  # noqa: F401
'''


@dataclass(frozen=True)
class RepoOptions:
    """What `triton-repo` (and `serve`, into a temporary folder) writes."""

    artifacts: Path
    model_dir: Path
    out: Path
    backend: str = "onnxruntime"
    precision: str = "fp32"
    max_batch: int | None = None          # default: the exported max batch
    max_queue_delay_ms: float = 50.0
    instances: int = 1
    threads: int = 0                      # ONNX Runtime intra-op threads per instance (0: its default)
    link: str = "hardlink"                # hardlink falls back to copy across file systems
    warmup: bool = True
    edit: bool = True                     # also serve nextstep_edit when the artifacts can


def _tensor_block(kind: str, decls) -> str:
    items = []
    for t in decls:
        lines = [f'    name: "{t.name}"', f"    data_type: TYPE_{t.dtype}",
                 f"    dims: [ {', '.join(str(d) for d in t.dims)} ]"]
        if t.optional:
            lines.append("    optional: true")
        items.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(items) + "\n]\n"


def config_pbtxt(name: str, limits: ServeLimits, opts: RepoOptions) -> str:
    """The model configuration in protobuf text format."""
    kind = "KIND_GPU" if opts.backend == "tensorrt" else "KIND_CPU"
    params = {"artifacts": "assets/artifacts", "model_dir": "assets/model", "backend": opts.backend,
              "precision": opts.precision, "threads": str(opts.threads), "warmup": "1" if opts.warmup else "0",
              "link": opts.link}
    text = (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {limits.max_batch}\n'
            + _tensor_block("input", INPUTS[name]) + _tensor_block("output", OUTPUTS[name])
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(opts.max_queue_delay_ms * 1000)}\n}}\n"
            + f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: {kind}\n  }}\n]\n")
    for key, value in params.items():
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    return text


def _place(src: Path, dst: Path, mode: str) -> None:
    """Put one file or folder at ``dst`` by copy, hard links (copy across file systems) or a symlink."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if mode == "symlink":
        os.symlink(src.resolve(), dst, target_is_directory=src.is_dir())
        return
    if src.is_dir():
        copy = shutil.copy2 if mode == "copy" else _link_or_copy
        shutil.copytree(src, dst, copy_function=copy, ignore=shutil.ignore_patterns(*NOT_COPIED))
    elif mode == "copy":
        shutil.copy2(src, dst)
    else:
        _link_or_copy(src, dst)


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _model_files(model_dir: Path) -> list[Path]:
    """The small files the runtime reads from a model folder: configs and tokenizer, never weights."""
    return [Path(rel) for rel, kind in model_files(model_dir).items() if kind != "weights"]


def check_options(opts: RepoOptions) -> Manifest:
    """The artifacts' manifest, after checking it against the model folder and the options."""
    if opts.link not in LINK_MODES:
        raise UserError(f"unknown link mode {opts.link!r}; choose from {', '.join(LINK_MODES)}")
    if opts.instances < 1 or opts.max_queue_delay_ms < 0:
        raise UserError("need at least 1 instance and a queue delay >= 0")
    manifest = Manifest.load(opts.artifacts)
    manifest.check_model(load_config(opts.model_dir), opts.model_dir)
    for graph in manifest.graphs:
        manifest.entry(graph, opts.precision)  # the precision exists for every exported graph
    return manifest


def write_models(root: Path, opts: RepoOptions, manifest: Manifest) -> dict[str, ServeLimits]:
    """Write every served model into the existing folder ``root``; returns each model's caps."""
    out = {}
    for name in served_models(manifest):
        if name == EDIT_MODEL and not opts.edit:
            continue
        limits = serve_limits(manifest, name == EDIT_MODEL, opts.max_batch)
        model = root / name
        (model / "1").mkdir(parents=True)
        (model / "1" / "model.py").write_text(MODEL_PY)
        (model / "config.pbtxt").write_text(config_pbtxt(name, limits, opts))
        _place(Path(opts.artifacts), model / "assets" / "artifacts", opts.link)
        for rel in _model_files(Path(opts.model_dir)):
            _place(Path(opts.model_dir) / rel, model / "assets" / "model" / rel, "copy")
        check_placed(model / "assets" / "artifacts")
        out[name] = limits
    return out


def check_placed(artifacts: Path) -> None:
    """Hash every graph file where the repository put it: a bad copy is refused now, and the stamps written next
    to it let the server's start stat the files instead of hashing them."""
    manifest = Manifest.load(artifacts)
    bad = [c for c in manifest.check_all_files() if not c.ok]
    if bad:
        raise UserError(f"refusing to write the repository: {bad[0].path}: {bad[0].detail}")
    manifest.hashes.settle()          # files placed a moment ago: stamps the server can trust
    manifest.hashes.save()


def write_repo(opts: RepoOptions) -> dict[str, ServeLimits]:
    """Write the repository at ``opts.out`` atomically; an existing folder is replaced only if it is a repo."""
    manifest = check_options(opts)
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; name a folder for the repository")
    if out.exists() and any(out.iterdir()) and not any((out / m / "config.pbtxt").is_file()
                                                       for m in (T2I_MODEL, EDIT_MODEL)):
        raise UserError(f"{out} exists and is not a nextstep-trt model repository: choose another --out")
    try:
        with atomic_dir(out) as tmp:
            models = write_models(tmp, opts, manifest)
    except OSError as err:             # a full disk while copying the graphs, a read-only folder
        raise UserError(f"cannot write the repository {out} ({err.filename or out}): {describe_os_error(err)}; "
                        f"nothing was replaced") from None
    return models
