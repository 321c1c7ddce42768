"""The RM's Prometheus endpoint: what a scrape renders, and how it behaves when things go wrong."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ftds.rm import metrics
from ftds.rm.incidents import Incident
from ftds.rm.metrics import RmMetrics


def replica(**fields: Any) -> dict[str, Any]:
    base = {"present": True, "ready": True, "role": "backup", "seq": 40,
            "checkpoint_count": 3, "heartbeat_age": 0.05, "heartbeat_interval": 0.1,
            "restarts": 0, "budget_left": 5, "budget_exhausted": False}
    return {**base, **fields}


STATUS = {
    "mode": "passive", "epoch": 4, "view_version": 2, "primary": "S2",
    "members": ["S2", "S3"], "membership": ["S2", "S3"], "membership_view": 9,
    "gfd_stable": True, "gfd_connected": True, "failover_pending": None,
    "replicas": {
        "S1": replica(present=False, ready=False, role="down", seq=None, checkpoint_count=None,
                      heartbeat_age=None, restarts=5, budget_left=0, budget_exhausted=True),
        "S2": replica(role="primary", seq=42),
        "S3": replica(),
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    return samples(await asyncio.to_thread(get))


def test_a_scrape_renders_the_status_the_rm_holds():
    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async def snapshot() -> dict[str, Any]:
            return STATUS

        exporter = RmMetrics(snapshot)
        exporter.serve("127.0.0.1", free_port())
        try:
            return await scrape(exporter._server.server_port)
        finally:
            await asyncio.to_thread(exporter.close)

    got = asyncio.run(main())
    assert got[("ftds_rm_responsive", ())] == 1
    assert got[("ftds_epoch", ())] == 4
    assert got[("ftds_ready_members", ())] == 2
    assert got[("ftds_cluster_info", (("mode", "passive"),))] == 1
    assert got[("ftds_replica_primary", (("replica", "S2"),))] == 1
    assert got[("ftds_replica_primary", (("replica", "S3"),))] == 0
    assert got[("ftds_replica_up", (("replica", "S1"),))] == 0
    assert got[("ftds_replica_restart_budget_exhausted", (("replica", "S1"),))] == 1
    assert got[("ftds_replica_relaunches_total", (("replica", "S1"),))] == 5
    assert got[("ftds_replica_applied_seq", (("replica", "S2"),))] == 42
    # unknown values are left out, not reported as 0
    assert ("ftds_replica_applied_seq", (("replica", "S1"),)) not in got
    assert ("ftds_replica_heartbeat_age_seconds", (("replica", "S1"),)) not in got


def test_a_loop_that_cannot_answer_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(metrics, "SNAPSHOT_TIMEOUT", 0.2)

    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async def stuck() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return STATUS

        exporter = RmMetrics(stuck)
        exporter.serve("127.0.0.1", free_port())
        try:
            return await asyncio.wait_for(scrape(exporter._server.server_port), 5)
        finally:
            await asyncio.to_thread(exporter.close)

    got = asyncio.run(main())
    assert got[("ftds_rm_responsive", ())] == 0
    assert ("ftds_epoch", ()) not in got


def test_closed_incidents_fill_the_recovery_histograms():
    exporter = RmMetrics(lambda: None)  # type: ignore[arg-type,return-value]
    incident = Incident(1, "S2", "crash", was_primary=True, confirmed_dead=True,
                        detected=100.0, removed=100.005, new_primary=100.014,
                        relaunch_issued=100.02, ready=100.3)
    exporter.incident_opened(incident)
    exporter.incident_closed(incident)
    value = exporter.registry.get_sample_value
    assert value("ftds_incidents_total", {"was_primary": "true"}) == 1
    assert value("ftds_recovery_seconds_count", {"phase": "detect_to_new_primary"}) == 1
    assert abs(value("ftds_recovery_seconds_sum", {"phase": "detect_to_ready"}) - 0.3) < 1e-6
    assert abs(value("ftds_recovery_seconds_sum", {"phase": "relaunch_to_ready"}) - 0.28) < 1e-6
    assert value("ftds_recovery_seconds_bucket",
                 {"phase": "detect_to_new_primary", "le": "0.01"}) == 0
    assert value("ftds_recovery_seconds_bucket",
                 {"phase": "detect_to_new_primary", "le": "0.025"}) == 1


def test_a_port_in_use_leaves_the_rm_running_without_metrics(caplog):
    async def main() -> RmMetrics:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            exporter = RmMetrics(lambda: None)  # type: ignore[arg-type,return-value]
            exporter.serve("127.0.0.1", busy.getsockname()[1])
            return exporter

    with caplog.at_level(logging.ERROR, logger="ftds.rm"):
        exporter = asyncio.run(main())
    assert exporter._server is None
    assert "cannot serve metrics" in caplog.text and "rm.metrics_port" in caplog.text
