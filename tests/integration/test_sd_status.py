"""STATUS= on loopback: every daemon of an embedded cluster tells a notify socket (as systemd
would hear it) its role and view, and the texts follow a failover."""

from __future__ import annotations

import itertools
import signal
import socket
import struct
import threading
from collections import defaultdict
from pathlib import Path

from helpers import wait_until


class NotifyListener:
    """$NOTIFY_SOCKET: a datagram socket that records each sender's STATUS= texts by pid
    (SCM_CREDENTIALS, as systemd tells units apart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.status: dict[int, list[str]] = defaultdict(list)
        self.lock = threading.Lock()
        self.running = True
        # Read all the time: a full queue would block the daemons' sends.
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while self.running:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:struct.calcsize("3i")])[0]
            for line in data.decode().split("\n"):
                if line.startswith("STATUS="):
                    with self.lock:
                        self.status[pid].append(line.removeprefix("STATUS="))

    def of(self, pid: int) -> list[str]:
        with self.lock:
            return list(self.status.get(pid, []))

    def last(self, pid: int) -> str:
        texts = self.of(pid)
        return texts[-1] if texts else ""

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()


def test_status_follows_a_failover(make_managed, tmp_path):
    listener = NotifyListener(tmp_path / "notify")
    try:
        cluster = make_managed(env={"NOTIFY_SOCKET": str(listener.path)})
        start = cluster.up()
        old, epoch = start["primary"], start["epoch"]
        ready = ", ".join(start["members"])
        rm, gfd, old_pid = cluster.pid("RM"), cluster.pid("GFD"), cluster.pid(old)
        lfd = cluster.pid(f"LFD{old[1:]}")
        # awaited whole: the view change's own STATUS ("collecting from ...") comes first
        wait_until(lambda: listener.last(old_pid).startswith(
            f"primary, epoch {epoch} (view {epoch}.")
            and listener.last(old_pid).endswith(f"ready {ready}"), 10, "the primary's STATUS",
            lambda: listener.of(old_pid))
        wait_until(lambda: listener.last(rm) == f"epoch {epoch}, primary {old}, ready {ready}",
                   10, "the RM's STATUS", lambda: listener.of(rm))
        wait_until(lambda: listener.last(gfd).startswith("GFD: 3 members: S1, S2, S3"), 10,
                   "the GFD's STATUS", lambda: listener.of(gfd))
        wait_until(lambda: listener.last(lfd) == f"{old} present (primary, i_am_ready=1), "
                   "registered with the GFD", 10, "the LFD's STATUS", lambda: listener.of(lfd))

        cluster.signal(old, signal.SIGKILL)
        healed = cluster.wait(lambda: (h := cluster.healthy()) and h["epoch"] > epoch and h,
                              30, "a new primary and the lost one back")
        new = healed["primary"]
        assert new != old and healed["epoch"] == epoch + 1
        new_pid, back_pid = cluster.pid(new), cluster.pid(old)
        assert back_pid != old_pid  # relaunched by the RM

        def settled() -> bool:
            return (listener.last(new_pid).startswith(f"primary, epoch {epoch + 1} (")
                    and listener.last(back_pid).startswith(f"backup, epoch {epoch + 1} (")
                    and "i_am_ready=1" in listener.last(back_pid)
                    and listener.last(rm) == f"epoch {epoch + 1}, primary {new}, ready "
                                              f"{', '.join(healed['members'])}"
                    and listener.last(gfd).startswith("GFD: 3 members")
                    and listener.last(lfd).startswith(f"{old} present (backup, i_am_ready=1)"))

        wait_until(settled, 10, "every STATUS to follow the failover",
                   lambda: {p: listener.of(p)[-4:] for p in (new_pid, back_pid, rm, gfd, lfd)})
        # On the way: the new primary said it was one as soon as it was, the RM served the
        # view without the lost replica, the GFD and the LFD saw it go.
        assert any(t.startswith(f"backup, epoch {epoch} (") for t in listener.of(new_pid))
        assert any(t.startswith(f"epoch {epoch + 1}, primary {new}, ready ") and old not in
                   t.split("ready ")[1] for t in listener.of(rm)), listener.of(rm)
        assert any(t.startswith("GFD: 2 members") for t in listener.of(gfd))
        assert any(t.startswith(f"{old} absent") for t in listener.of(lfd))
        # Sent only when the text changed.
        for pid in (new_pid, back_pid, rm, gfd, lfd):
            texts = listener.of(pid)
            assert all(a != b for a, b in itertools.pairwise(texts)), texts
    finally:
        listener.close()
