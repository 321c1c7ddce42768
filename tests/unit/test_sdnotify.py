"""STATUS= for systemd: sent when the text changes (never twice the same), by every daemon,
through a real unix datagram socket as $NOTIFY_SOCKET."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from ftds import local, runloop
from ftds.config import load_config
from ftds.replica.core import Replica
from ftds.sdnotify import Notifier
from ftds.view import View


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify"
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def test_status_is_sent_only_when_its_text_changes(notify_socket):
    n = Notifier()
    n.status("backup, epoch 1")
    n.status("backup, epoch 1")
    n.status("primary, epoch 2")
    n.ready("primary, epoch 2")  # READY=1 always goes; the status it repeats does not
    n.status("primary, epoch 2")
    assert received(notify_socket) == ["STATUS=backup, epoch 1", "STATUS=primary, epoch 2",
                                       "READY=1"]


def test_abstract_notify_socket(monkeypatch):
    name = f"ftds-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        Notifier().status("GFD: 0 members")
        assert sock.recv(4096) == b"STATUS=GFD: 0 members"
    finally:
        sock.close()


class FakeDaemon:
    name = "fake"

    def __init__(self) -> None:
        self.text = "starting"
        self.status_changed: Callable[[], None] = lambda: None
        self.started = asyncio.Event()

    async def start(self) -> None:
        self.started.set()

    async def stop(self) -> None:
        pass

    def reload(self) -> None:
        pass

    def status_line(self) -> str:
        return self.text


def test_serve_sends_each_new_status_once(notify_socket, monkeypatch):
    monkeypatch.setattr(runloop, "STATUS_REFRESH", 0.05)
    daemon = FakeDaemon()

    async def scenario() -> None:
        await daemon.started.wait()
        await asyncio.sleep(0.01)
        daemon.text = "primary, epoch 2"
        daemon.status_changed()  # a role change: at once
        daemon.status_changed()
        await asyncio.sleep(0.01)
        daemon.text = "primary, epoch 2, seq 7"  # nobody says so: the next refresh does
        await asyncio.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    async def main() -> int:
        task = asyncio.create_task(scenario())
        code = await runloop.serve(daemon)
        await task
        return code

    assert asyncio.run(main()) == 0
    assert received(notify_socket) == [
        "READY=1\nSTATUS=starting", "STATUS=primary, epoch 2", "STATUS=primary, epoch 2, seq 7",
        "STOPPING=1\nSTATUS=stopping"]


def test_serve_without_systemd_leaves_the_daemon_alone(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = FakeDaemon()
    hook = daemon.status_changed

    async def main() -> int:
        async def stop() -> None:
            await daemon.started.wait()
            os.kill(os.getpid(), signal.SIGTERM)
        task = asyncio.create_task(stop())
        code = await runloop.serve(daemon)
        await task
        return code

    assert asyncio.run(main()) == 0
    assert daemon.status_changed is hook


def test_replica_status_line_follows_views_and_says_so(tmp_path):
    config = load_config(local.write_cluster(tmp_path, 3, base=44100))

    async def scenario() -> list[str]:
        replica = Replica(config, "S1", config.read_key())
        calls: list[str] = []
        replica.status_changed = lambda: calls.append(replica.status_line())
        assert replica.status_line() == "backup, no view yet, i_am_ready=0, seq 0"
        replica._on_view(_rm(), {"view": View(1, 0, "S2", ("S2", "S3"))})
        assert replica.status_line() == \
            "backup, epoch 1 (view 1.0), i_am_ready=0 (not in the ready set), seq 0"
        replica._on_view(_rm(), {"view": View(1, 1, "S2", ("S1", "S2", "S3"))})
        assert replica.status_line() == \
            "backup, epoch 1 (view 1.1), i_am_ready=0 (catching up with S2), seq 0"
        replica._on_view(_rm(), {"view": View(2, 0, "S1", ("S1",))})
        # Alone in its view: no history to collect, it serves at once.
        assert replica.status_line() == \
            "primary, epoch 2 (view 2.0), i_am_ready=1, seq 0, ready S1"
        replica._on_view(_rm(), {"view": View(3, 0, "S1", ("S1", "S2"))})
        assert replica.status_line() == \
            "primary, epoch 3 (view 3.0), view change: collecting from S2, i_am_ready=0, seq 0"
        await replica.stop()
        return calls

    calls = asyncio.run(scenario())
    # Each change was told at once, not left to the next refresh (told twice is no harm:
    # the notifier sends a text only when it differs from the last).
    assert [c for i, c in enumerate(calls) if i == 0 or calls[i - 1] != c] == [
        "backup, epoch 1 (view 1.0), i_am_ready=0 (not in the ready set), seq 0",
        "backup, epoch 1 (view 1.1), i_am_ready=0 (catching up with S2), seq 0",
        "primary, epoch 2 (view 2.0), i_am_ready=1, seq 0, ready S1",
        "primary, epoch 3 (view 3.0), view change: collecting from S2, i_am_ready=0, seq 0"]


def _rm():
    class Conn:
        role = "rm"
        peer_id = "RM"

        def send(self, *args: object) -> None:
            pass

        def is_closing(self) -> bool:
            return False

    return Conn()
