"""The comparison benchmark's pure parts: percentiles, windows, CPU accounting, ratios, RESP."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ lives in the checkout

from bench import compare, resp
from bench.failover import first_new
from bench.stats import (
    Window,
    cpu_ticks,
    median,
    percentile,
    ratio,
    rotation,
    us_per_op,
)


# -- percentiles -----------------------------------------------------------------------------
def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 100..1, unsorted on purpose
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2
    assert percentile([7.0], 1) == 7


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 0)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


# -- counting by completion ------------------------------------------------------------------
def test_window_counts_operations_by_completion_time() -> None:
    w = Window(10.0, 20.0)
    w.record(sent=9.0, done=10.5)    # sent before the window, completed in it: counted
    w.record(sent=19.5, done=20.5)   # completed after it: not counted
    w.record(sent=5.0, done=9.99)    # completed before it: not counted
    w.record(sent=10.0, done=10.0)   # the start is inside
    w.record(sent=19.0, done=20.0)   # the end is not
    w.record(sent=12.0, done=12.25)
    assert sorted(w.latencies) == [0.0, 0.25, 1.5]
    s = w.summary()
    assert s["acked"] == 3
    assert s["ops_s"] == pytest.approx(0.3)
    assert s["p50_ms"] == pytest.approx(250.0)


def test_window_counts_failures_by_kind_inside_only() -> None:
    w = Window(0.0, 1.0)
    w.fail("timeout", 0.5)
    w.fail("timeout", 0.7)
    w.fail("READONLY", 0.9)
    w.fail("timeout", 1.5)
    assert w.errors == {"timeout": 2, "READONLY": 1}
    assert w.summary()["acked"] == 0
    assert math.isnan(w.summary()["p50_ms"])  # type: ignore[arg-type]


# -- CPU, ratios, medians, rotation ----------------------------------------------------------
def test_cpu_ticks_counts_after_the_last_parenthesis() -> None:
    # comm "(a) b)" holds a space and a ')'; utime 7, stime 5, cutime 3, cstime 1.
    fields = ["S", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "7", "5", "3", "1",
              "20", "0", "1", "0", "99"]
    assert cpu_ticks("1234 ((a) b)) " + " ".join(fields)) == 16


def test_us_per_op() -> None:
    assert us_per_op(0.5, 10_000) == pytest.approx(50.0)
    assert math.isnan(us_per_op(0.5, 0))


def test_ratio_and_its_missing_cases() -> None:
    assert ratio(30.0, 20.0) == pytest.approx(1.5)
    for ours, theirs in ((1.0, 0.0), (0.0, 1.0), (None, 1.0), (1.0, math.nan)):
        assert math.isnan(ratio(ours, theirs))


def test_median_skips_missing_values() -> None:
    assert median([3.0, math.nan, 1.0, 2.0]) == 2.0
    assert math.isnan(median([math.nan]))


def test_rotation_puts_every_system_in_every_position() -> None:
    names = ["a", "b", "c"]
    assert rotation(names, 0) == ["a", "b", "c"]
    assert rotation(names, 1) == ["b", "c", "a"]
    assert rotation(names, 3) == names
    positions = {tuple(rotation(names, r).index(n) for r in range(3)) for n in names}
    assert all(sorted(p) == [0, 1, 2] for p in positions)


def test_first_acknowledgement_by_a_new_leader() -> None:
    acks = [(1.0, "S1"), (2.5, "S1"), (2.7, "S2"), (2.6, "S3"), (3.0, "S2")]
    assert first_new(acks, 2.0, lambda who: who != "S1") == 2.6
    assert first_new(acks, 5.0, lambda who: who != "S1") is None


# -- the report's arithmetic -----------------------------------------------------------------
def _row(system: str, clients: int, ops: float, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"system": system, "clients": clients, "ops_s": ops,
                              "p50_ms": 1000 / ops, "p99_ms": 2000 / ops, "server_us_op": 50.0,
                              "replica_us_op": 40.0, "client_us_op": 10.0, "errors": {}}
    row.update(extra)
    return row


def test_medians_over_rounds_and_ratios() -> None:
    rows = [_row("ftds passive", 16, v) for v in (100.0, 300.0, 200.0)]
    rows += [_row("Redis WAIT 2", 16, v, errors={"wait_short": 1}) for v in (400.0, 500.0)]
    rows.append({"system": "Redis WAIT 2", "clients": 16, "error": "start: no leader"})
    table = compare.medians(rows, ["ftds passive", "Redis WAIT 2"], [16])
    assert table["ftds passive"][16]["ops_s"] == 200
    assert table["Redis WAIT 2"][16]["ops_s"] == 450
    assert table["Redis WAIT 2"][16]["failed_rounds"] == 1
    assert table["Redis WAIT 2"][16]["errors"] == {"wait_short": 2}
    found = compare.ratios(table, [16])
    assert found["ftds passive / Redis WAIT 2"][16]["ops_s"] == pytest.approx(200 / 450)
    assert "ftds passive / PySyncObj batch off" not in found  # not measured, not invented


def test_report_json_has_no_nan() -> None:
    assert compare.clean({1: math.nan, "a": [1.0, (math.nan,)]}) == {"1": None,
                                                                     "a": [1.0, [None]]}


def test_default_run_fits_fifteen_minutes() -> None:
    args = compare.parse_args([])
    assert args.clients == [1, 16, 128, 512]
    assert len(args.systems) == 5
    assert compare.estimate(args) <= 15 * 60
    assert compare.estimate(compare.parse_args(["--quick"])) <= 3 * 60


# -- RESP ------------------------------------------------------------------------------------
def test_resp_encodes_commands_as_bulk_arrays() -> None:
    assert resp.encode("SET", "k1", 42) == b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$2\r\n42\r\n"
    assert resp.encode(b"a\r\nb") == b"*1\r\n$4\r\na\r\nb\r\n"


def test_resp_parses_every_reply_type() -> None:
    assert resp.parse(b"+OK\r\n") == (b"OK", 5)
    assert resp.parse(b"-READONLY You can't write\r\n") == (
        resp.RespError("READONLY You can't write"), 27)
    assert resp.parse(b"-READONLY x\r\n")[0].kind == "READONLY"  # type: ignore[index,union-attr]
    assert resp.parse(b":-12\r\n") == (-12, 6)
    assert resp.parse(b"$3\r\na\r\n\r\n") == (b"a\r\n", 9)
    assert resp.parse(b"$-1\r\n") == (None, 5)
    assert resp.parse(b"*2\r\n:1\r\n*1\r\n$1\r\nx\r\n") == ([1, [b"x"]], 19)
    assert resp.parse(b"xx+OK\r\n", 2) == (b"OK", 7)


def test_resp_incomplete_replies_wait_for_more() -> None:
    whole = b"*2\r\n$5\r\nhello\r\n:7\r\n"
    for cut in range(len(whole)):
        assert resp.parse(whole[:cut]) is None, cut
    assert resp.parse(whole) == ([b"hello", 7], len(whole))


@pytest.mark.parametrize("garbage", [b"?what\r\n", b"$x\r\n", b"$3\r\nabcd\r\n", b"*-2\r\n",
                                     b"\r\n"])
def test_resp_garbage_is_a_protocol_error(garbage: bytes) -> None:
    with pytest.raises(resp.ProtocolError):
        resp.parse(garbage)


values = st.recursive(
    st.binary(max_size=20) | st.integers(-(2**63), 2**63 - 1) | st.none(),
    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def _wire(value: object) -> bytes:
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, int):
        return b":%d\r\n" % value
    assert isinstance(value, list)
    return b"*%d\r\n" % len(value) + b"".join(_wire(v) for v in value)


@given(values, values)
def test_resp_parse_round_trips_back_to_back_replies(first: object, second: object) -> None:
    data = _wire(first) + _wire(second)
    got = resp.parse(data)
    assert got is not None and got[0] == first
    assert resp.parse(data, got[1]) == (second, len(data))


def test_resp_connection_matches_replies_to_calls_across_split_reads() -> None:
    class Transport:
        def __init__(self) -> None:
            self.sent = b""

        def write(self, data: bytes) -> None:
            self.sent += data

        def is_closing(self) -> bool:
            return False

        def abort(self) -> None:
            pass

    async def go() -> None:
        conn = resp.RespConn()
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        a, b = conn.call_many(("SET", "k", 1), ("WAIT", 2, 100))
        c = conn.call("PING")
        assert transport.sent == (resp.encode("SET", "k", 1) + resp.encode("WAIT", 2, 100)
                                  + resp.encode("PING"))
        for chunk in (b"+O", b"K\r\n:", b"2\r\n+PONG\r", b"\n"):
            conn.data_received(chunk)
        assert (await a, await b, await c) == (b"OK", 2, b"PONG")
        late = conn.call("GET", "k")
        conn.abort(TimeoutError())
        with pytest.raises(TimeoutError):
            await late
        assert conn.closed

    asyncio.run(go())


def test_info_fields() -> None:
    info = b"# Replication\r\nrole:slave\r\nmaster_port:6379\r\nmaster_link_status:up\r\n"
    assert resp.info_fields(info) == {"role": "slave", "master_port": "6379",
                                      "master_link_status": "up"}


def test_missing_redis_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import systems

    monkeypatch.setattr(systems.shutil, "which", lambda name: None)
    monkeypatch.setattr(systems.os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit, match=r"apt-get install redis-server"):
        systems.ensure_redis()


# -- the replica count -----------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["1", "2", "4", "6", "0", "-3", "101"])
def test_replicas_must_be_odd_and_at_least_three(
        bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.parse_args(["--replicas", bad])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"scripts/bench compare: error: --replicas must be odd, "
                       f"from 3 to {compare.MAX_REPLICAS} (got {bad})")


def test_replicas_name_the_redis_row_by_its_wait(capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.parse_args([]).replicas == 3
    assert "Redis WAIT 2" in compare.parse_args([]).systems  # old reports' name, unchanged
    assert compare.parse_args(["--systems", "Redis WAIT 2"]).systems == ["Redis WAIT 2"]
    five = compare.parse_args(["--replicas", "5"])
    assert five.replicas == 5
    assert five.systems == ["ftds passive", "ftds active", "Redis WAIT 4",
                            "PySyncObj batch off", "PySyncObj defaults"]
    for spelling in ("Redis WAIT 4", "Redis WAIT"):
        args = compare.parse_args(["--replicas", "5", "--systems", f"ftds passive,{spelling}"])
        assert args.systems == ["ftds passive", "Redis WAIT 4"]
    seven = compare.parse_args(["--replicas", "7", "--systems", "Redis WAIT"])
    assert seven.systems == ["Redis WAIT 6"]
    with pytest.raises(SystemExit):
        compare.parse_args(["--replicas", "5", "--systems", "Redis WAIT 2"])
    assert "the Redis row is 'Redis WAIT 4'" in capsys.readouterr().err


def test_more_replicas_take_longer_starts_only() -> None:
    three, five = (compare.parse_args(["--replicas", n, "--no-failover"]) for n in ("3", "5"))
    assert compare.estimate(five) > compare.estimate(three)
    assert compare.estimate(five) - compare.estimate(three) == pytest.approx(
        3 * 5 * compare.START_S * 2 / 3)  # 15 starts, each 5/3 as long


def test_ratios_use_the_redis_row_of_the_replica_count() -> None:
    rows = [_row("ftds passive", 16, 100.0), _row("Redis WAIT 4", 16, 400.0)]
    table = compare.medians(rows, ["ftds passive", "Redis WAIT 4"], [16])
    found = compare.ratios(table, [16], replicas=5)
    assert found["ftds passive / Redis WAIT 4"][16]["ops_s"] == pytest.approx(0.25)
    assert compare.ratios(table, [16]) == {}  # at 3 nodes the Redis row is WAIT 2: absent


@pytest.fixture
def no_redis_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Systems built without asking whether redis-server is installed (nothing starts)."""
    from bench import systems

    monkeypatch.setattr(systems, "ensure_redis", lambda: "/usr/bin/redis-server")


@pytest.mark.usefixtures("no_redis_lookup")
def test_five_node_systems_are_built_with_five_nodes(tmp_path: Path) -> None:
    from bench.systems import Ftds, PySyncObj, Redis

    ftds = compare.make("ftds passive", tmp_path, 5)
    assert isinstance(ftds, Ftds)
    assert ftds.config.replica_ids == ["S1", "S2", "S3", "S4", "S5"]
    assert len({r.port for r in ftds.config.replicas}) == 5

    redis = compare.make("Redis WAIT 4", tmp_path, 5)
    assert isinstance(redis, Redis) and not redis.sentinel_ports
    assert redis.name == "Redis WAIT 4"
    assert len(set(redis.ports)) == 5
    assert redis.driver_args(redis.ports[0]) == ["--port", str(redis.ports[0]), "--wait", "4"]
    assert "replicaof" not in redis.server_conf(0)
    for i in range(1, 5):
        assert f"replicaof 127.0.0.1 {redis.ports[0]}\n" in redis.server_conf(i)
    with pytest.raises(ValueError):
        compare.make("Redis WAIT 2", tmp_path, 5)

    raft = compare.make("PySyncObj batch off", tmp_path, 5)
    assert isinstance(raft, PySyncObj)
    assert len(set(raft.raft)) == len(set(raft.front)) == 5
    cmd = raft.node_command(2)
    partners = cmd[cmd.index("--partners") + 1:cmd.index("--no-batch")]
    assert sorted(partners) == sorted(a for j, a in enumerate(raft.raft) if j != 2)


@pytest.mark.usefixtures("no_redis_lookup")
@pytest.mark.parametrize(("nodes", "quorum", "syncs", "wait"), [(3, 2, 1, 1), (5, 3, 3, 2),
                                                                (7, 4, 5, 3)])
def test_sentinels_scale_with_a_majority_quorum(tmp_path: Path, nodes: int, quorum: int,
                                                syncs: int, wait: int) -> None:
    from bench.failover import majority_wait, tunables
    from bench.systems import Redis

    redis = compare.make("Redis+Sentinel", tmp_path, nodes)
    assert isinstance(redis, Redis)
    assert len(redis.ports) == len(redis.sentinel_ports) == nodes
    assert not set(redis.ports) & set(redis.sentinel_ports)
    conf = redis.sentinel_conf(1)
    assert f"sentinel monitor mymaster 127.0.0.1 {redis.ports[0]} {quorum}\n" in conf
    assert f"sentinel parallel-syncs mymaster {syncs}\n" in conf
    assert conf.count("sentinel known-replica") == nodes - 1
    assert conf.count("sentinel known-sentinel") == nodes - 1
    assert str(redis.sentinel_ports[1]) not in conf.split("known-sentinel", 1)[1]  # not itself
    assert majority_wait(nodes) == wait  # the master + wait replicas: a majority of nodes
    assert f"{nodes} Sentinels, quorum {quorum}" in tunables(nodes)["Redis+Sentinel"]


def test_report_records_the_replica_count(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    code = compare.main(["--replicas", "5", "--no-throughput", "--no-failover",
                         "--failover-systems", "ftds passive", "--json", str(path)])
    assert code == 0
    report = json.loads(path.read_text())
    assert report["replicas"] == 5
    head = path.with_suffix(".txt").read_text().splitlines()
    assert head[0].startswith("ftds vs Redis vs PySyncObj, 5 nodes each on 127.0.0.1")
    assert head[1] == ("replicas: 5 (ftds 5 replicas; Redis a master and 4 replicas, WAIT 4; "
                       "PySyncObj 5 nodes)")


def test_the_fenced_ftds_row_runs_with_fencing_and_gets_its_own_ratios(tmp_path: Path) -> None:
    from bench.systems import Ftds

    fenced = compare.make(compare.FENCED, tmp_path)
    plain = compare.make("ftds passive", tmp_path)
    assert isinstance(fenced, Ftds) and isinstance(plain, Ftds)
    assert fenced.name == "ftds passive fenced" and plain.name == "ftds passive"
    assert fenced.config.tunables.fence_hung_primary is True
    assert plain.config.tunables.fence_hung_primary is False
    trials = [{"system": s, "fault": f, "ms": ms}
              for s, f, ms in [("ftds passive", "crash", 20.0), ("ftds passive", "hang", 600.0),
                               (compare.FENCED, "crash", 20.0), (compare.FENCED, "hang", 320.0),
                               ("PySyncObj batch off", "crash", 700.0),
                               ("PySyncObj batch off", "hang", 800.0)]]
    table = compare.failover_medians(
        trials, ["ftds passive", compare.FENCED, "PySyncObj batch off"])
    assert table["ftds passive / PySyncObj batch off"]["hang"] == pytest.approx(0.75)
    assert table["ftds passive fenced / PySyncObj batch off"]["hang"] == pytest.approx(0.4)
    assert "ftds passive fenced / Redis+Sentinel" not in table  # not measured, not invented
