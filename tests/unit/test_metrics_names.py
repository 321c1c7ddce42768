"""The RM's exposition follows the Prometheus naming rules (``promtool check metrics``), says
which build it is, each replica's role, and how old each replica's last checkpoint is."""

from __future__ import annotations

import asyncio
import platform
import subprocess
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from test_alert_rules import promtool
from test_metrics import STATUS, free_port, replica, samples, scrape

import ftds
from ftds.rm.metrics import (
    REPLICA_COUNTERS,
    ClusterCollector,
    Exporter,
    ReplicaCollector,
    RmMetrics,
)


def render(status: dict[str, Any] | None = STATUS) -> str:
    async def main() -> bytes:
        async def snapshot() -> dict[str, Any] | None:
            return status

        exporter = RmMetrics(snapshot)  # type: ignore[arg-type]
        await exporter.refresh()
        return exporter.page

    return asyncio.run(main()).decode()


def test_build_info_names_the_version_and_python():
    got = samples(render())
    key = ("ftds_build_info", (("python_version", platform.python_version()),
                               ("version", ftds.__version__)))
    assert got[key] == 1
    # also when the RM's loop did not answer: which build is running matters most then
    assert samples(render(None))[key] == 1


def test_only_histograms_and_summaries_end_in_count_sum_or_bucket():
    for family in text_string_to_metric_families(render()):
        if family.type not in ("histogram", "summary"):
            assert not family.name.endswith(("_count", "_sum", "_bucket")), family.name
    got = samples(render())
    assert got[("ftds_replica_checkpoints", (("replica", "S2"),))] == 3
    assert not any(name == "ftds_replica_checkpoint_count" for name, _ in got)


def test_each_replica_has_one_role():
    got = samples(render())
    roles = {labels: v for (name, labels), v in got.items() if name == "ftds_replica_role"}
    assert roles == {(("replica", "S1"), ("role", "down")): 1,
                     (("replica", "S2"), ("role", "primary")): 1,
                     (("replica", "S3"), ("role", "backup")): 1}


def test_checkpoint_age_counts_from_when_the_count_last_moved():
    now = [1000.0]
    status = {**STATUS, "replicas": {"S2": replica(role="primary", checkpoint_count=3),
                                     "S1": replica(present=False, checkpoint_count=None)}}
    collector = ClusterCollector(lambda: status, clock=lambda: now[0])

    def age() -> dict[str, float]:
        return {s.labels["replica"]: s.value for family in collector.collect()
                for s in family.samples
                if s.name == "ftds_replica_checkpoint_age_seconds"}

    assert age() == {"S2": 0.0}  # unknown for a replica that reports nothing
    now[0] += 7.5
    assert age() == {"S2": 7.5}
    status["replicas"]["S2"] = replica(role="primary", checkpoint_count=4)
    now[0] += 1
    assert age() == {"S2": 0.0}
    now[0] += 2
    assert age() == {"S2": 2.0}


def test_promtool_check_metrics_is_clean():
    # promtool skips locally when missing, and fails under CI (test_alert_rules.promtool)
    result = subprocess.run([promtool(), "check", "metrics"], input=render(), text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_another_daemon_serves_its_own_collector_on_the_same_endpoint():
    """The endpoint is not the RM's: a daemon gives it a snapshot and a collector of it."""
    async def main() -> tuple[dict[Any, float], str]:
        async def snapshot() -> dict[str, Any]:
            return {"seq": 7}

        exporter = Exporter("S1", snapshot)

        class Seq:
            def collect(self):  # type: ignore[no-untyped-def]
                family = GaugeMetricFamily("ftds_test_applied_seq", "A test's gauge.")
                family.add_metric([], exporter.latest["seq"])  # type: ignore[index]
                yield family

        exporter.registry.register(Seq())  # type: ignore[arg-type]
        assert await exporter.start("127.0.0.1", free_port())
        try:
            got = await scrape(exporter.port)
            root = await asyncio.to_thread(_get, f"http://127.0.0.1:{exporter.port}/")
            return got, root
        finally:
            await exporter.close()

    got, root = asyncio.run(main())
    assert got[("ftds_test_applied_seq", ())] == 7
    assert ("ftds_build_info", (("python_version", platform.python_version()),
                                ("version", ftds.__version__))) in got
    assert not any(name == "ftds_rm_responsive" for name, _ in got)  # the RM's own
    assert root == "ftds S1: metrics at /metrics\n"


def _get(url: str) -> str:
    from urllib.request import urlopen

    with urlopen(url, timeout=10) as response:
        return response.read().decode()


REPLICA_STATUS: dict[str, Any] = {
    "id": "S2", "mode": "passive", "role": "primary", "i_am_ready": 1, "epoch": 3, "seq": 120,
    "commit": 118, "checkpoint_count": 4, "clients": 3, "client_links": 5, "recorded": 0,
    "lease_left": 1.5,
    "stats": {"ordered": 100, "executed": 120, "replies": 99, "duplicates_answered": 2,
              "checkpoints_sent": 4, "checkpoints_received": 0, "divergences": 0,
              "rejected_frames": 1},
}


def render_replica(status: dict[str, Any] | None) -> str:
    async def main() -> bytes:
        async def snapshot() -> dict[str, Any] | None:
            return status

        exporter = Exporter("S2", snapshot)  # type: ignore[arg-type]
        exporter.registry.register(ReplicaCollector("S2", lambda: exporter.latest))
        await exporter.refresh()
        return exporter.page

    return asyncio.run(main()).decode()


def test_a_replica_status_renders_request_counters_role_and_progress():
    got = samples(render_replica(REPLICA_STATUS))
    r = (("replica", "S2"),)
    assert got[("ftds_replica_requests_ordered_total", r)] == 100
    assert got[("ftds_replica_requests_executed_total", r)] == 120
    assert got[("ftds_replica_replies_total", r)] == 99
    assert got[("ftds_replica_duplicates_answered_total", r)] == 2
    assert got[("ftds_replica_rejected_frames_total", r)] == 1
    assert got[("ftds_replica_role", (("replica", "S2"), ("role", "primary")))] == 1
    assert got[("ftds_replica_ready", r)] == 1
    assert got[("ftds_replica_applied_seq", r)] == 120
    assert got[("ftds_replica_committed_seq", r)] == 118
    assert got[("ftds_replica_epoch", r)] == 3
    assert got[("ftds_replica_checkpoints", r)] == 4
    assert got[("ftds_replica_responsive", r)] == 1
    assert ("ftds_build_info", (("python_version", platform.python_version()),
                                ("version", ftds.__version__))) in got
    # a replica whose loop did not answer in time says so, and nothing stale
    late = samples(render_replica(None))
    assert late[("ftds_replica_responsive", r)] == 0
    assert not any(name == "ftds_replica_applied_seq" for name, _ in late)


def test_promtool_check_metrics_is_clean_for_a_replica():
    result = subprocess.run([promtool(), "check", "metrics"],
                            input=render_replica(REPLICA_STATUS), text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_the_replica_collector_reads_a_real_replica_status(tmp_path):
    """Against what Replica.status() really says, not only the fixture above."""
    from ftds import local
    from ftds.config import load_config
    from ftds.replica.core import Replica

    config = load_config(local.write_cluster(tmp_path, 3, base=44200))
    replica = Replica(config, "S2", config.read_key())
    for n in range(1, 6):
        replica._apply({"s": n, "e": 1, "c": "C1", "r": n,
                        "op": {"op": "incr", "key": "x", "delta": 1}}, announce=False)
    got = samples(render_replica({**replica.status(light=True)}))
    r = (("replica", "S2"),)
    assert got[("ftds_replica_requests_executed_total", r)] == 5
    assert got[("ftds_replica_applied_seq", r)] == 5
    assert got[("ftds_replica_role", (("replica", "S2"), ("role", "backup")))] == 1
    assert got[("ftds_replica_ready", r)] == 0
    names = {name for name, _ in got}
    assert {f"{name}_total" for name, _, _ in REPLICA_COUNTERS} <= names
