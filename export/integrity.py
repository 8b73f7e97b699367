"""Integrity of exported graphs at any size: weights against the checkpoint, I/O against the spec, onnx's checker,
and numeric spot checks, all without loading a whole graph's weights (torch).

Weights are compared byte for byte, streamed, against the checkpoint tensor each initializer is named after
(converted to the initializer's dtype), and their sha256 against the hashes recorded at export. A graph whose
external data is a hard link to the checkpoint shares its bytes with it, so only the recorded hashes can tell
that those bytes changed after the export.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import TensorProto

from nextstep_trt.core.report import ParityReport

from .external import ONNX_TO_TORCH, checkpoint_key
from .initializers import GraphBytes, external_info, tensor_bytes
from .lint import lint_model, load_model
from .sources import WeightSources
from .spec import GraphSpec

HASHES_KEY = "nextstep_trt.weight_sha256"     # model metadata: {initializer: sha256 of its bytes at export}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class IntegrityReport:
    """Named pass/fail checks plus the numeric spot checks of one graph."""

    graph: str
    checks: list[Check] = field(default_factory=list)
    parity: ParityReport = field(default_factory=ParityReport)

    @property
    def ok(self) -> bool:
        """Every check and every spot-check row passed."""
        return all(c.ok for c in self.checks) and self.parity.ok

    def table(self) -> str:
        """One line per check, then the spot-check rows."""
        lines = [f"{self.graph}: {'ok' if self.ok else 'FAILED'}"]
        lines += [f"  {'ok ' if c.ok else 'NO '} {c.name:<10} {c.detail}" for c in self.checks]
        if self.parity.rows:
            lines += ["  " + line for line in self.parity.table().splitlines()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {"graph": self.graph, "ok": self.ok, "checks": [c.__dict__ for c in self.checks],
                "parity": self.parity.to_json()}

    def first_failure(self) -> str:
        """The first failing check or row, in one line ('' when all passed)."""
        bad = [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]
        bad += [f"{r.case} {r.tensor}: {'; '.join(r.violations)}" for r in self.parity.failures()]
        return bad[0] if bad else ""


def _compare_one(t: TensorProto, graph: str, graph_dir: Path, sources: WeightSources, h) -> str | None:
    """Stream one initializer against its checkpoint tensor, hashing its bytes into ``h``; a problem or None."""
    key = checkpoint_key(graph, t.name)
    if t.data_type not in ONNX_TO_TORCH or key is None or sources.shape(graph, key) is None:
        for block in tensor_bytes(t, graph_dir):
            h.update(block)
        return None
    if tuple(t.dims) != sources.shape(graph, key):
        return f"{t.name} is {list(t.dims)}, checkpoint {key} is {list(sources.shape(graph, key))}"
    with GraphBytes(t, graph_dir) as graph_bytes:
        for want in sources.chunks(graph, key, ONNX_TO_TORCH[t.data_type]):
            got = graph_bytes.read(len(want))
            h.update(got)
            if got != want:
                at = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
                return f"{t.name} differs from checkpoint {key} at byte {graph_bytes.pos - len(got) + at}"
        if graph_bytes.left:
            return f"{t.name} holds more bytes than checkpoint {key}"
    return None


def compare_weights(model: onnx.ModelProto, graph: str, graph_dir: Path,
                    sources: WeightSources) -> tuple[Check, dict[str, str]]:
    """Every initializer named after a checkpoint tensor equals it; every hash equals the one recorded at export."""
    recorded = json.loads(next((p.value for p in model.metadata_props if p.key == HASHES_KEY), "{}"))
    hashes, problems, compared, nbytes = {}, [], 0, 0
    for t in model.graph.initializer:
        h = hashlib.sha256()
        try:
            problem = _compare_one(t, graph, graph_dir, sources, h)
        except (OSError, EOFError, KeyError) as err:
            problem = f"{t.name}: cannot read its data ({err})"
        hashes[t.name] = h.hexdigest()
        key = checkpoint_key(graph, t.name)
        if problem is None and key is not None and sources.shape(graph, key) is not None:
            compared += 1
            nbytes += external_info(t)[2] if t.data_location == TensorProto.EXTERNAL else len(t.raw_data)
        if problem is None and recorded and recorded.get(t.name) not in (None, hashes[t.name]):
            problem = f"{t.name}: bytes changed since the export (sha256 differs from the recorded one)"
        if problem:
            problems.append(problem)
    derived = len(model.graph.initializer) - compared
    detail = (f"{compared} initializers ({nbytes / 1e9:.2f} GB) equal their checkpoint tensors, {derived} derived "
              f"constants hashed" + (", hashes match the export" if recorded else ""))
    if problems:
        detail = f"{len(problems)} problem(s): {'; '.join(problems[:3])}"
    return Check("weights", not problems, detail), hashes


def record_hashes(model: onnx.ModelProto, hashes: dict[str, str]) -> None:
    """Store the weights' hashes in the graph's metadata (replacing older ones)."""
    keep = [p for p in model.metadata_props if p.key != HASHES_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in keep}, HASHES_KEY: json.dumps(hashes)})


def check_locations(model: onnx.ModelProto, graph_dir: Path) -> Check:
    """External data stays inside the graph's folder, in regular files long enough for every tensor."""
    problems = []
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        location, offset, length = external_info(t)
        path = graph_dir / location
        if Path(location).is_absolute() or ".." in Path(location).parts:
            problems.append(f"{t.name}: location {location} leaves the graph's folder")
        elif not path.is_file() or path.is_symlink():
            problems.append(f"{t.name}: {location} is not a regular file")
        elif offset + length > path.stat().st_size:
            problems.append(f"{t.name}: bytes {offset}..{offset + length} lie beyond the end of {location}")
    detail = "; ".join(problems[:3]) or "every external tensor lies inside a regular file beside the graph"
    return Check("locations", not problems, detail)


def run_checker(path: Path, model: onnx.ModelProto) -> Check:
    """onnx.checker.check_model on the graph's path, with each external file stood in for by a sparse file.

    onnx >= 1.17 refuses external files with more than one hard link (a hardlink-attack guard), which a graph
    linked to its checkpoint always has; the stand-ins keep every location, name and size and cost no disk.
    """
    files = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    shadow = Path(tempfile.mkdtemp(prefix="nextstep-checker-"))
    try:
        shutil.copyfile(path, shadow / path.name)
        for name in files:
            src = path.parent / name
            (shadow / name).parent.mkdir(parents=True, exist_ok=True)
            with open(shadow / name, "wb") as f:
                f.truncate(src.stat().st_size if src.exists() else 0)
        onnx.checker.check_model(str(shadow / path.name))
        return Check("checker", True, f"onnx {onnx.__version__} checker passed ({len(files)} external file(s))")
    except (onnx.checker.ValidationError, OSError) as err:
        return Check("checker", False, str(err).splitlines()[0][:300])
    finally:
        shutil.rmtree(shadow, ignore_errors=True)


def check_spec(path: Path, spec: GraphSpec, sizes: dict | None) -> Check:
    """lint_model with the spec: I/O names, dtypes, ranks and dynamic dims (no weights read)."""
    errors = [f for f in lint_model(path, spec, sizes, hot=True) if f.severity == "error"]
    return Check("spec", not errors, "; ".join(str(e) for e in errors[:3]) or f"I/O matches the {spec.name} spec")


def check_graph_file(path: Path, spec: GraphSpec, sizes: dict | None, sources: WeightSources,
                     numeric: bool = True, layer: int | None = None) -> IntegrityReport:
    """Every integrity check of one written graph; ``numeric`` adds the spot check where the graph has one."""
    from .spotcheck import spot_check

    model = load_model(path)
    report = IntegrityReport(spec.name)
    report.checks.append(compare_weights(model, spec.name, path.parent, sources)[0])
    report.checks.append(check_locations(model, path.parent))
    report.checks.append(check_spec(path, spec, sizes))
    report.checks.append(run_checker(path, model))
    if numeric:
        report.parity.extend(spot_check(spec.name, path, model, sources, layer))
    return report
