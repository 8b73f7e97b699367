"""Reading the JSON files the project trusts (manifests, golden folders, configs, indexes): one line naming the file
for every way they can be wrong (torch-free)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError


def read_json(path: str | Path, what: str = "file") -> dict:
    """The JSON object in ``path``; a UserError when it is missing, unreadable, not UTF-8, not JSON or not an object."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise UserError(f"cannot read {what} {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise UserError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data


def field(data: dict, key: str, kind: type | tuple, where: str):
    """``data[key]`` when it is present and of ``kind`` (bools are not numbers; numbers must be finite)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    value = data.get(key) if isinstance(data, dict) else None
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and isinstance(value, float) and not math.isfinite(value):
        ok = False
    if not ok:
        names = " or ".join({dict: "an object", list: "a list", str: "a string", int: "an integer",
                             float: "a number", bool: "true/false"}.get(k, k.__name__) for k in kinds)
        got = "missing" if not isinstance(data, dict) or key not in data else f"{value!r}"[:60]
        raise UserError(f"{where}: {key!r} must be {names}, got {got}")
    return value
