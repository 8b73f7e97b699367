"""Options of an export, and the one way a graph gets installed: written to a scratch folder, linted, validated,
then moved into place and recorded in the manifest (export, the low-memory export and quantize all use it)."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from nextstep_trt.core.errors import CheckFailed, UserError
from nextstep_trt.core.faults import fault_point
from nextstep_trt.core.fileio import describe_os_error
from nextstep_trt.core.precision import Precision
from nextstep_trt.core.report import ParityReport

from .exporter import OPSET
from .filecheck import graph_files
from .lint import lint_model
from .manifest import Manifest
from .profile import GRAPHS, DeploymentProfile
from .scratch import make_scratch
from .spec import GraphSpec


@dataclass(frozen=True)
class ExportOptions:
    model_dir: Path
    out_dir: Path
    graphs: tuple[str, ...] = GRAPHS
    profile: DeploymentProfile = DeploymentProfile()
    validate: bool = True
    external_data: bool | None = None        # None: only when a graph is over 2 GB
    opset: int = OPSET
    low_memory: bool = False                 # meta-device tracing, weights streamed into external data (lowmem.py)
    dtype: Precision = Precision.FP32        # weight dtype of the graphs; bf16 needs low_memory


def export_disk_need(cfg, profile: DeploymentProfile, graphs, out_dir: Path,
                     precision: Precision = Precision.FP32) -> int:
    """Bytes an export of ``graphs`` adds at its peak: every graph not there yet, plus the largest one replaced
    (graphs are replaced one at a time, the old file kept until the new one validated); from the weight counts."""
    from .sizes import graph_weight_bytes

    sizes = graph_weight_bytes(cfg, profile, Precision(precision).value)
    folder = Path(out_dir) / Precision(precision).value
    replaced = [sizes.get(g, 0) for g in graphs if (folder / f"{g}.onnx").is_file()]
    return sum(sizes.get(g, 0) for g in graphs) - sum(replaced) + max(replaced, default=0)


def check_writable(out_dir: Path) -> None:
    """Create the folder and prove a file can be written there; a UserError otherwise."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".probe-"):
            pass
    except OSError as err:
        raise UserError(f"output folder {out_dir} is not writable: {err.strerror or err}") from None


def _install(files: list[Path], dest_dir: Path) -> list[Path]:
    """Move validated files into place, data before the graph that points at it."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for f in sorted(files, key=lambda p: p.suffix == ".onnx"):
        os.replace(f, dest_dir / f.name)
        fault_point("installing")
    return [dest_dir / f.name for f in files]


def _write(write: Callable[[Path], list[Path]], scratch: Path, graph: str, out_dir: Path) -> list[Path]:
    """``write(scratch)``; a full disk or an unwritable folder is one line naming the graph and the folder."""
    try:
        return write(scratch)
    except OSError as err:
        where = Path(err.filename) if err.filename else scratch
        raise UserError(f"cannot write the {graph} graph into {out_dir} ({where}): {describe_os_error(err)}; "
                        f"nothing was installed") from None


def install_graph(spec: GraphSpec, sizes: dict[str, int], seconds: float, write: Callable[[Path], list[Path]],
                  validate: Callable[[Path], ParityReport], out_dir: Path, manifest: Manifest,
                  precision: Precision = Precision.FP32, extra: dict | None = None,
                  trt_parse: bool = True, trt_graph: str | None = None,
                  io_dtypes: dict[str, str] | None = None) -> ParityReport:
    """Write into a scratch folder, lint, validate, then install and record; a failing graph never replaces a good
    one (export and quantize both install through here; the caller holds the folder's lock, ``scratch.py``). The
    graph file is linted against ``spec`` with ``io_dtypes`` (its own, where they differ: an int8 cache).
    ``write`` returns the graph first; every ``.onnx`` it writes (int4/int8: also the TensorRT deployment,
    ``trt_graph``, the file TensorRT-RTX parses) is hashed into the record with its external data."""
    scratch = _write(lambda _: make_scratch(out_dir, spec.name), out_dir, spec.name, out_dir)
    try:
        files = _write(write, scratch, spec.name, out_dir)
        fault_point("written")
        findings = check_graph(files[0], spec.with_dtypes(io_dtypes or {}), sizes)
        report = validate(files[0])
        if not report.ok:
            r = report.failures()[0]
            raise CheckFailed(f"{spec.name} failed validation at {r.case}: {r.tensor}: {'; '.join(r.violations)} "
                              f"(the previous graph, if any, is untouched)")
        fault_point("validated")
        installed = _install(files, out_dir / Precision(precision).value)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    fault_point("installed")
    opset = next(o.version for o in onnx.load(installed[0], load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    hashes = manifest.hash_files([f for p in installed if p.suffix == ".onnx" for f in graph_files(p)])
    parsed = installed[0].with_name(trt_graph) if trt_graph else installed[0]
    record = {"file": str(installed[0].relative_to(out_dir)),
              "files": [str(p.relative_to(out_dir)) for p in installed],
              "bytes": sum(p.stat().st_size for p in installed),
              "sha256": hashes[installed[0].relative_to(out_dir).as_posix()], "hashes": hashes,
              "seconds": round(seconds, 3), "opset": opset,
              "validated": bool(report.rows), "validation": _summary(report),
              "lint": [f"{f.severity} {f.code} {f.node}: {f.message}" for f in findings],
              "trt_parse": trt_parse_summary(parsed) | ({"file": trt_graph} if trt_graph else {}) if trt_parse else
              {"checked": False, "reason": "skipped: parsing reads every weight into memory"}}
    manifest.record_graph(spec, sizes, precision, record | (extra or {}))
    manifest.save()
    fault_point("recorded")
    return report


def check_graph(path: Path, spec: GraphSpec, sizes: dict[str, int]) -> list:
    """Lint the written graph against its spec; an error finding fails the export."""
    findings = lint_model(path, spec, sizes, hot=True)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        e = errors[0]
        raise UserError(f"{spec.name} failed lint: {e.code} {e.node}: {e.message}"
                        + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return findings


def trt_parse_summary(path: Path) -> dict:
    """Parse with TensorRT-RTX when it is installed (no GPU needed); errors are reported by node name."""
    from .trt_check import trt_parse

    try:
        result = trt_parse(path)
    except UserError as err:  # tensorrt-rtx not installed: record why
        return {"checked": False, "reason": str(err)}
    if not result.ok:
        print(f"warning: TensorRT-RTX cannot parse {path.name}: "
              + "; ".join(f"{node}: {msg}" for node, msg in result.errors[:3]))
    return {"checked": True, "ok": result.ok, "layers": result.num_layers,
            "errors": [f"{node}: {msg}" for node, msg in result.errors]}


def _summary(report: ParityReport) -> dict:
    rows = [r for r in report.rows if r.metrics is not None]
    if not rows:
        return {}
    worst = max(rows, key=lambda r: r.metrics.rel_l2)
    means = {r.tensor: r.extra["mean_cosine"] for r in report.rows if "mean_cosine" in r.extra}
    return {"ok": report.ok, "cases": len({r.case for r in rows}),
            "worst_rel_l2": worst.metrics.rel_l2, "worst_max_abs": max(r.metrics.max_abs for r in rows),
            "worst_case": f"{worst.case} {worst.tensor}", "lowest_cosine": min(r.metrics.cosine for r in rows),
            **({"mean_cosine": means} if means else {})}
