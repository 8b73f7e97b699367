"""Whether a bench cell's numbers can be trusted: the load on the machine while it ran, and the spread of its timed
repeats, with the re-run rule (torch-free).

Load: the 1-minute load average is read when the cell starts, every ``interval`` seconds while it runs and when it
ends; a cell is *under load* when the highest reading exceeds the cores this process may use. The bench itself keeps
about one runnable thread per core busy (ONNX Runtime and torch use every core), so a reading above the core count
means other work competed for the CPU during the cell.

Other processes' CPU: the 1-minute load average lags a short cell by up to a minute, so the watch also counts the
CPU time the whole machine spent busy (/proc/stat) minus this process's own (/proc/self/stat) over the cell; a cell
is also under load when other processes took more than ``OTHERS_MAX`` (25%) of the machine's CPU time meanwhile.

Spread: max / min of the timed repeats of one cell (end-to-end seconds of each run; for the decode-step
micro-benchmark, each round's median step). A cell whose spread exceeds ``SpreadRule.max_ratio`` (1.25) is run again,
up to ``SpreadRule.reruns`` times; the attempt with the smallest spread is kept and every attempt is reported. One
timed repeat has no spread: the report says so.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .poller import Poller

LoadReader = Callable[[], float]
CpuReader = Callable[[], "tuple[int, int, int] | None"]     # (machine busy ticks, machine total ticks, own ticks)
OTHERS_MAX = 0.25                 # share of the machine's CPU time other processes may take during a cell
MIN_TICKS = 50                    # fewer clock ticks than this (0.25 s on 2 cores) are too few to judge the share


def one_minute_load() -> float:
    """The 1-minute load average (nan where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def cpu_ticks() -> tuple[int, int, int] | None:
    """(busy, total) clock ticks of every CPU since boot and this process's user+system ticks (None without /proc)."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        own = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    total = sum(fields[:8])                                            # guest time is already in user
    return total - idle, total, int(own[11]) + int(own[12])            # utime, stime


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class LoadReading:
    """The load seen during one cell: every reading, the highest, and the core count it is judged against."""

    samples: list[float] = field(default_factory=list)
    cores: int = 1
    others_share: float | None = None      # other processes' share of the machine's CPU time during the cell

    @property
    def peak(self) -> float | None:
        finite = [s for s in self.samples if s == s]          # drop nan
        return max(finite) if finite else None

    @property
    def over(self) -> bool:
        """Other processes competed for the CPU: the highest reading exceeds the cores, or they took more than
        OTHERS_MAX of the machine's CPU time."""
        return (self.peak is not None and self.peak > self.cores) or \
            (self.others_share is not None and self.others_share > OTHERS_MAX)

    def warning(self, cell: str) -> str | None:
        """One line for the table when the cell ran under load, else None."""
        if not self.over:
            return None
        load = f"1-min load average up to {self.peak:.2f}" + (f" > {self.cores} cores" if self.peak > self.cores
                                                              else f" ({self.cores} cores)")
        others = "" if self.others_share is None else f", other processes took {100 * self.others_share:.0f}% " \
            "of the CPU time"
        return f"{cell} ran under load: {load}{others} (its times are not trustworthy)"


class LoadWatch(Poller):
    """Context manager: reads the load at entry, every ``interval`` s in a daemon thread, and at exit."""

    def __init__(self, reader: LoadReader = one_minute_load, cores: int | None = None, interval: float = 1.0,
                 cpu: CpuReader = cpu_ticks):
        super().__init__(interval)
        self.reader, self.cpu = reader, cpu
        self.reading = LoadReading(cores=cores or usable_cores())
        self._ticks: tuple[int, int, int] | None = None

    def begin(self) -> None:
        self._ticks = self.cpu()
        self.sample()

    def sample(self) -> None:
        self.reading.samples.append(self.reader())

    def end(self) -> None:
        self.sample()
        end = self.cpu()
        if self._ticks is not None and end is not None and end[1] - self._ticks[1] >= MIN_TICKS:
            busy, total, own = (b - a for a, b in zip(self._ticks, end))
            self.reading.others_share = max(0.0, busy - own) / total


def spread(values: Sequence[float]) -> float | None:
    """max / min of the timed repeats (None for fewer than two, or a non-positive minimum)."""
    if len(values) < 2 or min(values) <= 0:
        return None
    return max(values) / min(values)


@dataclass(frozen=True)
class SpreadRule:
    """A cell whose repeats spread wider than ``max_ratio`` is run again, at most ``reruns`` times."""

    max_ratio: float = 1.25
    reruns: int = 2

    def wide(self, value: float | None) -> bool:
        return value is not None and value > self.max_ratio


@dataclass
class Stability:
    """What a cell's attempts looked like: the spread of each (None: one repeat) and the load of the kept one."""

    spreads: list[float | None]
    kept: int                                   # index of the attempt whose numbers the report shows
    load: LoadReading
    rule: SpreadRule

    @property
    def spread(self) -> float | None:
        return self.spreads[self.kept]

    @property
    def reruns(self) -> int:
        return len(self.spreads) - 1

    def notes(self, cell: str) -> list[str]:
        """Warnings for the table: load, a spread still wide after the re-runs, re-runs that happened."""
        out = [w for w in [self.load.warning(cell)] if w]
        shown = ", ".join("-" if s is None else f"{s:.3f}" for s in self.spreads)
        if self.rule.wide(self.spread):
            out.append(f"{cell}: repeats still spread {self.spread:.3f}x (> {self.rule.max_ratio:g}) after "
                       f"{self.reruns} re-run(s) (spreads {shown}): its times are not trustworthy")
        elif self.reruns:
            out.append(f"{cell}: re-run {self.reruns}x for a spread > {self.rule.max_ratio:g} (spreads {shown}); "
                       f"attempt {self.kept + 1} kept")
        return out

    def to_json(self) -> dict:
        return {"spreads": self.spreads, "kept": self.kept, "spread": self.spread, "reruns": self.reruns,
                "max_ratio": self.rule.max_ratio, "load_samples": self.load.samples, "load_peak": self.load.peak,
                "others_cpu_share": self.load.others_share,
                "cores": self.load.cores, "under_load": self.load.over}


def run_stable(attempt: Callable[[], tuple[float | None, object]], rule: SpreadRule,
               watch: Callable[[], LoadWatch]) -> tuple[object, Stability]:
    """Run ``attempt`` (-> (its spread, its result)) under a LoadWatch until the spread is within the rule or the
    re-runs are spent; (the kept attempt's result, its Stability). The kept attempt is the one of smallest spread."""
    tries: list[tuple[float | None, object, LoadReading]] = []
    for _ in range(1 + max(0, rule.reruns)):
        with watch() as w:
            value, result = attempt()
        tries.append((value, result, w.reading))
        if not rule.wide(value):
            break
    kept = min(range(len(tries)), key=lambda i: -1.0 if tries[i][0] is None else tries[i][0])
    return tries[kept][1], Stability([t[0] for t in tries], kept, tries[kept][2], rule)
