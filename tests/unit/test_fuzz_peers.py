"""Hostile peers, generated: well-formed, authenticated messages with wrong fields, sent to the
RM, the GFD and an LFD as each of the peers that talk to them.

A message handler that raises anything but a WireError stops its daemon (fail-stop: the state
after it is unknown), so whatever a peer sends must end as a WireError (its connection closed)
or be taken as it is; what was taken must not break the daemon later: its decisions, its status
for ``ftds status`` and its metrics, and an LFD's judgement of a lost replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import KEY, FakeTransport, json_values
from test_sdnotify import _rm

from ftds import local, supervise
from ftds.errors import WireError
from ftds.gfd import GlobalFaultDetector
from ftds.lfd import LocalFaultDetector
from ftds.replica.server import ReplicaDaemon
from ftds.replica.upstream import Upstream
from ftds.rm.manager import ReplicationManager
from ftds.view import View
from ftds.wire import Conn, encode

ids = st.sampled_from(["S1", "S2", "S3", "S9", "LFD1", "GFD", "RM", ""])
ints = st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 12)
# Fields the daemons read, each either of its expected shape or anything at all.
fields = {
    "n": ints | json_values, "e": ints | json_values, "epoch": ints | json_values,
    "seq": ints | json_values, "commit": ints | json_values, "pid": ints | json_values,
    "present": st.booleans() | json_values, "stalled": st.booleans() | json_values,
    "replica": ids | json_values, "id": ids | json_values, "incarnation": json_values,
    "members": st.lists(ids, max_size=4) | json_values,
    "view": st.fixed_dictionaries({"epoch": ints, "primary": ids,
                                   "members": st.lists(ids, max_size=3)}) | ints | json_values,
    "stable": st.booleans() | json_values,
    "lfds": st.dictionaries(ids, st.dictionaries(st.text(max_size=8), json_values,
                                                 max_size=3), max_size=3) | json_values,
    "changes": st.lists(st.fixed_dictionaries(
        {"replica": ids, "kind": st.sampled_from(["add", "delete", "x"])},
        optional={"confirmed_dead": json_values, "pid": json_values, "at": json_values,
                  "reason": json_values}), max_size=3) | json_values,
    "last_change": st.fixed_dictionaries(
        {}, optional={"at": json_values, "reason": json_values, "pid": json_values,
                      "confirmed_dead": json_values}) | json_values,
    "gfd_heartbeat_interval": json_values, "reason": json_values, "message": json_values,
    "role": st.sampled_from(["primary", "backup", "gfd", "admin", "lfd"]) | json_values,
    "at": json_values, "vouched": json_values, "i_am_ready": json_values,
    "recovering": json_values, "caught_up": json_values, "upstream": json_values,
    "checkpoint_count": json_values, "accept_data_loss": json_values,
}


def messages(kinds: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({"v": st.just(1), "t": st.sampled_from(kinds), "s": ids},
                                 optional=fields)


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("fuzz-peers")
    path = local.write_cluster(run_dir, 3, "passive", base=39100)
    (run_dir / "cluster.key").write_bytes(KEY)
    return path


def _feed(conn: Conn, sequence: list[dict[str, Any]]) -> None:
    conn.connection_made(FakeTransport())  # type: ignore[arg-type]
    conn.data_received(b"".join(encode(m, KEY) for m in sequence))


def _fuzz(scenario: Callable[[], Any]) -> None:
    """Run ``scenario``; fail on what would stop a daemon: a handler's defect, a callback's
    exception, a task that died of one (``runloop.serve`` exits on each)."""
    supervise.died.clear()
    errors: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: errors.append(f"{context.get('message')}: "
                                                f"{context.get('exception')!r}"))
        await scenario()
        await asyncio.sleep(0)

    asyncio.run(main())
    assert supervise.died == [], f"a hostile peer stopped the daemon: {supervise.died}"
    assert errors == [], f"a hostile peer broke the daemon: {errors}"


hello_from_gfd = st.just({"v": 1, "t": "hello", "s": "GFD", "e": 0, "role": "gfd"})
hello_from_admin = st.just({"v": 1, "t": "hello", "s": "ftds", "e": 0, "role": "admin"})
RM_KINDS = ["welcome", "report", "view_ack", "status", "lease_req", "lagging", "error", "x"]
GFD_TO_RM = ["membership", "gfd_status", "status_req", "x"]
ADMIN_TO_RM = ["status_req", "incidents_req", "reset_budget", "hold", "release",
               "force_primary", "x"]
fuzz_settings = settings(max_examples=120, deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture])


def _rm_survives(rm: ReplicationManager) -> None:
    rm.decide()
    orjson.dumps(rm.status(rm.gfd))
    rm.status_line()


@fuzz_settings
@given(st.lists(messages(RM_KINDS), min_size=1, max_size=6))
def test_the_rm_survives_whatever_a_replica_sends(cluster_file, sequence):
    async def scenario() -> None:
        rm = ReplicationManager(str(cluster_file))
        conn = Conn(KEY, 1 << 20, "RM", on_message=rm._on_replica_message, label="RM->S1")
        conn.peer_id = "S1"
        _feed(conn, sequence)
        _rm_survives(rm)

    _fuzz(scenario)


@fuzz_settings
@given(st.one_of(hello_from_gfd, hello_from_admin, messages(["hello"])),
       st.lists(messages(GFD_TO_RM + ADMIN_TO_RM), max_size=6))
def test_the_rm_survives_whatever_its_gfd_or_an_operator_sends(cluster_file, hello, sequence):
    async def scenario() -> None:
        rm = ReplicationManager(str(cluster_file))
        _feed(rm._new_conn(), [hello, *sequence])
        await asyncio.sleep(0)  # a status request answers from a task
        _rm_survives(rm)

    _fuzz(scenario)


hello_from_lfd = st.fixed_dictionaries(
    {"v": st.just(1), "t": st.just("hello"), "s": st.just("LFD1"), "e": st.just(0),
     "role": st.just("lfd"), "replica": st.just("S1"), "id": st.just("LFD1")},
    optional={k: fields[k] for k in ("present", "last_change", "pid")})


@fuzz_settings
@given(st.one_of(hello_from_lfd, hello_from_admin, messages(["hello"])),
       st.lists(messages(["hb_ack", "add", "delete", "state", "status_req", "x"]), max_size=6))
def test_the_gfd_survives_whatever_an_lfd_or_an_operator_sends(cluster_file, hello, sequence):
    async def scenario() -> None:
        gfd = GlobalFaultDetector(str(cluster_file))
        _feed(gfd._new_conn(), [hello, *sequence])
        gfd._check_stable()
        orjson.dumps(gfd.snapshot())
        rm = ReplicationManager(str(cluster_file))  # what the RM makes of that membership
        rm._on_membership({**gfd.snapshot(), "changes": []})
        _rm_survives(rm)

    _fuzz(scenario)


@fuzz_settings
@given(st.lists(messages(["status_req", "welcome", "ok", "x"]), min_size=1, max_size=4))
def test_the_gfd_survives_whatever_the_rm_sends(cluster_file, sequence):
    async def scenario() -> None:
        gfd = GlobalFaultDetector(str(cluster_file))
        _feed(Conn(KEY, 1 << 20, "GFD", on_message=gfd._on_rm_message), sequence)

    _fuzz(scenario)


@fuzz_settings
@given(st.lists(messages(["welcome", "hb_ack", "error", "x"]), min_size=1, max_size=5))
def test_an_lfd_survives_whatever_its_replica_sends(cluster_file, sequence):
    async def scenario() -> None:
        lfd = LocalFaultDetector(str(cluster_file), "S1")
        conn = Conn(KEY, 1 << 20, "LFD1", on_message=lfd._on_replica_message)
        lfd._replica_conn = conn
        _feed(conn, sequence)
        orjson.dumps(lfd._state())
        lfd.present = True
        conn.abort()  # the replica goes: is it dead? (judged from the pid it gave)
        lfd._on_replica_closed(conn)
        for _ in range(3):
            await asyncio.sleep(0)

    _fuzz(scenario)


@pytest.mark.parametrize("pid", ["1", 0, -1, True, 1.0, 2**22 + 1, 2**70, None])
def test_an_lfd_takes_from_its_replica_only_a_pid_it_may_signal(cluster_file, pid):
    """The LFD signals the pid its replica's welcome gives (SIGKILL when it fences a hung
    primary; ``os.kill(-1, ...)`` would reach every process it may signal). Anything but a
    process id (1 to 2**22) is refused as malformed: the replica's connection closes."""
    lfd = LocalFaultDetector(str(cluster_file), "S1")
    welcome = {"t": "welcome", "role": "primary", "pid": pid}
    with pytest.raises(WireError, match="pid"):
        lfd._on_replica_message(None, welcome)  # type: ignore[arg-type]
    assert lfd.replica_pid is None
    lfd._on_replica_message(None, {**welcome, "pid": 4321})  # type: ignore[arg-type]
    assert lfd.replica_pid == 4321


@fuzz_settings
@given(st.lists(messages(["hb", "welcome", "ok", "error", "x"]), min_size=1, max_size=4))
def test_an_lfd_survives_whatever_the_gfd_sends(cluster_file, sequence):
    async def scenario() -> None:
        lfd = LocalFaultDetector(str(cluster_file), "S1")
        _feed(Conn(KEY, 1 << 20, "LFD1", on_message=lfd._on_gfd_message), sequence)

    _fuzz(scenario)


entries = st.lists(st.fixed_dictionaries(
    {"s": st.integers(0, 4)},
    optional={"c": ids | json_values, "r": ints | json_values, "e": ints | json_values,
              "t": ints | json_values, "a": ints | json_values,
              "op": st.fixed_dictionaries({"op": st.sampled_from(["put", "get", "incr", "x"]),
                                           "key": ids | json_values},
                                          optional={"value": json_values,
                                                    "delta": ints | json_values})
              | json_values}), max_size=4)
stream = st.fixed_dictionaries(
    {"v": st.just(1), "s": st.just("S2"),
     "t": st.sampled_from(["entries", "catchup", "checkpoint", "cp_part", "commit", "fetch",
                           "view", "error", "x"])},
    optional={"e": st.integers(0, 2) | json_values, "entries": entries | json_values,
              "commit": st.integers(0, 4) | json_values, "from": st.integers(0, 4) | json_values,
              "checkpoint": json_values, "digest_only": json_values, "view": fields["view"],
              "seq": ints | json_values})


@fuzz_settings
@given(st.lists(stream, min_size=1, max_size=6))
def test_a_backup_survives_whatever_its_primary_streams(cluster_file, sequence):
    async def scenario() -> None:
        replica = ReplicaDaemon(str(cluster_file), "S1").replica
        conn = Conn(KEY, 1 << 20, "S1", lambda: replica.epoch, replica.on_upstream_message)
        replica.upstream = Upstream(replica, replica.config.replica("S2"))
        replica.upstream.conn = conn
        replica.caught_up = True
        _feed(conn, sequence)
        for handle, c, msg in replica._inbox:  # as the applier runs them
            with contextlib.suppress(WireError):  # refused: the applier closes that conn
                handle(c, msg)
        replica._inbox.clear()
        for task in replica._tasks:
            task.cancel()

    _fuzz(scenario)


from_member = st.fixed_dictionaries(
    {"v": st.just(1), "s": st.just("S2"),
     "t": st.sampled_from(["fetched", "cp_part", "ack", "fetched", "x"])},
    optional={"e": st.integers(2, 3) | json_values, "entries": entries | json_values,
              "seq": st.integers(0, 4) | json_values, "checkpoint": json_values,
              "part": json_values, "of": json_values, "data": json_values,
              "id": json_values, "commit": st.integers(0, 4) | json_values})
member_hello = st.fixed_dictionaries(
    {"v": st.just(1), "s": st.just("S2"), "t": st.just("hello"), "role": st.just("member"),
     "id": st.just("S2"), "seq": st.integers(0, 3), "last_epoch": st.integers(0, 3)},
    optional={"trusted": st.booleans(), "e": st.integers(0, 3)})


@fuzz_settings
@given(member_hello, st.lists(from_member, min_size=1, max_size=6))
def test_a_new_primary_survives_whatever_a_member_sends_in_its_view_change(cluster_file, hello,
                                                                           sequence):
    async def scenario() -> None:
        daemon = ReplicaDaemon(str(cluster_file), "S1")
        replica = daemon.replica
        replica._on_view(_rm(), {"view": View(3, 0, "S1", ("S1", "S2"))})  # collects from S2
        conn = daemon._control_conn()
        _feed(conn, [{**hello, "e": 3}, *sequence])
        for handle, c, msg in replica._inbox:  # as the applier runs them
            with contextlib.suppress(WireError):  # refused: the applier closes that conn
                handle(c, msg)
        replica._inbox.clear()
        orjson.dumps(replica.status())
        await replica.stop()

    _fuzz(scenario)
