"""A PNG timeline of a chaos run: operation latency over time with the faults and recoveries.

Each dot is one operation (its latency against when it started; unknown outcomes at the top);
shaded spans are faults from injection to recovery; marks show, per incident, detection, the new
primary, the relaunch and the return to the membership.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from .history import Op
from .nemesis import FaultEvent

MARKS = (("detected", "red", "detected"), ("new_primary", "purple", "new primary"),
         ("relaunch_issued", "orange", "relaunch"), ("ready", "green", "ready"))


def plot(path: Path, ops: list[Op], events: list[FaultEvent], incidents: list[dict[str, Any]],
         settings: dict[str, Any]) -> None:
    timed = [o for o in ops if o.wall is not None]
    if not timed:
        return
    t0 = min(o.wall for o in timed)  # type: ignore[type-var]
    fig, ax = plt.subplots(figsize=(14, 5.5), dpi=110)
    top = max((o.latency or 0) * 1000 for o in timed) * 1.3 or 10
    for outcome, color in (("ok", "tab:blue"), ("fail", "tab:red")):
        xs = [o.wall - t0 for o in timed if o.outcome == outcome]  # type: ignore[operator]
        ys = [(o.latency or 0) * 1000 for o in timed if o.outcome == outcome]
        ax.scatter(xs, ys, s=2, color=color, label=f"{outcome} ({len(xs)})", alpha=0.6)
    unknown = [o.wall - t0 for o in timed if math.isinf(o.complete)]  # type: ignore[operator]
    if unknown:
        ax.scatter(unknown, [top] * len(unknown), s=12, marker="x", color="black",
                   label=f"unknown outcome ({len(unknown)})")
    for e in events:
        end = e.healthy or e.recovered or e.injected
        ax.axvspan(e.injected - t0, end - t0, color="tab:red", alpha=0.12)
        ax.text(e.injected - t0, top * 0.93, e.kind, rotation=90, fontsize=6,
                va="top", ha="right")
    seen: set[str] = set()
    for incident in incidents:
        for field, color, label in MARKS:
            at = incident.get(field)
            if at:
                ax.axvline(at - t0, color=color, lw=0.6, alpha=0.7,
                           label=label if label not in seen else None)
                seen.add(label)
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(0, top * 1.05)
    ax.set_xlabel("seconds since the first operation")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"ftds chaos: {settings.get('target')} {settings.get('mode')}, schedule "
                 f"{settings.get('schedule')}, seed {settings.get('seed')}, "
                 f"{len(events)} faults, {len(ops)} operations")
    ax.legend(loc="lower right", fontsize=7, markerscale=3, ncol=4, framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
