"""The runtime's index of built engines: ``ART/engines/<graph>/<precision>/<key16>/engine.plan`` + ``manifest.json``.

The runtime only *loads* plans: it finds the newest plan built from the graph the artifacts manifest names, for the
TensorRT flavour, version and GPU that run it, and refuses anything else with the reason. Building them is
``nextstep_trt.engines`` (which imports this, never the reverse). Torch- and TensorRT-free.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from nextstep_trt.core.digests import HashCache
from nextstep_trt.core.errors import UserError
from nextstep_trt.core.jsonfile import read_json
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.filecheck import INTEGRITY

PLAN, MANIFEST = "engine.plan", "manifest.json"


@dataclass(frozen=True)
class Target:
    """What an engine is built by and for: the cache key and the runtime's acceptance test both use it."""

    flavor: str
    version: str
    compute_capability: str
    gpu: str | None = None                      # GPU name (standard TensorRT builds for the GPU it runs on)

    def to_dict(self) -> dict:
        return asdict(self)


def engines_root(artifacts: Path) -> Path:
    return Path(artifacts) / "engines"


def plan_dir(artifacts: Path, graph: str, precision: Precision, key: str) -> Path:
    return engines_root(artifacts) / graph / Precision(precision).value / key[:16]


def read_engine_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: not a complete engine (rebuild with --force)")
    try:
        return read_json(path, "engine manifest")
    except UserError as err:
        raise UserError(f"{err}: rebuild with --force") from None


def mismatch(record: dict, target: Target) -> str | None:
    """Why a plan built as ``record`` cannot run on ``target`` (None: it can)."""
    built = record.get("target", {})
    for field, label in (("flavor", "flavour"), ("version", "version"), ("compute_capability", "compute capability")):
        if built.get(field) != getattr(target, field):
            return (f"built by {built.get('flavor')} {built.get('version')} for compute capability "
                    f"{built.get('compute_capability')}, but this is {target.flavor} {target.version} for "
                    f"{target.compute_capability} ({label} differs)")
    if target.flavor == "tensorrt" and built.get("gpu") not in (None, target.gpu):
        return f"built on a {built.get('gpu')}, this GPU is a {target.gpu}"
    return None


def check_plan(folder: Path, target: Target) -> dict:
    """The engine manifest of a plan that may run on ``target``; a UserError gives the reason otherwise."""
    record = read_engine_manifest(folder)
    reason = mismatch(record, target)
    if reason:
        raise UserError(f"refusing {folder / PLAN}: {reason}")
    plan = folder / PLAN
    if not plan.is_file():
        raise UserError(f"refusing {folder}: {PLAN} is missing")
    size = plan.stat().st_size
    if size != record.get("plan_bytes"):
        raise UserError(f"refusing {plan}: {size} bytes, the manifest says {record.get('plan_bytes')} (truncated?)")
    stamps = HashCache(folder.parents[3] / INTEGRITY)   # ART/engines/<graph>/<precision>/<key>: hashed once per change
    digest = stamps.sha256(plan)
    stamps.save()
    if digest != record.get("plan_sha256"):
        raise UserError(f"refusing {plan}: sha256 does not match its manifest (corrupted)")
    return record


def find_plan(artifacts: Path, graph: str, precision: Precision, target: Target, onnx_sha256: str) -> Path:
    """The newest cached plan of this graph built from this ONNX graph for ``target``; a UserError lists why
    every candidate was refused."""
    root = engines_root(artifacts) / graph / Precision(precision).value
    candidates = sorted((d for d in root.glob("*") if d.is_dir() and not d.name.startswith(".")),
                        key=lambda d: d.stat().st_mtime, reverse=True) if root.is_dir() else []
    reasons = []
    for folder in candidates:
        try:
            record = read_engine_manifest(folder)
            if record.get("key_inputs", {}).get("onnx", {}).get("graph_sha256") != onnx_sha256:
                reasons.append(f"{folder.name}: built from another version of the ONNX graph")
                continue
            check_plan(folder, target)
            return folder / PLAN
        except UserError as err:
            reasons.append(f"{folder.name}: {err}")
    if not reasons:
        raise UserError(f"no {Precision(precision).value} {graph} engine under {root}: run `nextstep-trt build "
                        f"--artifacts {artifacts} --precision {Precision(precision).value}`")
    raise UserError(f"no usable {graph} engine: " + "; ".join(reasons))
