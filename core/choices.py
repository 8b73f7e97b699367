"""One way to read an option that names a choice (an Enum) or a bounded number, for every caller: the Python API,
the runtime loop, the CLI and the server (torch-free)."""
from __future__ import annotations

import enum
import math
from typing import TypeVar

from .errors import UserError

E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: type[E], value, option: str) -> E:
    """``value`` as a member of ``cls``: the member itself or its exact string value; anything else is refused."""
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        for member in cls:
            if member.value == value:
                return member
    choices = ", ".join(str(m.value) for m in cls)
    raise UserError(f"{option} {value!r} is not one of: {choices}")


def check_number(option: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite number in [lo, hi] (or (lo, hi] with ``lo_open``); NaN, Inf, strings and bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise UserError(f"{option} must be a number, got {value!r}")
    v = float(value)
    low_ok = v > lo if lo_open else v >= lo
    if not math.isfinite(v) or not low_ok or v > hi:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise UserError(f"{option} {value!r} is outside {interval}")
    return v


def check_int(option: str, value, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (bools and non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) and not (hasattr(value, "__index__")):
        if not (isinstance(value, float) and value.is_integer()):
            raise UserError(f"{option} must be an integer, got {value!r}")
    v = int(value)
    if not lo <= v <= hi:
        raise UserError(f"{option} {v} is outside {lo}..{hi}")
    return v


def check_text(option: str, value) -> str:
    """A str that encodes as UTF-8 (a command line with invalid bytes arrives as lone surrogates)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{option} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise UserError(f"{option} must be text, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{option} is not valid UTF-8") from None
    return value
