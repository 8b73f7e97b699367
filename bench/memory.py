"""The machine's copy bandwidth and a process's peak resident memory, measured during the run (torch-free)."""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from nextstep_trt.core.resources import rss_bytes

from .poller import Poller

MiB = 2**20


@dataclass
class Bandwidth:
    """Best-of-N large copies. GB/s counts bytes read + bytes written (the STREAM 'copy' convention)."""

    size_mib: int
    repeats: int
    one_thread_gbps: float
    all_threads_gbps: float
    threads: int
    read_gbps: float = 0.0                # best OR-reduction of the source split over the threads: bytes read / s
    method: str = "np.copyto of a float32 buffer, best of N, read+write bytes / s"
    samples_gbps: list[float] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        """The best the machine did: the denominator of every roofline fraction."""
        return max(self.one_thread_gbps, self.all_threads_gbps)

    def to_json(self) -> dict:
        return asdict(self) | {"gbps": self.gbps}


def _split(fn, arrays: tuple[np.ndarray, ...], parts: int) -> float:
    """Seconds to run ``fn`` on ``parts`` slices of ``arrays`` in as many threads (numpy releases the GIL)."""
    size = arrays[0].size
    step = -(-size // parts)
    workers = [threading.Thread(target=fn, args=tuple(a[i:i + step] for a in arrays)) for i in range(0, size, step)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def measure_bandwidth(size_mib: int = 512, repeats: int = 5, threads: int = 2) -> Bandwidth:
    """Copy ``size_mib`` MiB (src + dst = twice that: larger than most last-level caches) ``repeats`` times."""
    src = np.ones(size_mib * MiB // 4, np.float32)
    dst = np.zeros_like(src)                        # touched once so page faults are not timed
    traffic = 2 * src.nbytes
    one, many, read = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        one.append(traffic / (time.perf_counter() - start) / 1e9)
        if threads > 1:
            many.append(traffic / _split(np.copyto, (dst, src), threads) / 1e9)
        read.append(src.nbytes / _split(np.bitwise_or.reduce, (src.view(np.uint64),), threads) / 1e9)
    return Bandwidth(size_mib, repeats, max(one), max(many or one), threads, max(read), samples_gbps=one + many)


class RssSampler(Poller):
    """Samples VmRSS every ``interval`` s in a thread while the block runs: ``start`` and ``peak`` bytes."""

    def __init__(self, interval: float = 0.02):
        super().__init__(interval)
        self.start = self.peak = 0

    def begin(self) -> None:
        self.start = self.peak = rss_bytes()

    def sample(self) -> None:
        self.peak = max(self.peak, rss_bytes())
