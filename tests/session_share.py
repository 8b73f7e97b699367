"""One copy of an expensive session fixture per test run, shared by the pytest-xdist workers (a uniquely named
module: conftest imports are ambiguous)."""
from __future__ import annotations

import fcntl
import os
import pickle


def shared(tmp_path_factory, name: str, make):
    """``make(folder)``'s result, made once per test run: under pytest-xdist the first worker to ask makes it in
    the run's common temporary folder under a file lock, and the others wait for it and read its pickled result,
    instead of each exporting its own (tests that change a shared folder copy it first)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / f"shared-{name}"
    with open(root.with_name(root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = root / "result.pickle"
        if not done.exists():
            root.mkdir(exist_ok=True)
            result = make(root)
            tmp = done.with_suffix(".tmp")
            tmp.write_bytes(pickle.dumps(result))
            tmp.rename(done)
        return pickle.loads(done.read_bytes())
