"""The benchmark's load driver (bench/driver.py) against real replica processes: its C sessions
are spread over ``--ftds-clients`` Client objects, every write is acknowledged and counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def driver(cluster, *, clients: int, ftds_clients: int, duration: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.driver", "--system", "ftds", "--config", str(cluster.path),
         "--clients", str(clients), "--ftds-clients", str(ftds_clients), "--warmup", "0.3",
         "--duration", str(duration)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tools'}"})


@pytest.mark.parametrize("ftds_clients", [1, 3])
def test_the_sessions_are_spread_over_the_client_objects_asked_for(make_cluster, ftds_clients):
    cluster = make_cluster()
    for rid in ("S1", "S2", "S3"):
        cluster.start(rid)
    cluster.bootstrap()
    proc = driver(cluster, clients=5, ftds_clients=ftds_clients, duration=2.0)
    try:
        # Each Client object holds one connection to every replica: the primary counts them.
        links = cluster.wait(
            lambda: (s := cluster.status_of("S1")) and s["client_links"] >= ftds_clients
            and s["client_links"], 20, "the driver's clients to connect")
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    report = json.loads(out)
    assert links == ftds_clients
    assert report["acked"] > 0 and report["errors"] == {} and report["unfinished"] == 0, report
    assert report["clients"] == 5
    # Five sessions wrote, each its own key with increasing integers.
    status = cluster.status_of("S1")
    assert status["clients"] == 5, status
    cluster.wait_converged(["S1", "S2", "S3"])
