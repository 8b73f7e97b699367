"""sha256 of files, computed in full once and then remembered by a stat stamp (torch-free).

A stamp is (device, inode, size, mtime_ns, ctime_ns) taken right after a full hash. A later check only stats the
file: the same stamp means the same bytes, anything else means a full hash again. ``ctime`` cannot be set by a user
(``touch -d`` or ``os.utime`` restoring an mtime moves it), and is also moved by a rename or a new hard link, which
only costs one extra hash. A stamp taken within ``RACY_NS`` of the file's last change is not trusted (the
file-system clock is coarse: a write in the same tick would keep the timestamps; git's "racy" rule), so that file is
hashed once more at its next check. Stamps are a cache, not a proof: a file rewritten with its old timestamps and
inode by someone who can also reset the ctime (root with the system clock or raw disk access) is not detected until
a full check (``force=True``; ``nextstep-trt verify --integrity``).

Stamps live in one JSON file per folder (``ART/.integrity.json``), keyed by device:inode, so hard links to the same
bytes share one stamp; it is rewritten atomically under a short lock and merged with what other processes wrote.
A store that cannot be written (read-only folder) only means every check hashes in full.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .errors import UserError
from .fileio import write_json
from .locks import folder_lock

CHUNK = 1 << 24
RACY_NS = 100_000_000              # 0.1 s: well above the kernel's timestamp granularity (a jiffy, 1-10 ms)
STORE_VERSION = 1


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


class HashCache:
    """sha256 of files, re-hashed only when their stamp changed; ``hashed`` lists every full hash this object did."""

    def __init__(self, store: str | Path | None, force: bool = False):
        self.store, self.force = (Path(store) if store is not None else None), force
        self.entries = self._read() if store is not None and not force else {}
        self.new: dict[str, dict] = {}
        self.hashed: list[Path] = []
        self.hashed_bytes = 0
        self._paths: dict[str, Path] = {}      # key -> the path a new stamp was taken through (for settle)

    def _read(self) -> dict:
        try:
            data = json.loads(self.store.read_text())
        except (OSError, ValueError):
            return {}                    # a missing or damaged store only costs full hashes
        files = data.get("files") if isinstance(data, dict) and data.get("version") == STORE_VERSION else None
        return files if isinstance(files, dict) else {}

    def cached(self, path: str | Path) -> str | None:
        """The remembered sha256 when the file's stamp is unchanged and was not racy; None otherwise (stat only)."""
        st = os.stat(path)
        entry = self.new.get(_key(st)) or self.entries.get(_key(st))
        if self.force or not isinstance(entry, dict) or {k: entry.get(k) for k in _stamp(st)} != _stamp(st):
            return None
        if not isinstance(entry.get("checked_ns"), int) or entry["checked_ns"] - st.st_ctime_ns < RACY_NS:
            return None
        return entry.get("sha256") if isinstance(entry.get("sha256"), str) else None

    def sha256(self, path: str | Path) -> str:
        """The file's sha256: from its stamp when unchanged, else hashed in full (and stamped when it held still)."""
        hit = self.cached(path)
        if hit is not None:
            return hit
        before = os.stat(path)
        digest = sha256_file(path)
        after = os.stat(path)
        self.hashed.append(Path(path))
        self.hashed_bytes += after.st_size
        if _stamp(before) == _stamp(after) and _key(before) == _key(after):
            self.new[_key(after)] = {"path": self._path_text(path), **_stamp(after), "sha256": digest,
                                     "checked_ns": time.time_ns()}
            self._paths[_key(after)] = Path(path)
        return digest

    def settle(self) -> list[Path]:
        """Hash once more, after the racy window has passed, every file whose new stamp was taken within
        ``RACY_NS`` of its last change, so that the next check of it only stats (for a writer whose files are read
        next by another process, e.g. a Triton repository; waits at most ``RACY_NS``). Returns those files."""
        taken = {k: self.new.get(k) or self.entries.get(k) for k in self._paths}     # saved or not yet
        racy = {k: e for k, e in taken.items() if isinstance(e, dict) and e["checked_ns"] - e["ctime_ns"] < RACY_NS}
        if not racy:
            return []
        wait_ns = max(e["ctime_ns"] for e in racy.values()) + RACY_NS - time.time_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        for key in racy:
            self.sha256(self._paths[key])
        return [self._paths[k] for k in racy]

    def _path_text(self, path: str | Path) -> str:
        """The file's path for the store: relative to the store's folder when inside it (so a renamed folder keeps
        its stamps), else absolute."""
        full = Path(path).resolve()
        if self.store is not None and full.is_relative_to(self.store.parent.resolve()):
            return full.relative_to(self.store.parent.resolve()).as_posix()
        return str(full)

    def save(self) -> bool:
        """Merge the new stamps into the store (atomically, under its lock); False when it cannot be written."""
        if self.store is None or not self.new:
            return True
        try:
            with folder_lock(self.store.with_name(self.store.name + ".lock"), "integrity stamps", wait=True):
                merged = {k: v for k, v in self._read().items() if _live(self.store.parent, k, v)} | self.new
                write_json(self.store, {"version": STORE_VERSION, "files": merged})
        except (OSError, UserError):      # an unwritable folder: later checks hash in full again
            return False
        self.entries |= self.new
        self.new = {}
        return True


def _live(folder: Path, key: str, entry) -> bool:
    """A stored stamp whose file still exists under its recorded path (relative to ``folder``) and inode."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return False
    try:
        return _key(os.stat(folder / entry["path"])) == key
    except OSError:
        return False
