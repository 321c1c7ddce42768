"""The comparison's plot: compare reports (one per replica count) drawn as one PNG, and a bad
report refused in one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives in the checkout

from bench import compare, plot

PNG = b"\x89PNG\r\n\x1a\n"
CLIENTS = [1, 16, 128, 512]


def report(replicas: int, *, quick: bool = False, missing: tuple[str, int] | None = None
           ) -> dict[str, Any]:
    """A report as ``scripts/bench compare --replicas N`` writes it: its medians computed by
    compare's own code from per-round rows, NaN-free and with string keys as in the file."""
    systems = ["ftds passive", compare.redis_name(replicas), "PySyncObj batch off"]
    rows: list[dict[str, Any]] = []
    for k, name in enumerate(systems):
        for c in CLIENTS:
            for r in range(3):
                if (name, c) == missing:
                    rows.append({"round": r + 1, "system": name, "clients": c,
                                 "error": "start: no stable leader"})
                    continue
                ops = (1000.0 + 300 * k) * min(c, 64) ** 0.5 * 3 / replicas * (1 + r / 20)
                rows.append({"round": r + 1, "system": name, "clients": c, "acked": int(ops * 8),
                             "ops_s": ops, "p50_ms": c / ops * 1000, "p99_ms": 3 * c / ops * 1000,
                             "errors": {}, "server_us_op": 2e6 / ops / (1 + c / 100),
                             "replica_us_op": 1.5e6 / ops, "client_us_op": 10.0})
    table = compare.medians(rows, systems, CLIENTS)
    return compare.clean({
        "replicas": replicas,
        "config": {"rounds": 3, "duration": 8.0, "warmup": 1.0, "clients": CLIENTS,
                   "systems": systems, "repeats": 3, "quick": quick, "cores": 2},
        "environment": {}, "tunables": {}, "throughput": table,
        "ratios": compare.ratios(table, CLIENTS, replicas), "rows": rows, "elapsed_s": 1.0})


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_reports_of_three_replica_counts_make_a_four_panel_png(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = [write(tmp_path / f"compare-{n}.json", report(n)) for n in (3, 5, 7)]
    out = tmp_path / "figs" / "scaling.png"  # its directory is made
    assert plot.main([*map(str, paths), "--out", str(out)]) == 0
    assert out.stat().st_size > 50_000  # drawn lines, not an empty canvas
    assert png_size(out) == (1500, 1100)  # 2 x 2 panels: throughput against N is there
    assert capsys.readouterr().out == f"written: {out}\n"


def test_one_replica_count_has_no_panel_against_it(tmp_path: Path) -> None:
    path = write(tmp_path / "q5.json", report(5, quick=True, missing=("Redis WAIT 4", 512)))
    out = tmp_path / "one.png"
    assert plot.main([str(path), "--out", str(out)]) == 0
    assert png_size(out) == (1800, 600)  # 1 x 3 panels
    assert out.stat().st_size > 30_000


def test_series_group_redis_across_replica_counts_and_skip_missing_cells(
        tmp_path: Path) -> None:
    five = report(5, missing=("Redis WAIT 4", 512))
    old = report(3)
    del old["replicas"]  # written before --replicas: a 3-node report
    found = plot.series([(tmp_path / "a.json", old), (tmp_path / "b.json", five)])
    assert {(s.system, s.replicas) for s in found} == {
        ("ftds passive", 3), ("Redis WAIT 2", 3), ("PySyncObj batch off", 3),
        ("ftds passive", 5), ("Redis WAIT 4", 5), ("PySyncObj batch off", 5)}
    redis5 = next(s for s in found if s.system == "Redis WAIT 4")
    redis3 = next(s for s in found if s.system == "Redis WAIT 2")
    assert redis5.family == redis3.family == "Redis WAIT N-1"
    assert redis5.points[512]["ops_s"] is None  # every round failed: no figure
    xs, ys = redis5.xy("ops_s")
    assert xs == [1, 16, 128]
    assert ys == [five["throughput"]["Redis WAIT 4"][str(c)]["ops_s"] for c in xs]
    assert redis5.label(False) == "Redis WAIT 4, N=5"
    assert redis3.label(True) == "Redis WAIT 2, N=3 [a.json]"


def test_the_committed_report_still_plots(tmp_path: Path) -> None:
    committed = Path(__file__).resolve().parents[2] / "docs" / "bench-compare.json"
    if not committed.exists():
        pytest.skip("no docs/bench-compare.json")
    out = tmp_path / "old.png"
    assert plot.main([str(committed), "--out", str(out)]) == 0
    assert png_size(out) == (1800, 600)


def _bad(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = report(3)
    no_field = report(3)
    del no_field["throughput"]["ftds passive"]["16"]["p50_ms"]
    empty = report(3)
    empty["throughput"] = {}
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    return {
        "missing": (tmp_path / "nope.json", "no such file"),
        "directory": (tmp_path, "is a directory"),
        "binary": (binary, "not JSON"),
        "truncated": (tmp_path / "cut.json", "not JSON"),
        "list": (write(tmp_path / "list.json", [good]), "not a compare report"),
        "other": (write(tmp_path / "other.json", {"config": {}, "rows": []}),
                  "not a compare report"),
        "no field": (write(tmp_path / "nofield.json", no_field), "lacks ops_s, p50_ms"),
        "empty": (write(tmp_path / "empty.json", empty), "no throughput figures"),
        "replicas": (write(tmp_path / "rep.json", {**good, "replicas": "five"}),
                     "replicas is 'five'"),
    }


@pytest.mark.parametrize("case", ["missing", "directory", "binary", "truncated", "list",
                                  "other", "no field", "empty", "replicas"])
def test_a_bad_report_is_one_line_and_exit_2(tmp_path: Path, case: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cut.json").write_text(json.dumps(report(3))[:200])
    good = write(tmp_path / "good.json", report(5))
    path, why = _bad(tmp_path)[case]
    out = tmp_path / "out.png"
    assert plot.main([str(good), str(path), "--out", str(out)]) == 2
    got = capsys.readouterr()
    assert got.out == ""
    lines = got.err.splitlines()
    assert len(lines) == 1, got.err
    assert lines[0].startswith(f"scripts/bench plot: {path}: ")
    assert why in lines[0]
    assert "Traceback" not in got.err
    assert not out.exists()


def test_an_unwritable_output_is_one_line_and_exit_2(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "good.json", report(3))
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert plot.main([str(good), "--out", str(blocker / "x.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot write it" in err


def test_the_command_line_exits_2_on_a_bad_report(tmp_path: Path) -> None:
    import subprocess

    bad = write(tmp_path / "bad.json", {"hello": 1})
    done = subprocess.run([sys.executable, "-m", "bench.plot", str(bad), "--out",
                           str(tmp_path / "x.png")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 2
    assert done.stderr == (f"scripts/bench plot: {bad}: not a compare report "
                           "(no config and throughput)\n")
