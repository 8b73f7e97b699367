"""Flag types shared by the commands: every list-valued flag is one comma-separated value (``--graphs a,b``)."""
from __future__ import annotations

import argparse


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ("a", "b", "c"); an empty list is refused."""
    items = tuple(x.strip() for x in text.split(",") if x.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, got nothing")
    return items
