"""The embedded cluster from the command line, as a user types it (relative paths included)."""

from __future__ import annotations

import json
import subprocess
import sys


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
