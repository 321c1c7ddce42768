"""Real replica processes on 127.0.0.1 serve their own Prometheus pages: request counters and
the latency histogram move with a workload, and a replica stopped and started again serves
on the same port."""

from __future__ import annotations

import signal
import socket
from typing import Any

from helpers import finish, scrape, wait_until

DURATION = "ftds_replica_request_duration_seconds"


def page(cluster: Any, rid: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return scrape("127.0.0.1", cluster.config.replica(rid).metrics_port)


def test_each_replica_serves_its_requests_latency_and_role(make_cluster, tmp_path):
    cluster = make_cluster()
    ids = cluster.config.replica_ids
    for rid in ids:
        cluster.start(rid)
    cluster.bootstrap()
    summary = finish(cluster.workload("W", tmp_path / "w.jsonl", clients=2, rate=100,
                                      duration=2.0))
    assert summary["acked"] > 50
    primary = (("replica", ids[0]),)

    def timed() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        got = page(cluster, ids[0])  # rendered once a second: wait for the workload's end
        return got if got[(f"{DURATION}_count", primary)] >= summary["acked"] else None

    got = wait_until(timed, 5, "the primary's page to count every acknowledged request")
    assert got[("ftds_replica_role", (*primary, ("role", "primary")))] == 1
    assert got[("ftds_replica_requests_ordered_total", primary)] >= summary["acked"]
    assert got[("ftds_replica_replies_total", primary)] >= summary["acked"]
    count = got[(f"{DURATION}_count", primary)]
    assert got[(f"{DURATION}_bucket", (("le", "+Inf"), *primary))] == count
    assert got[(f"{DURATION}_bucket", (("le", "1.0"), *primary))] >= 0.99 * count
    assert 0 < got[(f"{DURATION}_sum", primary)] < count  # under a second each, on average
    assert any(name == "ftds_build_info" for name, _ in got)
    for rid in ids[1:]:
        backup = page(cluster, rid)
        label = (("replica", rid),)
        assert backup[("ftds_replica_role", (*label, ("role", "backup")))] == 1
        assert backup[("ftds_replica_ready", label)] == 1
        assert backup[(f"{DURATION}_count", label)] == 0  # a passive backup answers nobody


def test_a_stopped_replica_frees_its_metrics_port_and_serves_again_when_started(make_cluster):
    cluster = make_cluster()
    rid = cluster.config.replica_ids[-1]
    port = cluster.config.replica(rid).metrics_port
    cluster.start(rid)
    assert page(cluster, rid)[("ftds_replica_responsive", (("replica", rid),))] == 1
    cluster.kill(rid, signal.SIGTERM)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "metrics port open after stop"
    cluster.start(rid)
    assert page(cluster, rid)[("ftds_replica_responsive", (("replica", rid),))] == 1
