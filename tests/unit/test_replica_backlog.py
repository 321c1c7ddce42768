"""A backlog of client requests is worked off in bounded steps, with the loop's turn between
them, and a replica stops reading from clients while its inbox is full."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from ftds import local
from ftds.config import load_config
from ftds.replica.core import (
    APPLIER_STEP_REQUESTS,
    HASH_AHEAD_KEEP,
    HASH_AHEAD_STEP,
    INBOX_HIGH,
    Replica,
)
from ftds.statemachine import state_digest
from ftds.view import View
from ftds.wire import MAX_REQUESTS_PER_FRAME


class ClientConn:
    def __init__(self) -> None:
        self.peer_id = "C1"
        self.reading = True
        self.pauses = 0
        self.sent: list[tuple[str, dict]] = []

    def send(self, kind, fields=None):
        self.sent.append((kind, fields or {}))

    def is_closing(self):
        return False

    def close(self):
        pass

    def pause_reading(self):
        self.reading = False
        self.pauses += 1

    def resume_reading(self):
        self.reading = True


def frame_of(first: int, count: int = MAX_REQUESTS_PER_FRAME) -> dict:
    return {"reqs": [{"c": f"C{first + i}", "r": 1, "op": {"op": "incr", "key": "k"}}
                     for i in range(count)]}


async def worked_off(r: Replica) -> None:
    """Turns of the loop until the applier has taken everything (each turn is one step)."""
    for _ in range(10_000):
        if not r._inbox:
            return
        await asyncio.sleep(0)
    raise AssertionError("the applier never worked off its inbox")


def replica(tmp_path) -> tuple[Replica, ClientConn]:
    config = load_config(local.write_cluster(tmp_path, 3, base=44500))
    r = Replica(config, "S2", config.read_key())  # a newborn: it records what it is sent
    conn = ClientConn()
    r.on_client_hello(conn, {"client": "C1"})
    return r, conn


def test_a_heartbeat_during_a_backlog_is_answered_before_the_backlog_is_worked_off(tmp_path):
    """The applier took its whole inbox in one turn: 100 frames of requests held the loop for
    seconds and the LFD, its heartbeats unanswered, took the replica for hung."""
    r, conn = replica(tmp_path)
    frames = 12

    async def scenario() -> list[int]:
        r.start()
        try:
            for n in range(frames):
                r.on_client_requests(conn, frame_of(n * MAX_REQUESTS_PER_FRAME))
            waiting: list[int] = []
            # What the loop does next (a heartbeat's answer, say) sees how much still waits.
            asyncio.get_running_loop().call_soon(lambda: waiting.append(len(r._inbox)))
            await worked_off(r)
            return waiting
        finally:
            await r.stop()

    waiting = asyncio.run(scenario())
    # One step's worth at most went before the loop's turn (the old applier: all 12 frames).
    assert waiting and waiting[0] >= frames - APPLIER_STEP_REQUESTS // MAX_REQUESTS_PER_FRAME
    assert len(r.recorded) == frames * MAX_REQUESTS_PER_FRAME


def test_reading_from_clients_stops_while_the_inbox_is_full(tmp_path):
    r, conn = replica(tmp_path)
    frames = INBOX_HIGH // MAX_REQUESTS_PER_FRAME + 1
    for n in range(frames):
        assert conn.reading
        r.on_client_requests(conn, frame_of(n * MAX_REQUESTS_PER_FRAME))
    assert not conn.reading and conn.pauses == 1
    late = ClientConn()  # a client that connects meanwhile is not read either
    r.on_client_hello(late, {"client": "C2"})
    assert not late.reading

    async def drain() -> None:
        r.start()
        try:
            await worked_off(r)
        finally:
            await r.stop()

    asyncio.run(drain())
    assert conn.reading and late.reading
    assert len(r.recorded) == frames * MAX_REQUESTS_PER_FRAME


def recovering_primary(tmp_path) -> tuple[Replica, ClientConn]:
    """S1 applied seq 1..5 as a backup of epoch 1; epoch 2 makes it primary over S1, S2, and
    it gathers S2 before it serves (client requests meanwhile are held)."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44600))
    r = Replica(config, "S1", config.read_key())
    for n in range(1, 6):
        r._apply({"s": n, "e": 1, "c": "earlier", "r": n, "op": {"op": "incr", "key": "k"}},
                 announce=False)
    r._on_view(MemberConn("rm", "RM"), {"view": View(2, 0, "S1", ("S1", "S2"))})
    assert r.recovering
    conn = ClientConn()
    r.on_client_hello(conn, {"client": "C1"})
    return r, conn


class MemberConn(ClientConn):
    def __init__(self, role: str, peer_id: str) -> None:
        super().__init__()
        self.role, self.peer_id = role, peer_id
        self.on_close = None

    def send_raw(self, body):
        pass

    def send_frame(self, data):
        pass


def test_requests_held_through_a_view_change_are_ordered_in_steps(tmp_path):
    """A new primary held every request that came during its view change and ordered them all
    in the turn it began to serve: 100,000 sessions held the loop for seconds, its LFD took it
    for hung, and the next primary did the same."""
    r, conn = recovering_primary(tmp_path)
    frames = 12

    async def scenario() -> tuple[int, list[int]]:
        r.start()
        try:
            for n in range(frames):
                r.on_client_requests(conn, frame_of(n * MAX_REQUESTS_PER_FRAME))
            await worked_off(r)  # every frame taken: held until S2 is gathered
            assert r.recovering and r.sm.seq == 5
            r._handle_subscribe(MemberConn("member", "S2"), {
                "id": "S2", "seq": 5, "last_epoch": 1, "trusted": True, "epoch": 2})
            assert r.serving
            ordered_in_that_turn = r.sm.seq - 5
            await worked_off(r)
            return ordered_in_that_turn, [r.sm.seq]
        finally:
            await r.stop()

    in_that_turn, (seq,) = asyncio.run(scenario())
    assert in_that_turn <= APPLIER_STEP_REQUESTS  # the old code: all 12,288 at once
    assert seq == 5 + frames * MAX_REQUESTS_PER_FRAME  # and every one of them, in the end
    order = [r.log.entry(s)["c"] for s in range(6, seq + 1)]
    assert order == [f"C{i}" for i in range(frames * MAX_REQUESTS_PER_FRAME)]  # held order


@pytest.mark.parametrize("end", ["served", "deposed"])
def test_requests_held_through_a_view_change_count_towards_a_full_inbox(tmp_path, end):
    """Held requests were not counted: a view change that waits for a member took requests
    without bound while reading from clients went on. Reading resumes however it ends."""
    r, conn = recovering_primary(tmp_path)

    async def scenario() -> None:
        r.start()
        try:
            for n in range(INBOX_HIGH // MAX_REQUESTS_PER_FRAME + 1):
                r.on_client_requests(conn, frame_of(n * MAX_REQUESTS_PER_FRAME))
                await worked_off(r)
            assert r.recovering and not conn.reading
            if end == "served":
                r._handle_subscribe(MemberConn("member", "S2"), {
                    "id": "S2", "seq": 5, "last_epoch": 1, "trusted": True, "epoch": 2})
            else:  # another replica orders epoch 3: what S1 held is for it to order
                r._on_view(MemberConn("rm", "RM"), {"view": View(3, 0, "S2", ("S1", "S2"))})
                assert not r.is_orderer
            await worked_off(r)
            assert conn.reading  # resumed once the held requests were worked off or dropped
            assert r._queued == 0
        finally:
            await r.stop()

    asyncio.run(scenario())


def test_a_replica_hashes_ahead_what_changed_so_a_checkpoint_has_little_left(tmp_path):
    """Between two ticks, each slice is one HASH_AHEAD_STEP at most; in the end no more than
    HASH_AHEAD_KEEP changed records wait for the next digest."""
    r, _conn = replica(tmp_path)
    sessions = 3 * HASH_AHEAD_KEEP
    for n in range(1, sessions + 1):
        r._apply({"s": n, "e": 1, "c": f"C{n}", "r": 1, "op": {"op": "incr", "key": "k"}},
                 announce=False)
    waiting = r.sm._sums.dirty_clients

    async def ticks() -> list[int]:
        seen = [len(waiting)]
        r.start()
        try:
            while len(waiting) > HASH_AHEAD_KEEP:
                await asyncio.sleep(0.005)  # a tick comes every 20 ms
                if len(waiting) != seen[-1]:
                    seen.append(len(waiting))
            return seen
        finally:
            await r.stop()

    seen = asyncio.run(asyncio.wait_for(ticks(), 10))
    assert seen[-1] == HASH_AHEAD_KEEP
    assert all(a - b <= HASH_AHEAD_STEP for a, b in itertools.pairwise(seen))
    assert r.sm.digest() == state_digest(r.sm.kv, r.sm.clients)


def test_a_run_of_the_log_goes_in_messages_of_one_applier_step_at_most(tmp_path):
    """A member applies an entries message in one step: a catch-up's tail of 10,000 small
    entries fit one frame, and applying it held the member's loop for 160 ms."""
    import orjson

    r, _conn = replica(tmp_path)
    entries = [{"s": n, "e": 1, "c": f"C{n}", "r": 1, "op": {"op": "incr", "key": "k"}}
               for n in range(1, 2 * APPLIER_STEP_REQUESTS + 100)]
    bodies = r._entries_bodies(entries)
    sent = [orjson.loads(b)["entries"] for b in bodies]
    assert len(bodies) == 3 and all(len(part) <= APPLIER_STEP_REQUESTS for part in sent)
    assert [e for part in sent for e in part] == entries
