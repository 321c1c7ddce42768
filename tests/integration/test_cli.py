"""The embedded cluster from the command line, as a user types it (relative paths included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time


def ftds(*args: str, cwd, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftds", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_local_up_client_status_down_from_a_relative_directory(tmp_path):
    up = ftds("local", "up", "--dir", "run/here", "--quiet", cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stderr
        assert "primary S1" in up.stdout
        config = "run/here/cluster.yml"
        put = ftds("client", "--config", config, "-q", "put", "x", "41", cwd=tmp_path)
        incr = ftds("client", "--config", config, "-q", "incr", "x", cwd=tmp_path)
        assert json.loads(put.stdout) == {"ok": True}
        assert json.loads(incr.stdout) == {"ok": True, "value": 42}
        status = ftds("status", "--config", config, "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stdout + status.stderr
        assert all(r["ready"] for r in json.loads(status.stdout)["replicas"].values())
    finally:
        down = ftds("local", "down", "--dir", "run/here", cwd=tmp_path)
    assert down.returncode == 0 and "supervisor" in down.stdout
    again = ftds("status", "--config", "run/here/cluster.yml", "--timeout", "0.5", cwd=tmp_path)
    assert again.returncode == 3  # nothing answers any more


def test_client_timeout_says_the_outcome_is_unknown_and_it_was(tmp_path):
    """Backups stopped (SIGSTOP): the primary applies a put but cannot commit it. The client
    gives up at --timeout with exit 3, "may or may not have been applied"; once the backups
    run again the put commits, so "unknown" was the honest answer, not "failed"."""
    up = ftds("local", "up", "--dir", "run", "--quiet", "--no-managers", cwd=tmp_path)
    config = "run/cluster.yml"
    stopped: list[int] = []
    try:
        assert up.returncode == 0, up.stderr
        for rid in ("S2", "S3"):
            pid = int((tmp_path / "run" / "pids" / f"{rid}.pid").read_text())
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        started = time.monotonic()
        put = ftds("client", "-c", config, "-q", "--timeout", "1", "put", "x", "7",
                   cwd=tmp_path)
        took = time.monotonic() - started
        assert put.returncode == 3, (put.stdout, put.stderr)
        assert "Traceback" not in put.stderr and len(put.stderr.strip().splitlines()) == 1
        assert "may or may not have been applied" in put.stderr, put.stderr
        assert put.stdout == ""
        assert took < 10, took  # bounded by --timeout (plus start-up), not retried forever
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        stopped.clear()
        get = ftds("client", "-c", config, "-q", "--timeout", "10", "get", "x", cwd=tmp_path)
        assert get.returncode == 0, get.stderr
        assert json.loads(get.stdout) == {"ok": True, "value": 7}
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)
        ftds("local", "down", "--dir", "run", cwd=tmp_path)
