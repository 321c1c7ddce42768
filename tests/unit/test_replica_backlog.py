"""A backlog of client requests is worked off in bounded steps, with the loop's turn between
them, and a replica stops reading from clients while its inbox is full."""

from __future__ import annotations

import asyncio

from ftds import local
from ftds.config import load_config
from ftds.replica.core import APPLIER_STEP_REQUESTS, INBOX_HIGH, Replica
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
