"""Fail-stop beyond the supervised tasks: an unexpected exception in a message handler or a
loop callback stops the daemon (exit status 70), over a real loopback connection.

Such an exception is a defect whose effect on the daemon's state is unknown (a decision made
halfway, a record not written). Carrying on with that connection closed is fail-silent: the
RM that raised KeyError in a decision went on answering heartbeats and never decided again.
A WireError is not a defect: the peer sent something refused, and only its connection closes.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from ftds import runloop, supervise, wire
from ftds.errors import WireError

KEY = b"k" * 32
MAX_FRAME = 1 << 20


class ListeningDaemon:
    """A daemon with one real listening port on loopback whose handler is ``handler``."""

    name = "test"

    def __init__(self, handler: Callable[[wire.Conn, wire.Message], None]) -> None:
        self.handler = handler
        self.status_changed: Callable[[], None] = lambda: None
        self.port = 0
        self.started = asyncio.Event()
        self.stopped = False
        self.conns: list[wire.Conn] = []
        self._server: asyncio.Server | None = None

    def _new(self) -> wire.Conn:
        conn = wire.Conn(KEY, MAX_FRAME, "D", on_message=self.handler)
        self.conns.append(conn)
        return conn

    async def start(self) -> None:
        self._server = await wire.listen(self._new, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self.started.set()

    async def stop(self) -> None:
        self.stopped = True
        assert self._server is not None
        self._server.close()

    def reload(self) -> None:
        pass

    def status_line(self) -> str:
        return "serving"


async def _dial(daemon: ListeningDaemon) -> wire.Conn:
    await daemon.started.wait()
    return await wire.connect("127.0.0.1", daemon.port, KEY, MAX_FRAME, "C", timeout=2)


@pytest.fixture(params=["asyncio", "uvloop"])
def serve(request: pytest.FixtureRequest) -> Callable[..., int]:
    """serve(daemon, scenario): run the daemon under the loop daemons run on (uvloop) and
    the standard one, with ``scenario`` beside it; its exit status."""
    runner = uvloop.run if request.param == "uvloop" else asyncio.run

    def run(daemon: ListeningDaemon, scenario: Callable[[], Any]) -> int:
        async def main() -> int:
            task = asyncio.create_task(scenario())
            code = await asyncio.wait_for(runloop.serve(daemon), 10)
            await task
            return code

        return runner(main())

    return run


@pytest.fixture(autouse=True)
def _no_fatal_hook_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervise, "on_fatal", None)
    monkeypatch.setattr(supervise, "died", [])


@pytest.mark.parametrize("error", [KeyError("S1"), OSError(28, "No space left on device"),
                                   AssertionError("bad state")],
                         ids=["KeyError", "OSError", "AssertionError"])
def test_a_message_handler_that_raises_stops_the_daemon(error: Exception,
                                                        serve: Callable[..., int]) -> None:
    def handler(conn: wire.Conn, msg: wire.Message) -> None:
        if msg["t"] == "decide":
            raise error
        conn.send("ok")

    daemon = ListeningDaemon(handler)
    answers: list[str] = []

    async def scenario() -> None:
        client = await _dial(daemon)
        answers.append((await client.request("hello"))["t"])
        client.send("decide")
        await asyncio.wait_for(client.closed, 5)

    assert serve(daemon, scenario) == runloop.EXIT_TASK_DIED
    assert answers == ["ok"]
    assert daemon.stopped
    [(name, exc)] = supervise.died
    assert exc is error and "handler" in name


def test_a_callback_that_raises_stops_the_daemon(serve: Callable[..., int]) -> None:
    daemon = ListeningDaemon(lambda conn, msg: None)

    def decide() -> None:
        raise RuntimeError("a timer's decision failed")

    async def scenario() -> None:
        await daemon.started.wait()
        asyncio.get_running_loop().call_later(0.01, decide)

    assert serve(daemon, scenario) == runloop.EXIT_TASK_DIED
    assert daemon.stopped


def test_a_refused_message_closes_only_its_connection(serve: Callable[..., int]) -> None:
    def handler(conn: wire.Conn, msg: wire.Message) -> None:
        if msg["t"] == "bad":
            raise WireError("bad_field", "refused")
        conn.send("ok")

    daemon = ListeningDaemon(handler)
    answers: list[str] = []

    async def scenario() -> None:
        other = await _dial(daemon)
        hostile = await _dial(daemon)
        hostile.send("bad")
        await asyncio.wait_for(hostile.closed, 5)
        answers.append((await other.request("hello"))["t"])
        os.kill(os.getpid(), signal.SIGTERM)

    assert serve(daemon, scenario) == 0
    assert answers == ["ok"]
    assert supervise.died == []


def test_a_peer_that_resets_its_connection_does_not_stop_the_daemon(
        serve: Callable[..., int]) -> None:
    daemon = ListeningDaemon(lambda conn, msg: conn.send("ok"))
    answers: list[str] = []

    async def scenario() -> None:
        for _ in range(3):
            gone = await _dial(daemon)
            gone.send("hello")
            gone.abort()  # RST, maybe with the answer on its way
        other = await _dial(daemon)
        answers.append((await other.request("hello"))["t"])
        os.kill(os.getpid(), signal.SIGTERM)

    assert serve(daemon, scenario) == 0
    assert answers == ["ok"]
    assert supervise.died == []
