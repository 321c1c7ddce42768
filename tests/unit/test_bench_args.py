"""A benchmark given a count or a duration it cannot use says which, before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FTDS = [sys.executable, "-m", "ftds"]


@pytest.mark.parametrize("argv, option", [
    (["bench", "recovery", "--trials", "0"], "--trials"),
    (["bench", "core", "--repeats", "0"], "--repeats"),
    (["bench", "core", "--duration", "-1"], "--duration"),
    (["bench", "core", "--rate", "nan"], "--rate"),
    (["bench", "flood", "--repeats", "0"], "--repeats"),
    (["bench", "flood", "--idle", "-5"], "--idle"),
    (["bench", "bigstate", "--repeats", "0"], "--repeats"),
    (["bench", "bigstate", "--mib", "0"], "--mib"),
    (["bench", "bigstate", "--misses", "0"], "--misses"),
    (["bench", "bigstate", "--sizes", "50,x"], "--sizes"),
    (["bench", "bigstate", "--sizes", "0"], "--sizes"),
    (["bench", "lab", "--reruns", "0"], "--reruns"),
])
def test_a_bench_refuses_a_count_or_duration_it_cannot_use(argv, option):
    done = subprocess.run([*FTDS, *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"argument {option}: must be" in done.stderr
    assert done.stdout == ""  # nothing was measured


@pytest.mark.parametrize("argv, option", [
    (["--rounds", "0"], "--rounds"), (["--duration", "0"], "--duration"),
    (["--repeats", "0"], "--repeats"), (["--warmup", "-1"], "--warmup"),
    (["--clients", "1,x"], "--clients"), (["--clients", "0,16"], "--clients"),
])
def test_the_comparison_refuses_a_count_or_duration_it_cannot_use(argv, option, capsys):
    sys.path.insert(0, str(REPO))
    from bench import compare

    with pytest.raises(SystemExit) as exit_:
        compare.parse_args(argv)
    assert exit_.value.code == 2
    assert f"argument {option}: must be" in capsys.readouterr().err
