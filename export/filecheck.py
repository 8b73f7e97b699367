"""Integrity of an artifacts folder's files at load: the bytes every graph reads (the graph and its external data)
must be those recorded in the manifest when the graph was validated and installed (torch-free).

Cost: each file is hashed in full the first time it is used after any change, then only stat-ed — its stamp
(device, inode, size, mtime, ctime) sits next to the manifest in ``ART/.integrity.json`` (``core/digests.py``).
``force`` (``nextstep-trt verify --integrity``) hashes every file in full whatever the stamps say.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nextstep_trt.core.digests import HashCache
from nextstep_trt.core.errors import UserError
from nextstep_trt.core.paths import inside

INTEGRITY = ".integrity.json"


@dataclass(frozen=True)
class FileCheck:
    """One file against its recorded sha256."""

    path: Path
    ok: bool
    detail: str


def graph_files(graph_path: Path) -> list[Path]:
    """The graph file and every external-data file it names (read from the graph, not trusted from a list)."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(graph_path), load_external_data=False)
    names = {e.value for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL
             for e in t.external_data if e.key == "location"}
    for node in model.graph.node:       # Constant nodes may hold external tensors too
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_location == TensorProto.EXTERNAL:
                names |= {e.value for e in a.t.external_data if e.key == "location"}
    where = f"{graph_path}: external data location"
    return [graph_path] + [inside(graph_path.parent, n, where) for n in sorted(names)]


def record_hashes(root: Path, files: list[Path], cache: HashCache) -> dict[str, str]:
    """rel path -> sha256 of each file (stamped in ``cache`` as it is hashed)."""
    return {Path(f).relative_to(root).as_posix(): cache.sha256(f) for f in files}


def check_file(root: Path, rel: str, want: str, cache: HashCache, what: str) -> FileCheck:
    """One recorded file: inside the folder, present, and with the recorded bytes."""
    path = inside(root, rel, what, hidden=False)
    if not path.is_file():
        return FileCheck(path, False, "missing")
    got = cache.sha256(path)
    if got != want:
        return FileCheck(path, False, f"its bytes differ from those validated at export (sha256 {got[:12]}..., "
                                      f"recorded {str(want)[:12]}...)")
    return FileCheck(path, True, "matches its recorded sha256")


def require_files(root: Path, entry: dict, cache: HashCache, what: str) -> None:
    """Every file of one manifest entry checked; a UserError naming the first that is not as recorded."""
    hashes = entry.get("hashes")
    if not isinstance(hashes, dict) or not hashes:
        raise UserError(f"{what}: the manifest records no sha256 of {entry.get('file')} and its data (exported "
                        f"before integrity checks): re-export it")
    for rel, want in hashes.items():
        check = check_file(root, rel, want, cache, what)
        if check.detail == "missing":
            raise UserError(f"{check.path} is named in the manifest but missing")
        if not check.ok:
            raise UserError(f"refusing {check.path}: {check.detail}; re-export it, or run `nextstep-trt verify "
                            f"--artifacts {root} --integrity` to check every file")
