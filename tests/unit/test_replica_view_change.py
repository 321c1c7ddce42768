"""The orderer's view change, driven in-process: a replica object fed events, fake links.

After a view change the new primary holds entries that its backups may lack. It may answer a
request (a retry of one it applied as a backup included) only once every member of the new
ready set acknowledged holding it; otherwise its crash right after the reply loses the write.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ftds import local
from ftds.config import load_config
from ftds.replica import core, orderer
from ftds.replica.core import Replica
from ftds.replica.fanout import Subscriber
from ftds.view import View
from ftds.wire import WireError


class FakeConn:
    def __init__(self, role: str, peer_id: str | None = None) -> None:
        self.role = role
        self.peer_id = peer_id
        self.on_close = None
        self.sent: list[tuple[str, dict]] = []
        self.frames = 0

    def send(self, kind, fields=None):
        self.sent.append((kind, fields or {}))

    def send_raw(self, body):
        msg = orjson.loads(body)
        self.sent.append((msg["t"], msg))

    def send_frame(self, data):
        self.frames += 1

    def is_closing(self):
        return False

    def close(self):
        pass


def op(n):
    return {"op": "incr", "key": "x", "delta": n}


def promoted_primary(tmp_path) -> tuple[Replica, FakeConn, FakeConn]:
    """S1 applied seq 1..5 as a backup of epoch 1; epoch 2 makes it primary over S1, S2; S2
    subscribes holding only seq 3; a client's retry of request 5 waits for the view change."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44000))
    replica = Replica(config, "S1", config.read_key())
    for n in range(1, 6):
        replica._apply({"s": n, "e": 1, "c": "C1", "r": n, "op": op(n)}, announce=False)
    rm = FakeConn("rm", "RM")
    replica._on_view(rm, {"view": View(2, 0, "S1", ("S1", "S2"))})
    assert replica.recovering
    client = FakeConn("client", "C1")
    replica._handle_requests(client, {"reqs": [("C1", 5, op(5), 2)]})  # held
    member = FakeConn("member", "S2")
    replica._handle_subscribe(member, {"id": "S2", "seq": 3, "last_epoch": 1, "trusted": True,
                                       "epoch": 2})
    assert replica.serving
    replica._ship()
    return replica, client, member


def replied(replica: Replica, client: FakeConn) -> list[dict]:
    replica.replies.flush()
    return [item for kind, body in client.sent if kind == "reply" for item in body["reps"]]


@pytest.mark.parametrize("acks", [(5,), (4, 5)])
def test_new_primary_answers_a_held_retry_only_after_the_members_hold_it(tmp_path, acks):
    async def scenario():
        replica, client, member = promoted_primary(tmp_path)
        assert replica.commit < 5
        assert not replied(replica, client), "answered before the new ready set held it"
        catchup = [body for kind, body in member.sent if kind == "catchup"]
        assert catchup and [e["s"] for e in catchup[0]["entries"]] == [4, 5]
        for seq in acks:
            replica.on_member_ack(member, {"t": "ack", "e": 2, "seq": seq})
        replica._ship()
        assert replica.commit == 5
        assert [(r["r"], r["s"]) for r in replied(replica, client)] == [(5, 5)]

    asyncio.run(scenario())


def test_planted_early_commit_is_what_the_test_catches(tmp_path, monkeypatch):
    """The old rule (commit = own seq at once) answers before S2 holds seq 4 and 5."""
    monkeypatch.setattr(orderer, "EARLY_COMMIT", True)

    async def scenario():
        replica, client, _member = promoted_primary(tmp_path)
        assert replica.commit == 5 and replied(replica, client)

    asyncio.run(scenario())


def test_member_that_differs_from_a_digest_only_checkpoint_takes_the_state_again(tmp_path):
    async def scenario():
        config = load_config(local.write_cluster(tmp_path, 3, base=44100))
        member = Replica(config, "S2", config.read_key())
        for n in range(1, 4):
            member._apply({"s": n, "e": 1, "c": "C1", "r": n, "op": op(n)}, announce=False)
        member.caught_up = True
        upstream = FakeConn("upstream", "S1")
        closed = []
        upstream.close = lambda: closed.append(True)
        good = {"seq": 3, "digest": member.sm.digest(), "checkpoint_count": 7, "epoch": 1}
        assert member._take_digest_checkpoint(upstream, good)
        assert member.caught_up and not closed and member.sm.checkpoint_count == 7
        bad = {**good, "digest": "0" * 64, "checkpoint_count": 8}
        assert not member._take_digest_checkpoint(upstream, bad)
        assert not member.caught_up and closed, "a diverged member kept its state"
        assert member.checkpoints.divergences == 1

    asyncio.run(scenario())


def primary_alone_with_three_committed(tmp_path) -> tuple[Replica, FakeConn]:
    """S1 primary of epoch 1 alone under a lease, seq 1..3 applied and acknowledged."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))
    replica = Replica(config, "S1", config.read_key())
    rm = FakeConn("rm", "RM")
    replica._on_view(rm, {"view": View(1, 0, "S1", ("S1",), lease=5.0)})
    for n in range(1, 4):
        replica._apply({"s": n, "e": 1, "c": "C1", "r": n, "op": op(n)}, announce=False)
    replica._advance_commit()  # acknowledged alone, under its lease
    return replica, rm


def test_primary_vouches_for_an_added_member_once_it_holds_what_was_committed(tmp_path):
    """A member added in the same epoch counts for new commits at once, but it may still miss
    entries committed before the view: the primary vouches for the view (the RM then makes the
    member electable) only when the member acknowledged them."""
    replica, rm = primary_alone_with_three_committed(tmp_path)
    assert replica.commit == 3
    assert replica.vouched() == [1, 0]
    replica.subs.admit(Subscriber("S2", FakeConn("member", "S2"), seq=1, trusted=False))
    replica._on_view(rm, {"view": View(1, 1, "S1", ("S1", "S2"))})
    assert replica.vouched() == [1, 0], "vouched before S2 holds seq 2..3"
    replica.acked["S2"] = 3
    assert replica.vouched() == [1, 1]


def test_a_member_removed_and_added_again_on_one_stream_is_vouched_for_without_new_writes(
        tmp_path):
    """Simulator seed 37896: a view removing S2 reached the primary late, after S2 had
    acknowledged everything on its stream; the next view added S2 back. Its acknowledgements
    were forgotten with the removal, and with no new write it never acknowledged again: the
    primary never vouched for the view, and the RM admitted nobody after it (not converged)."""
    replica, rm = primary_alone_with_three_committed(tmp_path)
    member = FakeConn("member", "S2")
    replica.subs.admit(Subscriber("S2", member, seq=0, trusted=False))
    replica._on_view(rm, {"view": View(1, 1, "S1", ("S1", "S2"))})
    replica.on_member_ack(member, {"t": "ack", "e": 1, "seq": 3})
    assert replica.vouched() == [1, 1]
    replica._on_view(rm, {"view": View(1, 2, "S1", ("S1",))})
    replica._on_view(rm, {"view": View(1, 3, "S1", ("S1", "S2"))})
    assert replica.vouched() == [1, 3], "what S2 acknowledged on this stream was forgotten"
    # A new stream (another process, or a resubscription) starts from what it says it holds.
    replica._on_view(rm, {"view": View(1, 4, "S1", ("S1",))})
    replica.subs.admit(Subscriber("S2", FakeConn("member", "S2"), seq=0, trusted=False))
    replica._on_view(rm, {"view": View(1, 5, "S1", ("S1", "S2"))})
    assert replica.vouched() == [1, 4], "vouched for a stream that acknowledged nothing"


def test_active_member_answers_an_entry_only_on_the_connection_that_sent_that_operation(tmp_path):
    """Two connections use client id C1 with request 12: the client's get and a hostile put. The
    sequencer orders the get; a member must never send the get's reply to the put's connection,
    which would take it for the ack of a write that never happened."""
    async def scenario():
        config = load_config(local.write_cluster(tmp_path, 3, mode="active", base=44200))
        member = Replica(config, "S2", config.read_key())
        member._on_view(FakeConn("rm", "RM"), {"view": View(1, 0, "S1", ("S1", "S2"))})
        member.trusted = member.caught_up = True
        assert member.ready and not member.is_orderer
        honest, hostile = FakeConn("client", "C1"), FakeConn("client", "C1")
        get = {"op": "get", "key": "x"}
        member._handle_requests(honest, {"reqs": [("C1", 12, get, 1)]})
        member._handle_requests(hostile, {"reqs": [("C1", 12, {"op": "put", "key": "x",
                                                                "value": 9}, 1)]})
        member._member_apply(FakeConn("upstream", "S1"),
                             {"s": 1, "e": 1, "c": "C1", "r": 12, "op": get, "t": 0})
        member._member_commit(1)
        assert not replied(member, hostile), "the get's reply went to the put's connection"

        # Without the hostile twin the member answers its client as before.
        member._handle_requests(honest, {"reqs": [("C1", 13, get, 1)]})
        member._member_apply(FakeConn("upstream", "S1"),
                             {"s": 2, "e": 1, "c": "C1", "r": 13, "op": get, "t": 0})
        member._member_commit(2)
        assert [(r["r"], r["s"]) for r in replied(member, honest)] == [(13, 2)]

    asyncio.run(scenario())


@pytest.mark.parametrize("attempt", ["2", None, [2], 0, True, 2.0])
def test_a_request_whose_attempt_is_not_a_positive_integer_is_malformed(tmp_path, attempt):
    """The attempt is compared with numbers on every replica that records a retry: anything
    else is refused at the edge (the connection closes), never carried to the applier."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))
    replica = Replica(config, "S2", config.read_key())
    with pytest.raises(WireError, match="attempt"):
        replica.on_client_requests(FakeConn("client", "C1"), {"reqs": [
            {"c": "C1", "r": 1, "op": op(1), "a": attempt}]})
    assert not replica._inbox and not replica.recorded_batches


@pytest.mark.parametrize("client", ["C1\nEXEC S1 seq=9 e=1 <C9, 9>", "a b", "C1, 5>", "",
                                    "x" * 65, "C\u00e9", "C1\x00"])
def test_a_client_id_that_could_forge_a_log_line_is_refused_at_the_edge(tmp_path, client):
    """Client ids are written into journal lines (``EXEC S1 seq=.. <C1, 5>``, ``Received <C1,
    S1, 5, request>``) that operators and the chaos checker read line by line: a newline, a
    space or a comma in one could forge a line or a field. They are refused in the hello and in
    every request."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))
    replica = Replica(config, "S1", config.read_key())
    with pytest.raises(WireError, match="client id"):
        replica.on_client_hello(FakeConn("client"), {"client": client})
    with pytest.raises(WireError, match="client id"):
        replica.on_client_requests(FakeConn("client", "C1"), {"reqs": [
            {"c": client, "r": 1, "op": op(1)}]})
    assert not replica._inbox and not replica.client_links


def test_the_client_ids_ftds_makes_are_taken(tmp_path):
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))
    replica = Replica(config, "S1", config.read_key())
    for client in ("C1", "C1.2", "C1.hostile", "B123-4.17", "e2e-reader-1796431527",
                   "chaos-reader-77", "user@h5:9/x+y=z~w", "x" * 64):
        replica.on_client_requests(FakeConn("client", "C1"), {"reqs": [
            {"c": client, "r": 1, "op": op(1)}]})


def test_an_orderer_whose_clock_runs_ahead_does_not_age_the_reply_cache(tmp_path, monkeypatch):
    """Entries carry the orderer's time, and the reply cache's TTL (an hour) is measured by
    it. A new primary whose wall clock runs two hours fast must not date its entries two hours
    later: its first sweep would prune every client's record, and a retry of a request applied
    under its predecessor would run again. Nor may the time run backward."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))
    replica = Replica(config, "S2", config.read_key())
    t0 = 1_800_000_000
    replica._apply({"s": 1, "e": 1, "c": "C1", "r": 1, "op": op(1), "t": t0}, announce=False)
    mono = 5000.0
    monkeypatch.setattr(core.time, "time", lambda: t0 + 7200.5)
    assert replica._entry_time(mono) <= t0 + 1
    assert replica._entry_time(mono + 30) <= t0 + 31  # as fast as time really passes
    monkeypatch.setattr(core.time, "time", lambda: t0 + 40.2)
    assert replica._entry_time(mono + 45) == t0 + 40  # a right clock is taken as it is
    monkeypatch.setattr(core.time, "time", lambda: t0 - 100)
    assert replica._entry_time(mono + 50) == t0  # never behind the last entry


def test_a_view_whose_primary_is_not_in_the_cluster_file_is_followed_once_it_is(tmp_path,
                                                                                caplog):
    """A backup whose file was reloaded without the primary (the RM's still names it) took
    the RM's view halfway and raised ConfigError out of the message handler: no ack, no
    report, and no subscription even after the file was fixed."""
    import yaml

    async def scenario():
        path = local.write_cluster(tmp_path, 3, base=44100)
        config = load_config(path)
        replica = Replica(config, "S2", config.read_key())
        data = yaml.safe_load(path.read_text())
        data["replicas"] = [r for r in data["replicas"] if r["id"] != "S1"]
        without = tmp_path / "without-S1.yml"
        without.write_text(yaml.safe_dump(data))
        replica.config = load_config(without)
        rm = FakeConn("rm", "RM")
        replica._on_view(rm, {"view": View(2, 0, "S1", ("S1", "S2"))})
        assert replica.view.primary == "S1" and replica.upstream is None
        assert [kind for kind, _ in rm.sent] == ["view_ack"]
        assert "primary S1 is not in my cluster file" in caplog.text
        replica.reconfigured(config)  # fixed and reloaded: it follows the primary now
        assert replica.upstream is not None and replica.upstream.target == "S1"
        await replica.stop()

    asyncio.run(scenario())
