"""Advisory folder locks (``fcntl.flock``) and who holds them, plus process identity for owner files (torch-free).

Why flock: the kernel drops the lock when its holder dies, ``kill -9`` included, so a crashed run never leaves a
lock that a later run has to guess about (a pid file would); the lock file keeps the holder's pid, host, start time
and command only so that a refused run can say who is in the way. Locks are reentrant within one process (a nested
call on the same path just counts), because flock locks belong to open files, not processes: a second open of the
same file in the same process would otherwise deadlock against itself. Linux/POSIX only, like TensorRT.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Iterator

from .errors import UserError

_HELD: dict[str, list] = {}        # resolved lock path -> [fd, depth]


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None when it is not running."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_record(command: str) -> dict:
    """This process as an owner: pid, start time, host, command, wall-clock start."""
    pid = os.getpid()
    return {"pid": pid, "start": process_start(pid), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def owner_alive(record: dict) -> bool | None:
    """True when the recorded process still runs, False when it is gone, None when it cannot be told (other host)."""
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return False
    if record.get("host") != socket.gethostname():
        return None
    start = process_start(record["pid"])
    return start is not None and start == record.get("start")


def describe_owner(record: dict) -> str:
    """'`export` (pid 12, host h, since 2024-01-01 10:00:00)' from an owner record."""
    if not isinstance(record, dict):
        return "an unknown process"
    return (f"`{record.get('command', '?')}` (pid {record.get('pid', '?')} on {record.get('host', '?')}, "
            f"since {record.get('since', '?')})")


def read_owner(path: Path) -> dict | None:
    """An owner record from a lock or owner file; None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextlib.contextmanager
def folder_lock(lock_file: str | Path, command: str, wait: bool = False) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_file`` for the block; yields True on the outermost acquisition.

    ``wait=False`` refuses at once with a UserError naming the holder; ``wait=True`` blocks (for short critical
    sections only)."""
    lock_file = Path(lock_file)
    key = str(lock_file.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield False
        finally:
            _HELD[key][1] -= 1
        return
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"cannot open the lock file {lock_file}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = describe_owner(read_owner(lock_file))
            raise UserError(f"{lock_file.parent} is in use by {holder} (lock {lock_file}): wait for it to finish, "
                            f"or use another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner_record(command)) + "\n").encode(), 0)
        _HELD[key] = [fd, 1]
        try:
            yield True
        finally:
            del _HELD[key]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)                     # closing the file releases the flock


def lock_holder(lock_file: str | Path) -> dict | None:
    """Who holds ``lock_file`` right now (None: nobody); never blocks and never keeps the lock."""
    lock_file = Path(lock_file)
    if str(lock_file.resolve()) in _HELD:
        return owner_record(" ".join(sys.argv[:2]) or "this process")
    if not lock_file.exists():
        return None
    fd = os.open(lock_file, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return read_owner(lock_file) or {}
    finally:
        os.close(fd)
