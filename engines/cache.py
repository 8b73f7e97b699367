"""The content-addressed engine cache: ``ART/engines/<graph>/<precision>/<key16>/engine.plan`` + ``manifest.json``.

The key hashes everything that changes an engine: the ONNX graph and its external data, precision and
quantization recipe, optimization profiles, builder options, TensorRT flavour and version, target compute
capability / GPU. An unchanged graph is not rebuilt; a plan that does not match the running TensorRT or GPU, or
whose bytes do not match its manifest, is refused with the reason; a failed build never replaces a good plan.
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.fileio import atomic_dir, write_json
from nextstep_trt.core.gpu import GpuProbe, probe_gpu
from nextstep_trt.core.precision import Precision
from nextstep_trt.export.deployments import tensorrt_graph
from nextstep_trt.export.manifest import Manifest, sha256_file, versions
from nextstep_trt.runtime.plans import MANIFEST, PLAN, Target, check_plan, engines_root, plan_dir

from .builder import RTX_TIMING_NOTE, BuildOptions, build_plan, trt_profiles

KEY_VERSION = 1


def timing_cache_path(artifacts: Path, target: Target) -> Path:
    """One timing cache per flavour, version and GPU model (or compute capability)."""
    gpu = re.sub(r"[^A-Za-z0-9.]+", "-", target.gpu or "any").strip("-")
    name = f"{target.flavor}-{target.version}-sm{target.compute_capability}-{gpu}.cache"
    return engines_root(artifacts) / "timing" / name


def onnx_digest(onnx: Path) -> dict:
    """sha256 of the graph file and of every external data file it points at."""
    import onnx as onnx_lib

    model = onnx_lib.load(str(onnx), load_external_data=False)
    locations = sorted({kv.value for t in model.graph.initializer if t.data_location == onnx_lib.TensorProto.EXTERNAL
                        for kv in t.external_data if kv.key == "location"})
    external = {}
    for loc in locations:
        path = onnx.parent / loc
        if not path.is_file():
            raise UserError(f"{onnx} points at external data {loc} which is missing")
        external[loc] = sha256_file(path)
    return {"graph_sha256": sha256_file(onnx), "external_data": external}


def key_inputs(manifest: Manifest, graph: str, precision: Precision, opts: BuildOptions, target: Target) -> dict:
    """Everything the key hashes, readable (it is stored in the engine manifest)."""
    entry = manifest.entry(graph, precision)
    spec = manifest.spec(graph, precision)
    recipe = {k: entry[k] for k in ("recipe", "quantization", "io_dtypes") if k in entry}
    return {"key_version": KEY_VERSION, "onnx": onnx_digest(tensorrt_graph(manifest, graph, precision)[0]),
            "precision": Precision(precision).value, "recipe": recipe, "profiles": trt_profiles(spec),
            "options": opts.key_dict(), "target": target.to_dict()}


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class EngineRecord:
    graph: str
    precision: str
    folder: Path
    manifest: dict
    cached: bool

    seconds: float = 0.0              # this call's wall time (a cache hit: the lookup)

    def row(self) -> dict:
        m = self.manifest
        return {"graph": self.graph, "precision": self.precision, "flavor": m["target"]["flavor"],
                "cc": m["target"]["compute_capability"], "seconds": round(self.seconds, 3),
                "plan_mib": m["plan_bytes"] / 2**20, "cached": self.cached, "key": m["key"][:16]}


def build_engine(artifacts: Path, graph: str, precision: Precision, opts: BuildOptions, target: Target,
                 force: bool = False, probe: GpuProbe | None = None) -> EngineRecord:
    """Reuse the cached plan for this key, or build one into a temporary folder renamed into place at the end."""
    start = time.perf_counter()
    artifacts = Path(artifacts)
    manifest = Manifest.load(artifacts)
    spec = manifest.spec(graph, precision)
    if opts.flavor == "tensorrt" and opts.timing_cache is None:
        opts = dataclasses.replace(opts, timing_cache=timing_cache_path(artifacts, target))
    inputs = key_inputs(manifest, graph, precision, opts, target)
    key = cache_key(inputs)
    folder = plan_dir(artifacts, graph, precision, key)
    if folder.exists() and not force:
        record = check_plan(folder, target)
        if record.get("key") != key:
            raise UserError(f"refusing {folder}: its manifest has key {record.get('key')}, expected {key}")
        return EngineRecord(graph, Precision(precision).value, folder, record, True, time.perf_counter() - start)
    probe = probe or probe_gpu()
    deserialize = probe.gpu is not None and probe.gpu.compute_capability == target.compute_capability
    try:
        with atomic_dir(folder) as tmp:
            built = build_plan(tensorrt_graph(manifest, graph, precision)[0], spec, precision, opts, target,
                               deserialize)
            record = _write(tmp, built, key, inputs, spec.name, precision, opts, target)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"out of disk while writing the {graph} engine under {folder.parent}; any previous "
                            "engine is untouched") from None
        raise
    return EngineRecord(graph, Precision(precision).value, folder, record, False, time.perf_counter() - start)


def _write(tmp: Path, built, key: str, inputs: dict, graph: str, precision: Precision, opts: BuildOptions,
           target: Target) -> dict:
    """engine.plan, then manifest.json, into the temporary folder."""
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)                      # mkdtemp makes 0700 folders
    digest = hashlib.sha256()
    with open(tmp / PLAN, "wb") as f:
        view = memoryview(built.plan)
        digest.update(view)
        f.write(view)
    record = {"key": key, "key_inputs": inputs, "graph": graph, "precision": Precision(precision).value,
              "target": target.to_dict(), "options": opts.key_dict(),
              "io": built.io, "profiles": built.profiles, "layers": built.layers, "engine_check": built.engine_check,
              "timing_cache": str(opts.timing_cache) if opts.flavor == "tensorrt" else RTX_TIMING_NOTE,
              "versions": versions(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "build_seconds": round(built.seconds, 3), "plan_bytes": (tmp / PLAN).stat().st_size,
              "plan_sha256": digest.hexdigest()}
    write_json(tmp / MANIFEST, record)
    return record
