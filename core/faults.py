"""Named fault points, for tests of interrupted runs only (torch-free).

``NEXTSTEP_TRT_FAULT=kill:<point>`` makes the process SIGKILL itself when it reaches ``<point>`` (as ``kill -9``
would at that moment); ``hold:<point>`` prints ``fault point <point>: holding`` on stderr and waits until its stdin
closes (a second run can then be started against the same folder). Unset, a fault point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "NEXTSTEP_TRT_FAULT"


def fault_point(name: str) -> None:
    """Die or hold here when the environment asks for it at this point."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    action, _, point = spec.partition(":")
    if point != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hold":
        print(f"fault point {name}: holding", file=sys.stderr, flush=True)
        sys.stdin.read()
