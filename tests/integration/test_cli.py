"""The embedded cluster from the command line, as a user types it (relative paths included)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ftds import local


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


def _replica(config: Path, rid: str) -> subprocess.Popen[bytes]:
    """A replica started as the RM's local launcher starts one: in a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "ftds", "replica", "--config", str(config),
                             "--id", rid], cwd=config.parent, start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_local_down_stops_a_daemon_no_pid_file_names_and_no_other_cluster(tmp_path):
    """A pid file can miss a daemon of the cluster: a launcher killed between starting a
    replica and writing its file, or a second start that overwrote it. ``local down`` still
    stops every daemon run with this cluster's file, and leaves another cluster's alone."""
    up = ftds("local", "up", "--dir", "run", "--quiet", "--no-managers", cwd=tmp_path)
    orphan = bystander = None
    try:
        assert up.returncode == 0, up.stderr
        # Written once this cluster listens, so that its ports are not picked again.
        bystander = _replica(local.write_cluster(tmp_path / "other", 3), "S1")
        run = tmp_path / "run"
        os.kill(int((run / "pids" / "S2.pid").read_text()), signal.SIGKILL)
        orphan = _replica(run / "cluster.yml", "S2")  # no pid file names it
        down = ftds("local", "down", "--dir", "run", cwd=tmp_path)
        assert down.returncode == 0 and "S2" in down.stdout, down.stdout
        assert orphan.wait(timeout=20) is not None
        assert bystander.poll() is None, "a daemon of another cluster was stopped"
    finally:
        for proc in (orphan, bystander):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        ftds("local", "down", "--dir", "run", cwd=tmp_path)
