"""A reading taken at entry, every ``interval`` seconds in a daemon thread, and at exit (torch-free)."""
from __future__ import annotations

import threading


class Poller:
    """Context manager: ``begin()`` at entry, ``sample()`` every ``interval`` s while the block runs, ``end()`` at
    exit. Subclasses override those three (RssSampler, LoadWatch)."""

    def __init__(self, interval: float):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def begin(self) -> None:
        self.sample()

    def sample(self) -> None:
        raise NotImplementedError

    def end(self) -> None:
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self):
        self.begin()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end()
