"""The pure arithmetic of the comparison: windows, percentiles, CPU accounting, ratios."""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` % of values at or
    below it (NaN for no values, so an empty cell never reads as a fast one)."""
    if not values:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"percentile {q} is outside (0, 100]")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Window:
    """The measured interval [start, end): an operation counts when it *completes* inside it,
    whenever it was sent, so neither long latencies nor the edges bias the rate."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)  # seconds, of counted operations
    errors: Counter[str] = field(default_factory=Counter)  # refusals, timeouts, errors by kind

    def record(self, sent: float, done: float) -> None:
        if self.start <= done < self.end:
            self.latencies.append(done - sent)

    def fail(self, kind: str, done: float) -> None:
        if self.start <= done < self.end:
            self.errors[kind] += 1

    @property
    def duration(self) -> float:
        return self.end - self.start

    def summary(self) -> dict[str, object]:
        return {"acked": len(self.latencies), "ops_s": len(self.latencies) / self.duration,
                "p50_ms": percentile(self.latencies, 50) * 1000,
                "p99_ms": percentile(self.latencies, 99) * 1000,
                "errors": dict(self.errors), "window_s": self.duration}


def cpu_ticks(stat_line: str) -> int:
    """utime + stime + cutime + cstime from a /proc/<pid>/stat line, in clock ticks.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after
    its last ')'. Waited-for children count too: PySyncObj compacts its log in a fork."""
    rest = stat_line.rsplit(")", 1)[1].split()
    # rest[0] is field 3 (state); utime..cstime are fields 14..17.
    return sum(int(x) for x in rest[11:15])


def read_cpu(pid: int) -> float | None:
    """CPU seconds used so far by ``pid`` (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return cpu_ticks(fh.read()) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def us_per_op(cpu_seconds: float, ops: int) -> float:
    return cpu_seconds * 1e6 / ops if ops else math.nan


def ratio(ours: float | None, theirs: float | None) -> float:
    """ours / theirs; NaN when either is missing, zero or NaN (no fake infinities)."""
    if not ours or not theirs or math.isnan(ours) or math.isnan(theirs):
        return math.nan
    return ours / theirs


def median(values: list[float]) -> float:
    """Median of the numbers that are there (NaN for none)."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def rotation(names: list[str], round_index: int) -> list[str]:
    """The systems' order in round ``round_index`` (0-based): each round starts one later, so
    every system runs early and late in the sitting."""
    k = round_index % len(names) if names else 0
    return names[k:] + names[:k]
