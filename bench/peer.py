"""The bench's peer: onnxruntime-genai's builds of our backbone (torch-free here; the builder runs in a subprocess).

When ``onnxruntime_genai`` is installed (the ``peer`` extra), the bench writes our backbone as a Hugging Face Qwen2
folder (``hf_folder.py``) and runs Microsoft's model builder on it once per precision::

    python -m onnxruntime_genai.models.builder -i HF -o OUT -p fp32|int8|int4 -e cpu -c CACHE \\
        --extra_options exclude_lm_head=true [accuracy_level=4 block_size=32]

``exclude_lm_head`` makes the graph end at the final-normed hidden state, the work our decode step does (our graph
has no lm_head either; it adds the image_out_projector, which the comparison applies to the peer's output).
``accuracy_level``/``block_size`` (the builder's current names; ``int4_accuracy_level`` is a deprecated alias) set
its MatMulNBits quantization (level 4 = int8 activations; blocks of weights along the input dimension): by default
those of our graph of the same precision (its recipe's block, its ONNX Runtime deployment's level), so the two
differ only in kernels; else block 32 at level 4.
Builds are cached under ``ART/peer/<model fingerprint>-genai<version>/``, beside the one HF folder they share
(``hf/``; Large's is 28 GB): ``fp32/``, ``<precision>-b<block>-acc<level>/`` for int8/int4, each written to a
scratch folder and renamed into place; a cached build is reused when its ``model.onnx`` is there. When our graph of
a precision keeps an int8 KV cache (``quantize --kv-cache int8``), the peer's build of that precision gets the
same cache: ``kv_cache_quant_scheme=int8_per_channel`` with our scales as its ``kv_cache_scale_file`` (the folder
name gains ``-kv8-<scales digest>``), so the two still differ only in how they run the same numbers.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir, write_json
from nextstep_trt.core.resources import versions
from nextstep_trt.ref.config import load_config

from .hf_folder import write_hf_folder

GENAI = "onnxruntime-genai"
PEER_PRECISIONS = ("fp32", "int8", "int4")          # what the builder makes for the CPU execution provider


DEFAULT_LEVEL, DEFAULT_BLOCK = 4, 32


@dataclass(frozen=True)
class PeerOptions:
    """The peer's MatMulNBits quantization; None: as our graph of the same precision (``matching``)."""

    accuracy_level: int | None = None
    block_size: int | None = None

    def matching(self, ours: dict) -> "PeerOptions":
        """Every unset option from ``ours`` (our graph's {"block_size", "accuracy_level"}), else the defaults."""
        level = self.accuracy_level if self.accuracy_level is not None else ours.get("accuracy_level")
        block = self.block_size if self.block_size is not None else ours.get("block_size")
        return PeerOptions(DEFAULT_LEVEL if level is None else level, DEFAULT_BLOCK if block is None else block)


def peer_installed() -> bool:
    """Whether onnxruntime_genai (the builder) is importable."""
    return importlib.util.find_spec("onnxruntime_genai") is not None


def peer_precisions(asked: tuple[str, ...]) -> tuple[str, ...]:
    """The peer builds a run needs: each asked precision the builder makes on the CPU, and always int4 and fp32
    (the int4 target and the fp32 check that the conversion is right)."""
    wanted = {p for p in asked if p in PEER_PRECISIONS} | {"fp32", "int4"}
    return tuple(p for p in PEER_PRECISIONS if p in wanted)


def peer_root(artifacts: Path, model_dir: Path) -> Path:
    """The cache folder of this model and builder version: its HF folder and every build."""
    version = versions((GENAI,)).get(GENAI, "unknown")
    return Path(artifacts) / "peer" / f"{load_config(model_dir).fingerprint()}-genai{version}"


def kv_scale_file(artifacts: Path, scales: dict[str, np.ndarray], num_layers: int) -> Path:
    """Our int8 cache's scales (``export/ort_kvcache.read_scales``) in the builder's ``kv_cache_scale_file`` format
    (per layer a [KVH*D] list; no ``qmax``: used as they are), under ``ART/peer/`` named by their content."""
    data = {"scales": {f"{k}_scales": [scales[f"past_{kind}.{i}"].tolist() for i in range(num_layers)]
                       for k, kind in (("k", "key"), ("v", "value"))}}
    digest = hashlib.sha256(json.dumps(data).encode()).hexdigest()[:12]
    path = Path(artifacts) / "peer" / f"kv-scales-{digest}.json"
    if not path.is_file():
        write_json(path, data)
    return path


def build_name(precision: str, opts: PeerOptions, kv_scales: Path | None = None) -> str:
    """The cache folder of one build: the precision, its quantization, and with our int8 cache's scales
    ``-kv8-<their digest>``."""
    opts = opts.matching({})
    name = precision if precision == "fp32" else f"{precision}-b{opts.block_size}-acc{opts.accuracy_level}"
    return f"{name}-kv8-{kv_scales.stem.rsplit('-', 1)[-1]}" if kv_scales else name


def builder_command(hf: Path, out: Path, cache: Path, precision: str, opts: PeerOptions,
                    kv_scales: Path | None = None) -> list[str]:
    """The builder's command line for one precision (with ``kv_scales``: an int8 per-channel KV cache)."""
    extra = ["exclude_lm_head=true"]
    if precision in ("int4", "int8"):
        extra += [f"accuracy_level={opts.accuracy_level}", f"block_size={opts.block_size}"]
    if kv_scales:
        extra += ["kv_cache_quant_scheme=int8_per_channel", f"kv_cache_scale_file={kv_scales}"]
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", precision,
            "-e", "cpu", "-c", str(cache), "--extra_options", *extra]


def _run_builder(cmd: list[str], log_file: Path, precision: str) -> None:
    with open(log_file, "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        lines = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()]
        raise UserError(f"onnxruntime-genai's builder failed for {precision} (exit {done.returncode}; log "
                        f"{log_file}): {lines[-1][:300] if lines else 'no output'}")


def build_peer(model_dir: str | Path, artifacts: str | Path, precision: str, opts: PeerOptions = PeerOptions(),
               log: Callable[[str], None] = print, kv_scales: Path | None = None) -> Path:
    """The peer's ``model.onnx`` for ``precision`` (``kv_scales``: with that int8 cache): from the cache, or
    converted and built now."""
    if not peer_installed():
        raise UserError("the peer needs onnxruntime-genai: pip install 'nextstep-trt[peer]'")
    if precision not in PEER_PRECISIONS:
        raise UserError(f"the peer's builder makes {', '.join(PEER_PRECISIONS)} on the CPU, not {precision}")
    model_dir, opts = Path(model_dir), opts.matching({})
    root = peer_root(Path(artifacts), model_dir)
    graph = root / build_name(precision, opts, kv_scales) / "model.onnx"
    if graph.is_file():
        return graph
    from nextstep_trt.export.scratch import artifacts_lock

    with artifacts_lock(artifacts, log):          # the one-writer rule of the artifacts folder (export/scratch.py)
        return _convert_and_build(model_dir, root, precision, opts, log, kv_scales)


def _convert_and_build(model_dir: Path, root: Path, precision: str, opts: PeerOptions, log,
                       kv_scales: Path | None) -> Path:
    """Under the folder's lock: the HF folder (once), then the builder into a scratch folder renamed into place."""
    name = build_name(precision, opts, kv_scales)
    graph = root / name / "model.onnx"
    if graph.is_file():                           # another run built it before this one took the lock
        return graph
    for stale in root.glob(".*.tmp") if root.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)  # scratch of a killed build: under the lock no writer is alive
    hf = root / "hf"
    if not (hf / "model.safetensors").is_file():
        log(f"  peer: writing the Hugging Face Qwen2 folder {hf}")
        info = write_hf_folder(model_dir, hf)
        if info["padded_rows"]:
            log(f"  peer: vocab padded {info['vocab_size']} -> {info['hf_vocab_size']} ({info['why_padded']})")
    log(f"  peer: building onnxruntime-genai's {name} graph (cached in {root / name})")
    with atomic_dir(root / name) as tmp:
        _run_builder(builder_command(hf, tmp, tmp / "cache", precision, opts, kv_scales), root / f"build-{name}.log",
                     name)
        shutil.rmtree(tmp / "cache", ignore_errors=True)          # the builder's download cache: empty here
        if not (tmp / "model.onnx").is_file():
            raise UserError(f"onnxruntime-genai's builder wrote no model.onnx for {name} "
                            f"(log {root / f'build-{name}.log'})")
    return graph
