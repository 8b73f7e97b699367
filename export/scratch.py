"""Who writes into an artifacts folder, and what an interrupted writer left there (torch-free).

Runs that write an artifacts folder (export, the low-memory export, quantize) hold ``ART/.lock`` (an exclusive
``fcntl.flock``, see ``core/locks.py``) from start to end: a second run into the same folder is refused at once,
naming the first, instead of interleaving its manifest updates. Refusing rather than waiting: these runs take
minutes to hours, and a command that silently waits that long looks hung.

Every scratch folder (``ART/.export-<graph>-XXXX/``, where a graph is written and validated before it is moved into
place) gets an owner file with the pid, its start time, the host and the command. Whoever takes the lock removes
what dead runs left: scratch folders whose owner is gone (or that have no owner file: under the lock no other
writer can be alive) and half-written temporary files of the manifest and of the integrity stamps. A scratch
folder whose owner still runs on this host, or runs on another host, is kept and reported. Nothing ever loads a
scratch folder: manifest paths may not name hidden parts (``core/paths.py``). ``doctor --artifacts`` lists the
same leftovers without removing them (``--clean`` removes the stale ones).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from nextstep_trt.core.errors import UserError
from nextstep_trt.core.faults import fault_point
from nextstep_trt.core.locks import describe_owner, folder_lock, owner_alive, owner_record, read_owner

LOCK, OWNER, SCRATCH_PREFIX = ".lock", ".owner.json", ".export-"
TEMP_PATTERNS = (".manifest.json.*.tmp", ".integrity.json.*.tmp", ".probe-*")


def command_name() -> str:
    """The running command, for owner records: 'nextstep-trt export' or the script's name."""
    argv = [Path(sys.argv[0]).name] + sys.argv[1:2] if sys.argv and sys.argv[0] else ["python"]
    return " ".join(argv)


def make_scratch(out_dir: Path, graph: str) -> Path:
    """A new scratch folder for ``graph`` with this process's owner file."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{graph}-", dir=out_dir))
    (scratch / OWNER).write_text(json.dumps(owner_record(command_name())) + "\n")
    fault_point("scratch")
    return scratch


@dataclass(frozen=True)
class Leftover:
    """Something an earlier run left in an artifacts folder."""

    path: Path
    stale: bool            # its writer is gone: safe to remove
    detail: str

    def line(self) -> str:
        size = _size(self.path)
        state = "stale" if self.stale else "in use"
        return f"{self.path.name} ({size / 2**20:.1f} MiB, {state}): {self.detail}"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _scratch_state(folder: Path) -> Leftover:
    owner = read_owner(folder / OWNER)
    if owner is None:
        return Leftover(folder, True, "no owner file (left by a run killed as it started, or by an older version)")
    alive = owner_alive(owner)
    if alive is None:
        return Leftover(folder, False, f"owned by {describe_owner(owner)}: another host, cannot tell if it runs")
    if alive:
        return Leftover(folder, False, f"owned by {describe_owner(owner)}, still running")
    return Leftover(folder, True, f"left by {describe_owner(owner)}, which is no longer running")


def leftovers(out_dir: Path, locked: bool = False) -> list[Leftover]:
    """Scratch folders and temporary files in ``out_dir``; ``locked``: the caller holds the folder's lock, so no
    other writer is alive and every temporary file is stale."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [_scratch_state(d) for d in sorted(out_dir.glob(f"{SCRATCH_PREFIX}*")) if d.is_dir()]
    for pattern in TEMP_PATTERNS:
        for f in sorted(out_dir.glob(pattern)):
            found.append(Leftover(f, locked, "a temporary file of an interrupted write" if locked else
                                  "a temporary file (stale unless a run is writing right now)"))
    return found


def remove_stale(out_dir: Path, log=print) -> list[Leftover]:
    """Remove what dead runs left (call with the folder's lock held); returns what was removed."""
    removed = []
    for item in leftovers(out_dir, locked=True):
        if not item.stale:
            log(f"note: kept {item.line()}")
            continue
        if item.path.is_dir():
            shutil.rmtree(item.path, ignore_errors=True)
        else:
            item.path.unlink(missing_ok=True)
        log(f"removed {item.path.name}, left by an interrupted run")
        removed.append(item)
    return removed


@contextlib.contextmanager
def artifacts_lock(out_dir: str | Path, log=print) -> Iterator[None]:
    """Hold ``out_dir``'s lock for the block (refusing at once when another run holds it); on the outermost
    acquisition, first remove what dead runs left behind."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"artifacts folder {out_dir} does not exist")
    with folder_lock(out_dir / LOCK, command_name()) as outermost:
        if outermost:
            remove_stale(out_dir, log)
        yield
