"""Prometheus metrics of the Replication Manager: the cluster as the RM sees it.

Served at ``http[s]://<rm.metrics_address>:<rm.metrics_port>/metrics`` (off when the port is 0)
by the RM's ``Exporter`` (``ftds.metrics``: the endpoint, its refresh, gate, TLS and basic auth
from ``rm.metrics_web_config``). Every second the RM renders the page once, from its ``ftds
status`` snapshot (one round trip to the GFD per refresh, not per scrape), and every scrape is
answered with those bytes.

The generic parts used to live here; they are re-exported so that ``ftds.rm.metrics`` keeps
every name it had.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Tunables
from ..metrics import (
    AUTH_CACHE,
    DUMMY_HASH,
    KEEPALIVE_IDLE,
    MAX_HEAD,
    MAX_PENDING_AUTH,
    REFRESH,
    REPLICA_COUNTERS,
    SEND_TIMEOUT,
    SNAPSHOT_TIMEOUT,
    BuildInfoCollector,
    CheckpointAges,
    Exporter,
    ReplicaCollector,
    Snapshot,
    WebConfig,
    WebConfigError,
    build_info,
    load_web_config,
    replica_metrics,
)
from .incidents import Incident

__all__ = [
    "AUTH_CACHE", "DUMMY_HASH", "KEEPALIVE_IDLE", "MAX_HEAD", "MAX_PENDING_AUTH", "PHASES",
    "RECOVERY_BUCKETS", "REFRESH", "REPLICA_COUNTERS", "SEND_TIMEOUT", "SNAPSHOT_TIMEOUT",
    "BuildInfoCollector", "CheckpointAges", "ClusterCollector", "Exporter",
    "ReplicaCollector", "RmMetrics", "Snapshot", "WebConfig", "WebConfigError", "build_info",
    "cluster_metrics", "load_web_config", "replica_metrics",
]

log = logging.getLogger("ftds.rm")

# Recovery phases (the durations of ``ftds incidents``), in seconds: tens of milliseconds for a
# crash on one host, about a second for an SSH relaunch, up to the restart backoff.
RECOVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
PHASES = {
    "detect_to_removed": "detect_to_removed_ms",
    "detect_to_new_primary": "detect_to_new_primary_ms",
    "relaunch_to_ready": "relaunch_to_ready_ms",
    "detect_to_ready": "detect_to_ready_ms",
}


class ClusterCollector(Collector):
    """Gauges from the RM's latest status snapshot (None: it did not come in time)."""

    def __init__(self, snapshot: Callable[[], Snapshot | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._snapshot = snapshot
        self._checkpoints = CheckpointAges(
            "Time since the RM saw the replica's checkpoint_count change (or since the RM "
            "started); it grows while no writes come (no checkpoint is taken then).", clock)

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        responsive = GaugeMetricFamily(
            "ftds_rm_responsive", "1 when the RM's last status snapshot was taken in time.")
        responsive.add_metric([], 0 if status is None else 1)
        yield responsive
        if status is None:
            return
        yield from cluster_metrics(status)
        yield self._checkpoints.family(
            (rid, r.get("checkpoint_count")) for rid, r in status["replicas"].items())


def _gauge(name: str, doc: str, value: float | None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def cluster_metrics(s: Snapshot) -> Iterator[Metric]:
    """The metric families of one ``ftds status`` snapshot (its JSON form)."""
    info = GaugeMetricFamily("ftds_cluster_info", "The cluster's replication mode (always 1).",
                             labels=["mode"])
    info.add_metric([s["mode"]], 1)
    yield info
    yield _gauge("ftds_epoch", "The current epoch (bumped at every primary/sequencer change).",
                 s["epoch"])
    yield _gauge("ftds_view_version", "The version of the current view within its epoch.",
                 s["view_version"])
    yield _gauge("ftds_membership_view", "The GFD's membership view number.",
                 s["membership_view"])
    yield _gauge("ftds_ready_members", "Replicas in the ready set clients see.",
                 len(s["members"]))
    yield _gauge("ftds_gfd_connected", "1 when the RM is connected to the GFD.",
                 int(s["gfd_connected"]))
    yield _gauge("ftds_gfd_stable", "1 when the GFD's membership is stable (every LFD known).",
                 int(s["gfd_stable"]))
    yield _gauge("ftds_failover_pending", "1 while a failover waits (e.g. for a lease to end).",
                 int(bool(s["failover_pending"])))

    primary = s["primary"]
    per_replica: list[tuple[str, str, Callable[[str, dict[str, Any]], float | None]]] = [
        ("ftds_replica_up", "1 when the replica is in the GFD's membership.",
         lambda _, r: int(r["present"])),
        ("ftds_replica_ready", "1 when the replica is ready and counted by the primary.",
         lambda _, r: int(r["ready"])),
        ("ftds_replica_primary", "1 for the primary (passive) or sequencer (active).",
         lambda rid, r: int(rid == primary)),
        ("ftds_replica_applied_seq", "The highest sequence number the replica applied.",
         lambda _, r: r["seq"]),
        # Was ftds_replica_checkpoint_count: a gauge must not end in _count (promtool).
        ("ftds_replica_checkpoints", "The replica's checkpoint_count: checkpoints its state "
         "has gone through.", lambda _, r: r["checkpoint_count"]),
        ("ftds_replica_heartbeat_age_seconds", "Time since the LFD's last heartbeat reply.",
         lambda _, r: r["heartbeat_age"]),
        ("ftds_replica_heartbeat_interval_seconds", "The LFD's heartbeat interval in effect.",
         lambda _, r: r["heartbeat_interval"]),
        ("ftds_replica_restart_budget_left", "Relaunches left in the restart window.",
         lambda _, r: r["budget_left"]),
        ("ftds_replica_restart_budget_exhausted",
         "1 when the RM stopped relaunching the replica (`ftds ctl reset-budget` resets it).",
         lambda _, r: int(r["budget_exhausted"])),
        ("ftds_replica_held",
         "1 while an operator holds the replica down for maintenance (`ftds ctl hold`).",
         lambda _, r: int(bool(r.get("held")))),
    ]
    replicas = s["replicas"]
    for name, doc, value in per_replica:
        family = GaugeMetricFamily(name, doc, labels=["replica"])
        for rid, r in replicas.items():
            v = value(rid, r)
            if v is not None:
                family.add_metric([rid], v)
        yield family
    roles = GaugeMetricFamily("ftds_replica_role",
                              "1 for the role the replica last reported (down when absent).",
                              labels=["replica", "role"])
    for rid, r in replicas.items():
        roles.add_metric([rid, r["role"] or "unknown"], 1)
    yield roles
    relaunches = CounterMetricFamily("ftds_replica_relaunches",
                                     "Relaunches the RM issued since it started.",
                                     labels=["replica"])
    for rid, r in replicas.items():
        relaunches.add_metric([rid], r["restarts"])
    yield relaunches


class RmMetrics(Exporter):
    """The RM's exporter: the cluster's gauges from its ``ftds status`` snapshot and the
    recovery histograms of its incidents."""

    late_note = "; they say ftds_rm_responsive 0"

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]],
                 tunables: Callable[[], Tunables] = Tunables) -> None:
        super().__init__("RM", snapshot, tunables, setting="rm.metrics", logger=log,
                         snapshot_timeout=SNAPSHOT_TIMEOUT)
        self.incidents = Counter("ftds_incidents", "Replica losses the RM has recorded.",
                                 ["was_primary"], registry=self.registry)
        self.recovery = Histogram("ftds_recovery_seconds",
                                  "Durations of closed incidents, by phase (ftds incidents).",
                                  ["phase"], buckets=RECOVERY_BUCKETS, registry=self.registry)
        self.registry.register(ClusterCollector(lambda: self._status))

    def incident_opened(self, incident: Incident) -> None:
        self.incidents.labels(was_primary=str(incident.was_primary).lower()).inc()
        self.changed()

    def incident_closed(self, incident: Incident) -> None:
        durations = incident.durations()
        for phase, key in PHASES.items():
            ms = durations[key]
            if ms is not None:
                self.recovery.labels(phase=phase).observe(ms / 1000)
        self.changed()
