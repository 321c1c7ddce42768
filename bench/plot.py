"""Draw ``scripts/bench compare`` reports as one PNG: how throughput, latency and server CPU per
write grow with the clients C and with the replica count N.

    scripts/bench compare --replicas 3 --json run/compare-3.json
    scripts/bench compare --replicas 5 --json run/compare-5.json
    scripts/bench compare --replicas 7 --json run/compare-7.json
    scripts/bench plot run/compare-3.json run/compare-5.json run/compare-7.json \\
        --out docs/bench-scaling.png

Panels: throughput against C; p50 latency against C; throughput against N at each C (only when
the reports hold more than one N); server CPU per write against C. Every point is a median the
report holds (over its rounds); a cell without a figure (every round failed) is left out. A
report written before --replicas existed is a 3-node one. When two reports hold the same
system at the same N, both are drawn (labelled by file) and the N panel takes the later one.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROG = "scripts/bench plot"
FIELDS = ("ops_s", "p50_ms", "server_us_op")


class BadReport(Exception):
    """A file that is not a readable compare report; the message says why, in one line."""


@dataclass
class Series:
    """One system at one replica count, from one report: its medians by C."""

    system: str
    replicas: int
    source: Path
    quick: bool
    points: dict[int, dict[str, float | None]] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The system whatever N is: Redis's row is named by its WAIT, which follows N."""
        return "Redis WAIT N-1" if self.system.startswith("Redis WAIT") else self.system

    def label(self, with_source: bool) -> str:
        text = f"{self.system}, N={self.replicas}"
        if self.quick:
            text += " (quick)"
        return f"{text} [{self.source.name}]" if with_source else text

    def xy(self, key: str, positive: bool = False) -> tuple[list[int], list[float]]:
        """The (C, value) points that have a value (and are > 0 for a log axis)."""
        xs, ys = [], []
        for c in sorted(self.points):
            v = self.points[c].get(key)
            if v is None or math.isnan(v) or (positive and v <= 0):
                continue
            xs.append(c)
            ys.append(v)
        return xs, ys


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def load(path: Path) -> dict[str, Any]:
    """The report in ``path``, checked to be a compare report with throughput figures."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadReport("no such file") from None
    except IsADirectoryError:
        raise BadReport("is a directory, not a report") from None
    except OSError as exc:
        raise BadReport(f"cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadReport("not JSON (not text)") from None
    except json.JSONDecodeError as exc:
        raise BadReport(f"not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(report, dict) or not isinstance(report.get("config"), dict) \
            or "throughput" not in report:
        raise BadReport("not a compare report (no config and throughput)")
    replicas = report.get("replicas", 3)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise BadReport(f"not a compare report (replicas is {replicas!r})")
    table = report["throughput"]
    if not isinstance(table, dict):
        raise BadReport("not a compare report (throughput is not a table)")
    if not table:
        raise BadReport("holds no throughput figures (a --no-throughput run?)")
    for system, by_c in table.items():
        if not isinstance(by_c, dict) or not by_c:
            raise BadReport(f"not a compare report (no figures by C for {system!r})")
        for c, cell in by_c.items():
            if not str(c).isdigit() or not isinstance(cell, dict) \
                    or not all(k in cell and _number(cell[k]) for k in FIELDS):
                raise BadReport(f"not a compare report ({system!r} at C={c} lacks "
                                f"{', '.join(FIELDS)})")
    return report


def series(reports: list[tuple[Path, dict[str, Any]]]) -> list[Series]:
    found = []
    for path, report in reports:
        quick = bool(report["config"].get("quick"))
        for system, by_c in report["throughput"].items():
            found.append(Series(system, report.get("replicas", 3), path, quick, {
                int(c): {k: cell[k] for k in FIELDS} for c, cell in by_c.items()}))
    return found


def draw(all_series: list[Series], reports: list[tuple[Path, dict[str, Any]]],
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    families = list(dict.fromkeys(s.family for s in all_series))
    ns = sorted({s.replicas for s in all_series})
    # The legend reads system by system, N rising (the reports' order breaks ties).
    all_series = sorted(all_series, key=lambda s: (families.index(s.family), s.replicas))
    colours = {f: plt.get_cmap("tab10")(i % 10) for i, f in enumerate(families)}
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    by_n = {n: (styles[i % len(styles)], markers[i % len(markers)]) for i, n in enumerate(ns)}
    twice = {(s.system, s.replicas) for s in all_series
             if sum((o.system, o.replicas) == (s.system, s.replicas) for o in all_series) > 1}
    scaling = len(ns) > 1

    if scaling:
        fig, grid = plt.subplots(2, 2, figsize=(15, 11))
        ax_ops, ax_p50, ax_n, ax_cpu = grid.flat
    else:
        fig, grid = plt.subplots(1, 3, figsize=(18, 6))
        ax_ops, ax_p50, ax_cpu = grid.flat
        ax_n = None

    def line(ax: Any, s: Series, key: str, positive: bool) -> None:
        xs, ys = s.xy(key, positive)
        style, marker = by_n[s.replicas]
        ax.plot(xs, ys, linestyle=style, marker=marker, color=colours[s.family],
                label=s.label((s.system, s.replicas) in twice))

    for s in all_series:
        line(ax_ops, s, "ops_s", positive=False)
        line(ax_p50, s, "p50_ms", positive=True)
        line(ax_cpu, s, "server_us_op", positive=True)
    clients = sorted({c for s in all_series for c in s.points})
    for ax in (ax_ops, ax_p50, ax_cpu):
        ax.set_xscale("log")
        ax.set_xticks(clients, [str(c) for c in clients])
        ax.minorticks_off()
        ax.set_xlabel("clients C (closed loop, one write outstanding each; log scale)")
        ax.grid(True, which="major", alpha=0.3)
    ax_ops.set_title("Throughput against clients")
    ax_ops.set_ylabel("acknowledged writes per second (median of rounds)")
    ax_ops.set_ylim(bottom=0)
    ax_p50.set_title("Median latency against clients")
    ax_p50.set_yscale("log")
    ax_p50.set_ylabel("p50 latency, ms (log scale)")
    ax_cpu.set_title("Server CPU per write against clients")
    ax_cpu.set_yscale("log")
    ax_cpu.set_ylabel("server CPU µs per write, all server processes (log scale)")

    if ax_n is not None:
        c_styles = {c: (styles[i % len(styles)], markers[i % len(markers)])
                    for i, c in enumerate(clients)}
        for fam in families:
            latest: dict[int, Series] = {}
            for s in all_series:  # the later report wins a repeated (system, N)
                if s.family == fam:
                    latest[s.replicas] = s
            for c in clients:
                pts = [(n, latest[n].points.get(c, {}).get("ops_s")) for n in sorted(latest)]
                pts = [(n, v) for n, v in pts if v is not None and not math.isnan(v)]
                if not pts:
                    continue
                style, marker = c_styles[c]
                ax_n.plot([n for n, _ in pts], [v for _, v in pts], linestyle=style,
                          marker=marker, color=colours[fam])
        # Colours are the systems' of the figure's legend; here the line style is C.
        keys = [Line2D([], [], color="grey", linestyle=c_styles[c][0], marker=c_styles[c][1],
                       label=f"C={c}") for c in clients]
        ax_n.set_title("Throughput against replica count, at each C")
        ax_n.set_xticks(ns, [str(n) for n in ns])
        ax_n.set_xlabel("nodes per system N (ftds replicas; Redis master + N-1 replicas; "
                        "PySyncObj nodes)")
        ax_n.set_ylabel("acknowledged writes per second (median of rounds)")
        ax_n.set_ylim(bottom=0)
        ax_n.grid(True, alpha=0.3)
        ax_n.legend(handles=keys, fontsize="small", title="clients (colour: system)",
                    title_fontsize="small")

    handles, labels = ax_ops.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))),
               fontsize="small", title="system, N = nodes per system")
    sources = "; ".join(
        f"{path.name}: N={r.get('replicas', 3)}, {r['config'].get('rounds', '?')} round(s) of "
        f"{r['config'].get('duration', '?')} s, {r['config'].get('cores', '?')} cores"
        + (", QUICK (not figures)" if r["config"].get("quick") else "")
        for path, r in reports)
    fig.suptitle("ftds vs Redis vs PySyncObj on 127.0.0.1: closed-loop writes, medians over "
                 f"rounds\n{sources}", fontsize="medium")
    rows = -(-len(labels) // min(4, max(1, len(labels))))
    fig.tight_layout(rect=(0, min(0.3, 0.04 + 0.03 * rows), 1, 0.95))
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json",
                        help="compare reports (scripts/bench compare --json ...)")
    parser.add_argument("--out", type=Path, default=Path("run/bench-scaling.png"),
                        help="the PNG to write (default run/bench-scaling.png)")
    args = parser.parse_args(argv)
    reports = []
    for path in args.reports:
        try:
            reports.append((path, load(path)))
        except BadReport as exc:
            print(f"{PROG}: {path}: {exc}", file=sys.stderr)
            return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"{PROG}: matplotlib is not installed (a dev dependency: "
              ".venv/bin/pip install 'matplotlib>=3.8')", file=sys.stderr)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        draw(series(reports), reports, args.out)
    except OSError as exc:
        print(f"{PROG}: {args.out}: cannot write it: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
