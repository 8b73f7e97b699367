"""Paths read from files (a manifest, a golden folder, a Triton repository, a config.json) stay inside their root
(torch-free).

One rule for every such path: it is relative, has no ``..`` part and, with every symlink followed, resolves inside
the root (the root itself may be a link: it is resolved once). ``hidden=False`` also refuses parts that start with a
dot, so a manifest can never point into a scratch folder (``.export-*``) or a temporary file.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from .errors import UserError


def inside(root: str | Path, rel, what: str, follow_links: bool = True, hidden: bool = True) -> Path:
    """``root / rel`` when ``rel`` stays inside ``root``; a one-line UserError naming ``what`` otherwise.

    ``follow_links=False`` checks the path as written only (for a link the user asked for, e.g. a repository written
    with ``--link symlink``; what lies inside the link's target is checked by that folder's own reader).
    """
    if not isinstance(rel, (str, os.PathLike)) or not str(rel) or "\0" in str(rel):
        raise UserError(f"{what}: {rel!r} is not a file path")
    text = os.fspath(rel)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if Path(text).is_absolute() or text.startswith(("/", "\\")):
        raise UserError(f"{what}: {text} is an absolute path; it must be relative to {root}")
    if ".." in parts:
        raise UserError(f"{what}: {text} leaves {root} (a '..' part)")
    if not hidden and any(p.startswith(".") for p in parts):
        raise UserError(f"{what}: {text} names a hidden file or folder (scratch or temporary) in {root}")
    path = Path(root) / text
    if follow_links:
        base = Path(root).resolve()
        target = path.resolve()
        if not target.is_relative_to(base):
            raise UserError(f"{what}: {text} resolves to {target}, outside {root} (a symlink leaves the folder)")
    return path
