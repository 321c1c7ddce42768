"""Safety under hostile input and compound faults, on the embedded cluster (real processes).

Each test is one defect of "Never lose an acknowledged write", reproduced the way an operator or
a client met it: huge numbers and deep values that wedged the primary, a primary killed while
alone in its ready set (its empty relaunch used to serve as primary), async replication and lone
primaries that never acknowledged, and a reused client id that got another operation's reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket

import pytest
from helpers import run

from ftds import local
from ftds.client import Client, RequestFailed
from ftds.rmclient import RMRefused, rm_request
from ftds.wire import MAX_REQUESTS_PER_FRAME, PROTOCOL_VERSION, FrameDecoder, encode, frame

IDS = ["S1", "S2", "S3"]
INT64_MAX = 2**63 - 1


async def call(config, key, op, name="T1", timeout=10.0, session=None):
    client = Client(config, key, name, trace=False)
    await client.start()
    try:
        await client.wait_connected(10, count=1)
        target = client.session(session) if session else client.session()
        return await asyncio.wait_for(target.call(op), timeout)
    finally:
        await client.close()


async def incr_burst(config, key, name: str, counter: str, sessions: int,
                     timeout: float) -> list[dict]:
    """One client, ``sessions`` sessions ``name.i``, one ``incr`` of ``counter`` each, all sent
    in one turn of the client's loop; every reply."""
    client = Client(config, key, name, trace=False)
    await client.start()
    try:
        await client.wait_connected(10)
        calls = [client.session(f"{name}.{i}").call({"op": "incr", "key": counter})
                 for i in range(sessions)]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout)
    finally:
        await client.close()


def raw_request(cluster, rid, body: bytes, client="RAW1") -> list[dict]:
    """One hand-made request frame (any JSON text the codec could not produce) to ``rid``."""
    spec = cluster.config.replica(rid)
    hello = encode({"v": PROTOCOL_VERSION, "t": "hello", "from": client, "e": 0,
                    "client": client}, cluster.key)
    with socket.create_connection((spec.host, spec.port), timeout=5) as sock:
        sock.sendall(hello + frame(body, cluster.key))
        decoder = FrameDecoder(cluster.key, 1 << 24)
        messages: list[dict] = []
        sock.settimeout(5)
        while not any(m["t"] in ("reply", "error") for m in messages):
            data = sock.recv(65536)
            if not data:
                break
            messages.extend(decoder.feed(data))
    return messages


def raw_send(cluster, rid, body: bytes, client="RAW1") -> None:
    """One hand-made request frame to ``rid``, waiting for nothing (a member may not answer):
    the connection closes once the replica has read it."""
    spec = cluster.config.replica(rid)
    hello = encode({"v": PROTOCOL_VERSION, "t": "hello", "from": client, "e": 0,
                    "client": client}, cluster.key)
    with socket.create_connection((spec.host, spec.port), timeout=5) as sock:
        sock.sendall(hello + frame(body, cluster.key))
        sock.settimeout(0.3)
        with contextlib.suppress(TimeoutError):
            while sock.recv(65536):  # its welcome (and any reply); read until quiet
                pass


def test_hostile_numbers_and_depths_get_an_error_and_the_primary_keeps_serving(make_managed):
    cluster = make_managed()
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    first = run(call(cfg, key, {"op": "incr", "key": "big", "delta": INT64_MAX}))
    assert first["res"] == {"ok": True, "value": INT64_MAX}
    for _ in range(3):
        reply = run(call(cfg, key, {"op": "incr", "key": "big", "delta": INT64_MAX}))
        assert reply["res"]["ok"] is False and "overflow" in reply["res"]["error"]
    # Numbers the codec reads (up to 2**64-1) but a signed 64-bit value cannot hold.
    body = (b'{"v":%d,"t":"req","from":"RAW0","e":0,"reqs":[{"c":"RAW0","r":1,'
            b'"op":{"op":"incr","key":"big","delta":%d}}]}' % (PROTOCOL_VERSION, 2**63))
    replies = [m for m in raw_request(cluster, start["primary"], body, "RAW0")
               if m["t"] == "reply"]
    assert replies and replies[0]["reps"][0]["res"]["ok"] is False, replies
    # A value nested past what the codec can encode again, sent as raw JSON text.
    deep = b"[" * 300 + b"]" * 300
    body = (b'{"v":%d,"t":"req","from":"RAW1","e":0,"reqs":[{"c":"RAW1","r":1,'
            b'"op":{"op":"put","key":"deep","value":%s}}]}' % (PROTOCOL_VERSION, deep))
    replies = [m for m in raw_request(cluster, start["primary"], body) if m["t"] == "reply"]
    assert replies and replies[0]["reps"][0]["res"]["ok"] is False
    assert "nested" in replies[0]["reps"][0]["res"]["error"]
    # Nothing changed, and the primary still orders and acknowledges.
    assert run(call(cfg, key, {"op": "get", "key": "big"}))["res"]["value"] == INT64_MAX
    assert run(call(cfg, key, {"op": "get", "key": "deep"}))["res"]["value"] is None
    assert run(call(cfg, key, {"op": "incr", "key": "n"}))["res"] == {"ok": True, "value": 1}
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    digests = {s["digest"] for s in cluster.wait_converged(IDS).values()}
    assert len(digests) == 1


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_a_field_the_op_does_not_use_cannot_carry_what_the_codec_cannot_encode(make_managed,
                                                                                mode):
    """Extra fields of an op travel with it (log, stream, reply cache). One nested past what
    the codec encodes again, or past the value bounds, must be refused like a value, never
    ordered: else the orderer's stream cannot be encoded, and every replica that orders it
    (each new primary in turn) stops."""
    cluster = make_managed(mode=mode)
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    deep = b"[" * 300 + b"]" * 300
    body = (b'{"v":%d,"t":"req","from":"RAW2","e":0,"reqs":[{"c":"RAW2","r":1,'
            b'"op":{"op":"get","key":"k","extra":%s}}]}' % (PROTOCOL_VERSION, deep))
    replies = [m for m in raw_request(cluster, start["primary"], body, "RAW2")
               if m["t"] == "reply"]
    assert replies and replies[0]["reps"][0]["res"]["ok"] is False, replies
    assert "extra" in replies[0]["reps"][0]["res"]["error"]
    assert run(call(cfg, key, {"op": "incr", "key": "n"}))["res"] == {"ok": True, "value": 1}
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    assert len({s["digest"] for s in cluster.wait_converged(IDS).values()}) == 1


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_a_hostile_retry_of_an_applied_request_number_changes_nothing(make_managed, mode):
    """After a request is applied, the same (client, request_num) comes again to every replica
    with an op nested past what the codec encodes, or with an attempt that is not a number.
    Each replica compares a retry with what it applied before it validates anything else: that
    comparison must not be where it stops."""
    cluster = make_managed(mode=mode)
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    put = b'{"op":"put","key":"r","value":1}'
    deep = b"[" * 300 + b"]" * 300
    retries = [
        (put, b'"x"'),  # the same op, an attempt that is a string
        (b'{"op":"put","key":"r","value":%s}' % deep, b"2"),  # another op, unencodable
        (put, b"[[1]]"),
    ]
    first = (b'{"v":%d,"t":"req","from":"RAW3","e":0,"reqs":[{"c":"RAW3","r":1,"op":%s}]}'
             % (PROTOCOL_VERSION, put))
    replies = [m for m in raw_request(cluster, start["primary"], first, "RAW3")
               if m["t"] == "reply"]
    assert replies and replies[0]["reps"][0]["res"]["ok"] is True, replies
    cluster.wait_converged(IDS)
    for op, attempt in retries:
        body = (b'{"v":%d,"t":"req","from":"RAW3","e":0,"reqs":[{"c":"RAW3","r":1,"op":%s,'
                b'"a":%s}]}' % (PROTOCOL_VERSION, op, attempt))
        for rid in IDS:
            raw_send(cluster, rid, body, "RAW3")
    assert run(call(cfg, key, {"op": "incr", "key": "n"}))["res"] == {"ok": True, "value": 1}
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    assert cluster.incidents() == [], "a replica stopped"
    assert run(call(cfg, key, {"op": "get", "key": "r"}))["res"]["value"] == 1
    assert len({s["digest"] for s in cluster.wait_converged(IDS).values()}) == 1


def test_a_frame_of_too_many_requests_is_refused_and_changes_nothing(make_managed):
    """One frame of 100,000 requests held the primary's applier for seconds: its detectors took
    it for hung and the cluster failed over. A frame may carry at most
    MAX_REQUESTS_PER_FRAME requests: past that the connection is closed with an error, nothing
    is ordered, and the primary keeps serving."""
    cluster = make_managed()
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    reqs = b",".join(b'{"c":"RAW5","r":%d,"op":{"op":"incr","key":"m"}}' % n
                     for n in range(1, MAX_REQUESTS_PER_FRAME + 2))
    body = b'{"v":%d,"t":"req","from":"RAW5","e":0,"reqs":[%s]}' % (PROTOCOL_VERSION, reqs)
    answer = raw_request(cluster, start["primary"], body, "RAW5")
    errors = [m for m in answer if m["t"] == "error"]
    assert errors and f"at most {MAX_REQUESTS_PER_FRAME}" in errors[0]["message"], answer
    assert not [m for m in answer if m["t"] == "reply"]
    assert run(call(cfg, key, {"op": "get", "key": "m"}))["res"]["value"] is None
    assert cluster.status_of(start["primary"])["stats"]["rejected_frames"] == 1
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    assert cluster.incidents() == []


def test_a_client_with_thousands_of_requests_in_one_turn_sends_frames_the_replicas_take(
        make_managed):
    """The client splits what one turn of its loop sends into frames a replica takes."""
    cluster = make_managed()
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    sessions = 3 * MAX_REQUESTS_PER_FRAME

    replies = run(incr_burst(cfg, key, "BURST", "b", sessions, timeout=60))
    assert all(r["res"]["ok"] for r in replies)
    assert sorted(r["res"]["value"] for r in replies) == list(range(1, sessions + 1))
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    statuses = cluster.wait_converged(IDS)
    assert all(s["stats"]["rejected_frames"] == 0 for s in statuses.values())


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_a_client_with_thirty_thousand_requests_out_is_served_without_a_failover(
        make_managed, mode):
    """One client process, 30,000 sessions, one request each, all sent at once. The replica
    took the whole backlog in one turn of its applier, so heartbeats went unanswered; replies
    waiting for a commit were re-sorted for each retry, and a retry came every second for each
    request out. The LFDs took the replicas for hung, the RM relaunched them one after
    another, and with 100,000 sessions the cluster ended without its data."""
    cluster = make_managed(mode=mode)
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    sessions = 30_000

    replies = run(incr_burst(cfg, key, "HERD", "h", sessions, timeout=120))
    assert sorted(r["res"]["value"] for r in replies) == list(range(1, sessions + 1))
    status = cluster.wait_healthy(10)
    assert (status["primary"], status["epoch"]) == (start["primary"], start["epoch"])
    assert all(r["restarts"] == 0 for r in status["replicas"].values()), status["replicas"]


def test_a_turn_larger_than_a_frame_is_sent_in_frames_and_one_request_too_large_fails(
        make_managed):
    """With a 2 MiB frame, eight writes of 600 KB in one turn leave in several frames and are
    all acknowledged; one request larger than a frame fails at the client at once (sent, it
    would be refused, the connection closed and the request sent again, forever)."""
    cluster = make_managed(tunables={"max_frame": 2 * 1024 * 1024})
    cluster.up()
    cfg, key = cluster.config, cluster.key

    async def writes() -> tuple[list[dict], BaseException | None]:
        client = Client(cfg, key, "WIDE", trace=False)
        await client.start()
        try:
            await client.wait_connected(10)
            calls = [client.session(f"WIDE.{i}").call(
                {"op": "put", "key": f"w{i}", "value": "v" * 600_000}) for i in range(8)]
            replies = await asyncio.wait_for(asyncio.gather(*calls), 30)
            try:
                await asyncio.wait_for(client.session("WIDE.big").call(
                    {"op": "put", "key": "big", "value": "v" * 3_000_000}), 5)
            except RequestFailed as exc:
                return replies, exc
            return replies, None
        finally:
            await client.close()

    replies, failed = run(writes())
    assert all(r["res"]["ok"] for r in replies), [r["res"] for r in replies]
    assert failed is not None and "larger than a frame" in str(failed)
    statuses = cluster.wait_converged(IDS)
    assert all(s["stats"]["rejected_frames"] == 0 for s in statuses.values())


def kill_primary_while_alone(cluster) -> tuple[dict, str, list[str], object]:
    """Write x (held by all), hang both backups until the primary is alone, write y (held by
    the primary only), kill -9 the primary, resume the backups, wait for the relaunch. Returns
    the start status, the old primary, the backups and what a read of y got (or the error)."""
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    primary = start["primary"]
    backups = [r for r in IDS if r != primary]
    assert run(call(cfg, key, {"op": "put", "key": "x", "value": 5}))["res"]["ok"]
    for rid in backups:
        cluster.signal(rid, signal.SIGSTOP)
    try:
        cluster.wait(lambda: (s := cluster.rm_status()) and s["members"] == [primary], 15,
                     "the hung backups to leave the ready set")
        # Alone, the primary still acknowledges (its lease says nobody else was promoted).
        assert run(call(cfg, key, {"op": "put", "key": "y", "value": 7}))["res"]["ok"]
        old_pid = cluster.signal(primary, signal.SIGKILL)
    finally:
        for rid in backups:
            cluster.signal(rid, signal.SIGCONT)
    cluster.wait(lambda: local.read_pid(cluster.dir, primary) not in (None, old_pid), 20,
                 f"{primary} relaunched")
    cluster.wait(lambda: (s := cluster.rm_status()) and s["replicas"][primary]["present"]
                 and s["replicas"][primary]["incarnation"], 20, f"{primary} reporting")
    try:
        read: object = run(call(cfg, key, {"op": "get", "key": "y"}, timeout=2.0))["res"]
    except TimeoutError as exc:
        read = exc
    return start, primary, backups, read


def test_primary_killed_while_alone_is_never_replaced_by_its_empty_relaunch(make_managed):
    cluster = make_managed(tunables={"lease": 0.5})
    start, _primary, backups, read = kill_primary_while_alone(cluster)
    cfg, key = cluster.config, cluster.key
    # The relaunched primary is a new, empty process: it must not serve (y would read null).
    assert isinstance(read, TimeoutError), f"served after losing every holder: {read}"
    status = cluster.rm_status()
    assert status["unavailable"] and status["epoch"] == start["epoch"], status
    # The operator accepts the loss explicitly; the cluster serves what the chosen one holds.
    with pytest.raises(RMRefused):
        run(rm_request(cfg, key, "force_primary", {"replica": backups[0]}))
    done = run(rm_request(cfg, key, "force_primary",
                          {"replica": backups[0], "accept_data_loss": True}))
    assert done["epoch"] > start["epoch"] and "lost" in done["message"]
    assert run(call(cfg, key, {"op": "get", "key": "x"}))["res"]["value"] == 5
    cluster.wait_healthy(30)


def test_the_alone_primary_test_catches_the_planted_bug(make_managed):
    """With the RM's planted bug, the empty relaunch orders again: y reads null, silently."""
    cluster = make_managed(tunables={"lease": 0.5},
                           env={"FTDS_FAULT": "empty_primary_keeps_epoch"})
    _start, _primary, _backups, read = kill_primary_while_alone(cluster)
    assert read == {"ok": True, "value": None}, read


@pytest.mark.parametrize("replication", ["async", "sync"])
def test_async_replication_and_a_lone_primary_acknowledge(make_managed, replication):
    cluster = make_managed(replication=replication, tunables={"lease": 0.5})
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    assert run(call(cfg, key, {"op": "incr", "key": "a"}, timeout=5))["res"]["value"] == 1
    for rid in IDS:
        if rid != start["primary"]:
            cluster.signal(rid, signal.SIGSTOP)
    try:
        cluster.wait(lambda: (s := cluster.rm_status()) and s["members"] == [start["primary"]],
                     15, "a lone primary")
        assert run(call(cfg, key, {"op": "incr", "key": "a"}, timeout=5))["res"]["value"] == 2
    finally:
        for rid in IDS:
            if rid != start["primary"]:
                cluster.signal(rid, signal.SIGCONT)
    cluster.wait_healthy(30)


def test_reused_client_id_never_gets_another_operations_reply(make_managed):
    cluster = make_managed()
    cluster.up()
    cfg, key = cluster.config, cluster.key
    first = run(call(cfg, key, {"op": "put", "key": "k", "value": "one"}, name="A",
                     session="shared"))
    assert first["res"] == {"ok": True} and first["r"] == 1
    # Another process, the same session id, numbering from 1 again, another operation.
    second = run(call(cfg, key, {"op": "put", "key": "k", "value": "two"}, name="B",
                      session="shared"))
    assert second["res"] == {"ok": True} and second["r"] == 2, second
    assert run(call(cfg, key, {"op": "get", "key": "k"}))["res"]["value"] == "two"


def test_a_daemon_whose_task_dies_exits_so_the_detectors_see_it(make_managed, tmp_path):
    """Fail-stop: a replica's applier that dies takes the process down (exit status 70)."""
    import os
    import subprocess
    import sys

    path = local.write_cluster(tmp_path / "solo", 1)
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, asyncio\n"
         "from ftds.replica import core\n"
         "async def boom(self):\n"
         "    raise RuntimeError('planted: the applier dies')\n"
         "core.Replica._applier = boom\n"
         "from ftds.cli import main\n"
         "sys.exit(main(['replica', '--config', sys.argv[1], '--id', 'S1']))\n", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 70, out.decode()[-2000:]
    assert b"task applier died" in out


def test_state_larger_than_a_frame_is_checkpointed_and_caught_up_in_parts(make_managed):
    """Checkpoints, catch-up and fetched histories travel in frames of bounded size: a store
    five times ``max_frame`` is checkpointed, a relaunched backup catches up, a new primary
    takes over, and nothing is lost."""
    cluster = make_managed(tunables={"max_frame": 65536, "checkpoint_interval": 0.2})
    start = cluster.up()
    cfg, key = cluster.config, cluster.key

    async def fill() -> None:
        client = Client(cfg, key, "filler", trace=False)
        await client.start()
        try:
            await client.wait_connected(10, count=1)
            for n in range(40):
                op = {"op": "put", "key": f"big{n}", "value": f"{n:04d}" * 2000}
                reply = await asyncio.wait_for(client.call(op), 10)
                assert reply["res"]["ok"], reply
        finally:
            await client.close()

    run(fill())  # 40 x 8 kB: five frames' worth
    backup = next(r for r in IDS if r != start["primary"])
    old_pid = cluster.signal(backup, signal.SIGKILL)
    cluster.wait(lambda: local.read_pid(cluster.dir, backup) not in (None, old_pid), 20,
                 f"{backup} relaunched")
    cluster.wait_healthy(30)
    status = cluster.wait_converged(IDS)
    assert len({s["digest"] for s in status.values()}) == 1
    assert status[backup]["keys"] == 40
    # Periodic checkpoints of a state this size carry its digest only; the members verify it.
    primary_log = cluster.dir / "logs" / f"{start['primary']}.log"

    def digest_only_checkpoint() -> bool:
        run(call(cfg, key, {"op": "incr", "key": "tick"}))  # something new to checkpoint
        return "periodic, digest only" in primary_log.read_text()

    cluster.wait(digest_only_checkpoint, 15, "a digest-only checkpoint")
    logs = "".join((cluster.dir / "logs" / f"{r}.log").read_text() for r in IDS)
    assert "digest matches my state" in logs and "DIVERGENCE" not in logs
    cluster.signal(start["primary"], signal.SIGKILL)
    cluster.wait(lambda: (h := cluster.healthy()) and h["primary"] != start["primary"], 30,
                 "a new primary, the old one back as a backup")
    value = run(call(cfg, key, {"op": "get", "key": "big39"}))["res"]["value"]
    assert value == "0039" * 2000
    status = cluster.wait_converged(IDS)
    assert len({s["digest"] for s in status.values()}) == 1


def test_a_primary_whose_applier_stalls_is_replaced_like_a_hung_one(make_managed):
    """Its loop still answers heartbeats; the acks say the applier is stalled, so the LFD
    reports a hang and the RM fails over once the lease ran out."""
    cluster = make_managed(tunables={"lease": 0.5}, env={"FTDS_FAULT": "stall_applier"})
    start = cluster.up()
    cfg, key = cluster.config, cluster.key
    assert run(call(cfg, key, {"op": "put", "key": "x", "value": 1}))["res"]["ok"]
    old = start["primary"]
    with contextlib.suppress(TimeoutError):  # the put that stalls it may go unanswered
        run(call(cfg, key, {"op": "put", "key": "__stall__", "value": 1}, name="T2",
                 timeout=1.0))
    cluster.wait(lambda: (s := cluster.rm_status()) and s["primary"] not in (None, old), 20,
                 "a new primary")
    assert run(call(cfg, key, {"op": "get", "key": "x"}, name="T3"))["res"]["value"] == 1
    cluster.wait(lambda: any("applier stalled" in i["cause"] for i in cluster.incidents()
                             if i["replica"] == old), 10, "the stall in the incident's cause")
