"""Every replica serves its own metrics: ``replicas[i].metrics_port`` in the cluster file, the
replica daemon's exporter (the RM's rules: gate, hello deadline, clean stop), and the request
latency histogram the replica keeps on its hot path."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_config import GOOD, with_change
from test_metrics import samples
from test_metrics_names import REPLICA_STATUS, render_replica
from test_replica_view_change import FakeConn

from ftds import local
from ftds.config import ConfigError, describe_changes, load_config, parse_config
from ftds.replica import replies
from ftds.replica.core import Replica
from ftds.replica.orderer import Lease
from ftds.replica.server import ReplicaDaemon
from ftds.view import View

S2 = (("replica", "S2"),)
PROMTOOL = os.environ.get("FTDS_PROMTOOL") or shutil.which("promtool")


# -- the cluster file ------------------------------------------------------------------------
def test_a_replica_metrics_port_is_off_unless_set():
    config = parse_config(GOOD)
    assert [r.metrics_port for r in config.replicas] == [0, 0, 0]
    config = parse_config(with_change(("replicas", 1, "metrics_port"), 7102))
    assert config.replica("S2").metrics_port == 7102
    assert parse_config(with_change(("replicas", 1, "metrics_port"), 0)) \
        .replica("S2").metrics_port == 0
    # the same port on every replica host is the usual deployment
    data = with_change(("replicas", 0, "metrics_port"), 7102)
    data["replicas"][1]["metrics_port"] = data["replicas"][2]["metrics_port"] = 7102
    assert {r.metrics_port for r in parse_config(data).replicas} == {7102}


@pytest.mark.parametrize("value,message", [
    (70000, "replicas[1].metrics_port: must be 0 (off) or 1-65535"),
    (-1, "replicas[1].metrics_port: must be 0 (off) or 1-65535"),
    (True, "replicas[1].metrics_port: must be 0 (off) or 1-65535"),
    ("7102", "replicas[1].metrics_port: must be 0 (off) or 1-65535"),
    (7001, "replicas[1].metrics_port: 10.0.0.2:7001 already used by replicas[1].port"),
    (7101, "replicas[1].metrics_port: 10.0.0.2:7101 already used by replicas[1].control_port"),
])
def test_a_bad_replica_metrics_port_is_an_error_naming_the_field(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(with_change(("replicas", 1, "metrics_port"), value))


@pytest.mark.parametrize("taken,by", [
    (7200, "gfd.port"), (7201, "rm.port"), (7202, "rm.metrics_port")])
def test_a_replica_metrics_port_must_not_take_a_managers_port_on_its_host(taken, by):
    data = with_change(("replicas", 2, "host"), "10.0.0.4")  # S3 beside the GFD and RM
    data["rm"]["metrics_port"] = 7202
    data["replicas"][2]["metrics_port"] = taken
    with pytest.raises(ConfigError, match=rf"replicas\[2\]\.metrics_port: 10\.0\.0\.4:{taken} "
                                          rf"already used by {by}"):
        parse_config(data)


def test_two_replicas_of_one_host_cannot_share_a_metrics_port():
    data = with_change(("replicas", 1, "host"), "10.0.0.1")
    data["replicas"][1].update(port=7002, control_port=7102)
    data["replicas"][0]["metrics_port"] = 7300
    data["replicas"][1]["metrics_port"] = 7300
    with pytest.raises(ConfigError, match=r"replicas\[1\]\.metrics_port: 10\.0\.0\.1:7300 "
                                          r"already used by replicas\[0\]\.metrics_port"):
        parse_config(data)


def test_a_metrics_port_change_is_reported_but_is_not_an_address_change():
    old = parse_config(GOOD)
    new = parse_config(with_change(("replicas", 1, "metrics_port"), 7102))
    # the RM compares specs to decide whether to reconnect: a metrics port is not its business
    assert new.replica("S2") == old.replica("S2")
    assert describe_changes(old, new) == ["replicas[S2].metrics_port: 0 -> 7102"]


def test_local_clusters_plan_a_metrics_port_for_every_replica(tmp_path):
    ports = local.plan_ports(5, 7000)
    assert [ports[f"S{k}.metrics_port"] for k in range(1, 6)] == \
        [7211, 7212, 7213, 7214, 7215]
    assert len(set(ports.values())) == len(ports)
    config = load_config(local.write_cluster(tmp_path, 3, base=7000))
    assert [r.metrics_port for r in config.replicas] == [7211, 7212, 7213]


# -- the latency histogram ---------------------------------------------------------------------
def incr(n: int) -> dict[str, Any]:
    return {"op": "incr", "key": "x", "delta": n}


def alone(tmp_path: Path) -> Replica:
    """S1, primary of a one-replica view, with a lease: commits as it orders."""
    config = load_config(local.write_cluster(tmp_path, 1, base=44900))
    replica = Replica(config, "S1", config.read_key())
    replica._on_view(FakeConn("rm", "RM"), {"view": View(1, 0, "S1", ("S1",))})
    replica.orderer.step(Lease(time.monotonic() + 60), time.monotonic())
    assert replica.serving
    return replica


def counts(replica: Replica) -> list[int]:
    return replica.replies.latency()["counts"]


def test_the_buckets_run_from_tens_of_microseconds_to_a_second():
    le = [ns / 1e9 for ns in replies.LATENCY_BOUNDS_NS]
    assert le == sorted(le) and le[0] <= 0.0001 and le[-1] == 1.0


def test_a_reply_is_timed_from_the_requests_receipt_to_its_queueing(tmp_path):
    async def scenario() -> None:
        replica = alone(tmp_path)
        client = FakeConn("client", "C1")
        received = time.monotonic_ns() - 3_000_000  # 3 ms ago
        replica._handle_requests(client, {"reqs": [("C1", 1, incr(1), 1)], "at": received})
        assert sum(counts(replica)) == 0, "timed before its reply was queued"
        replica._advance_commit()
        status = replica.replies.latency()
        assert sum(status["counts"]) == 1
        slot = status["counts"].index(1)
        assert status["le"][slot - 1] < 0.003 <= status["le"][slot]
        assert 0.003 <= status["sum"] < 1.0
        # a retry answered from the reply cache is a reply too; an error reply as well
        replica._handle_requests(client, {"reqs": [("C1", 1, incr(1), 2), ("C2", 1, {}, 1)],
                                          "at": time.monotonic_ns()})
        assert sum(counts(replica)) == 3
        assert replica.status()["latency"] == replica.replies.latency()

    asyncio.run(scenario())


def test_the_receipt_time_is_taken_once_per_frame(tmp_path, monkeypatch):
    replica = alone(tmp_path)
    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(replica, "submit", lambda handler, conn, msg: queued.append(msg))
    before = time.monotonic_ns()
    replica.on_client_requests(FakeConn("client", "C1"),
                               {"reqs": [{"c": "C1", "r": 1, "op": incr(1)},
                                         {"c": "C2", "r": 1, "op": incr(1)}]})
    assert before <= queued[0]["at"] <= time.monotonic_ns()


def test_requests_without_a_receipt_time_are_not_timed(tmp_path):
    """Requests ordered after a view change waited for the failover (ftds_recovery_seconds
    times that), not for this replica."""
    async def scenario() -> None:
        replica = alone(tmp_path)
        client = FakeConn("client", "C1")
        replica._handle_requests(client, {"reqs": [("C1", 1, incr(1), 1)]})
        replica._advance_commit()
        replica.replies.flush()
        assert [kind for kind, _ in client.sent] == ["reply"]
        assert sum(counts(replica)) == 0

    asyncio.run(scenario())


def test_an_active_member_times_the_replies_it_sends(tmp_path):
    async def scenario() -> None:
        config = load_config(local.write_cluster(tmp_path, 3, mode="active", base=44950))
        member = Replica(config, "S2", config.read_key())
        member._on_view(FakeConn("rm", "RM"), {"view": View(1, 0, "S1", ("S1", "S2"))})
        member.trusted = member.caught_up = True
        assert member.ready and not member.is_orderer
        client = FakeConn("client", "C1")
        member._handle_requests(client, {"reqs": [("C1", 1, incr(1), 1)],
                                         "at": time.monotonic_ns()})
        member._member_apply(FakeConn("member", "S1"),
                             {"s": 1, "e": 1, "c": "C1", "r": 1, "op": incr(1), "t": 0})
        member._member_commit(1)
        assert sum(counts(member)) == 1

    asyncio.run(scenario())


def test_the_histogram_renders_cumulative_buckets_under_the_replica_label():
    latency = {"le": [0.001, 0.01, 1.0], "counts": [5, 3, 1, 2], "sum": 4.25}
    got = samples(render_replica({**REPLICA_STATUS, "latency": latency}))
    name = "ftds_replica_request_duration_seconds"
    assert [got[(f"{name}_bucket", (("le", le), *S2))] for le in ("0.001", "0.01", "1.0", "+Inf")] \
        == [5, 8, 9, 11]
    assert got[(f"{name}_count", S2)] == 11
    assert got[(f"{name}_sum", S2)] == 4.25


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found (FTDS_PROMTOOL or PATH)")
def test_the_replica_page_with_its_histogram_passes_promtool():
    latency = {"le": [0.001, 1.0], "counts": [1, 0, 0], "sum": 0.0004}
    page = render_replica({**REPLICA_STATUS, "latency": latency})
    result = subprocess.run([str(PROMTOOL), "check", "metrics"], input=page, text=True,
                            capture_output=True, timeout=30)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


# -- the replica daemon's endpoint ----------------------------------------------------------------
def cluster_file(tmp_path: Path, **tunables: float) -> str:
    return str(local.write_cluster(tmp_path, 3, base=local.pick_base(3, 45300),
                                   tunables=dict(tunables)))


async def fetch(port: int) -> str:
    def get() -> str:
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def refused(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_replica_serves_its_metrics_and_stops_serving_them(tmp_path):
    path = cluster_file(tmp_path)
    port = load_config(path).replica("S1").metrics_port

    async def scenario() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        daemon = ReplicaDaemon(path, "S1")
        await daemon.start()
        try:
            assert daemon.metrics.port == port
            return samples(await fetch(port))
        finally:
            await daemon.stop()

    got = asyncio.run(scenario())
    s1 = (("replica", "S1"),)
    assert any(name == "ftds_build_info" for name, _ in got)
    assert got[("ftds_replica_responsive", s1)] == 1
    assert got[("ftds_replica_role", (("replica", "S1"), ("role", "backup")))] == 1
    assert got[("ftds_replica_ready", s1)] == 0
    assert got[("ftds_replica_request_duration_seconds_count", s1)] == 0
    assert ("ftds_replica_checkpoint_age_seconds", s1) in got
    assert refused(port), "still listening after stop"


def test_a_replica_without_a_metrics_port_serves_none(tmp_path):
    path = Path(cluster_file(tmp_path))
    data = yaml.safe_load(path.read_text())
    data["replicas"][0]["metrics_port"] = 0
    path.write_text(yaml.safe_dump(data))

    async def scenario() -> int:
        daemon = ReplicaDaemon(str(path), "S1")
        await daemon.start()
        await daemon.stop()
        return daemon.metrics.port

    assert asyncio.run(scenario()) == 0


def test_the_metrics_port_is_gated_like_every_other_port(tmp_path):
    """A connection that says nothing is closed at hello_timeout; one source gets at most
    max_conns_per_source connections."""
    path = cluster_file(tmp_path, hello_timeout=0.3, max_conns_per_source=2)
    port = load_config(path).replica("S1").metrics_port

    async def scenario() -> tuple[float, bytes]:
        daemon = ReplicaDaemon(path, "S1")
        await daemon.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            third_reader, _ = await asyncio.open_connection("127.0.0.1", port)
            third = await asyncio.wait_for(third_reader.read(), 2)
            start = time.monotonic()
            closed = await asyncio.wait_for(idle[0][0].read(), 5)
            waited = time.monotonic() - start
            assert closed == b""
            for _, writer in idle:
                writer.close()
            return waited, third
        finally:
            await daemon.stop()

    waited, third = asyncio.run(scenario())
    assert third == b"", "a connection over the per-source cap was served"
    assert waited < 2.0  # closed at hello_timeout (0.3 s), not after keep-alive


def test_a_busy_metrics_port_leaves_the_replica_running_without_metrics(tmp_path, caplog):
    path = cluster_file(tmp_path)
    port = load_config(path).replica("S1").metrics_port

    async def scenario() -> tuple[int, bool]:
        with socket.socket() as busy:
            busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAITs
            busy.bind(("127.0.0.1", port))
            busy.listen()
            daemon = ReplicaDaemon(path, "S1")
            await daemon.start()
            try:
                return daemon.metrics.port, refused(load_config(path).replica("S1").port)
            finally:
                await daemon.stop()

    with caplog.at_level(logging.ERROR, logger="ftds.replica"):
        metrics_port, client_refused = asyncio.run(scenario())
    assert metrics_port == 0 and not client_refused
    assert "cannot serve metrics" in caplog.text and "replicas[0].metrics_port" in caplog.text
