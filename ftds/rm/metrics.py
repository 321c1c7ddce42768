"""Prometheus metrics of the Replication Manager: the cluster as the RM sees it.

Served at ``http://<rm.host>:<rm.metrics_port>/metrics`` (off when the port is 0) by
prometheus_client's HTTP server, in a thread of its own so a slow scraper never holds the RM's
loop. The RM's state belongs to its event loop: each scrape asks the loop for a snapshot of
``ftds status`` and renders that, so an exporter never reads a view half-way through a change.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .incidents import Incident

log = logging.getLogger("ftds.rm")

SNAPSHOT_TIMEOUT = 2.0  # a loop that cannot answer in this time is reported as unresponsive
# Recovery phases (the durations of ``ftds incidents``), in seconds: tens of milliseconds for a
# crash on one host, about a second for an SSH relaunch, up to the restart backoff.
RECOVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
PHASES = {
    "detect_to_removed": "detect_to_removed_ms",
    "detect_to_new_primary": "detect_to_new_primary_ms",
    "relaunch_to_ready": "relaunch_to_ready_ms",
    "detect_to_ready": "detect_to_ready_ms",
}

Snapshot = dict[str, Any]


class ClusterCollector(Collector):
    """Gauges from one status snapshot per scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot | None]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        responsive = GaugeMetricFamily(
            "ftds_rm_responsive", "1 when the RM's event loop answered this scrape in time.")
        responsive.add_metric([], 0 if status is None else 1)
        yield responsive
        if status is None:
            return
        yield from cluster_metrics(status)


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
        ("ftds_replica_checkpoint_count", "The replica's checkpoint_count.",
         lambda _, r: r["checkpoint_count"]),
        ("ftds_replica_heartbeat_age_seconds", "Time since the LFD's last heartbeat reply.",
         lambda _, r: r["heartbeat_age"]),
        ("ftds_replica_heartbeat_interval_seconds", "The LFD's heartbeat interval in effect.",
         lambda _, r: r["heartbeat_interval"]),
        ("ftds_replica_restart_budget_left", "Relaunches left in the restart window.",
         lambda _, r: r["budget_left"]),
        ("ftds_replica_restart_budget_exhausted",
         "1 when the RM stopped relaunching the replica (`ftds ctl reset-budget` resets it).",
         lambda _, r: int(r["budget_exhausted"])),
    ]
    replicas = s["replicas"]
    for name, doc, value in per_replica:
        family = GaugeMetricFamily(name, doc, labels=["replica"])
        for rid, r in replicas.items():
            v = value(rid, r)
            if v is not None:
                family.add_metric([rid], v)
        yield family
    relaunches = CounterMetricFamily("ftds_replica_relaunches",
                                     "Relaunches the RM issued since it started.",
                                     labels=["replica"])
    for rid, r in replicas.items():
        relaunches.add_metric([rid], r["restarts"])
    yield relaunches


class RmMetrics:
    """The RM's registry: the cluster's gauges, recovery histograms, the process's own."""

    def __init__(self, snapshot: Callable[[], Awaitable[Snapshot]]) -> None:
        self._snapshot = snapshot
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.incidents = Counter("ftds_incidents", "Replica losses the RM has recorded.",
                                 ["was_primary"], registry=self.registry)
        self.recovery = Histogram("ftds_recovery_seconds",
                                  "Durations of closed incidents, by phase (ftds incidents).",
                                  ["phase"], buckets=RECOVERY_BUCKETS, registry=self.registry)
        self.registry.register(ClusterCollector(self._snapshot_from_thread))

    def incident_opened(self, incident: Incident) -> None:
        self.incidents.labels(was_primary=str(incident.was_primary).lower()).inc()

    def incident_closed(self, incident: Incident) -> None:
        durations = incident.durations()
        for phase, key in PHASES.items():
            ms = durations[key]
            if ms is not None:
                self.recovery.labels(phase=phase).observe(ms / 1000)

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (call from the running loop). Metrics are not worth an RM
        that cannot start: a port that cannot be bound is logged, and the RM runs without."""
        self._loop = asyncio.get_running_loop()
        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as exc:
            log.error("RM: cannot serve metrics on %s:%d (rm.metrics_port): %s; running "
                      "without them", host, port, exc.strerror or exc)
            return
        log.info("RM: metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        """Stop the endpoint (blocks up to the server's poll interval: call from a thread)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(1.0)
            self._thread = None

    def _snapshot_from_thread(self) -> Snapshot | None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return None
        future = asyncio.run_coroutine_threadsafe(self._snapshot(), loop)
        try:
            return future.result(SNAPSHOT_TIMEOUT)
        except Exception:  # a stuck or stopping loop: say so in the scrape, never raise there
            future.cancel()
            return None
