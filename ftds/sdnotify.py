"""systemd's notify protocol (READY, WATCHDOG, STOPPING, STATUS) without libsystemd.

The protocol is one datagram to the socket named by $NOTIFY_SOCKET; a dozen lines of stdlib
do it, so the hosts need no compiled binding. Outside systemd every call is a no-op.

STATUS= is what ``systemctl status`` shows; a text is sent only when it differs from the last
one sent, so a daemon may offer its status as often as it likes.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        self._sock: socket.socket | None = None
        self._status = ""  # the last STATUS= sent
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        # systemd may have gone away (e.g. during shutdown): then there is nobody to tell.
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(lines).encode(), self._address)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *self._status_lines(status))

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *self._status_lines(status))

    def status(self, text: str) -> None:
        lines = self._status_lines(text)
        if lines:
            self.notify(*lines)

    def _status_lines(self, text: str) -> list[str]:
        if not text or text == self._status or self._sock is None:
            return []
        # One line: a newline would end the assignment and start another.
        self._status = text.replace("\n", " ")
        return [f"STATUS={self._status}"]

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")


def nobody_listens() -> None:
    """A daemon's ``status_changed`` until the run loop connects it to systemd."""


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for (seconds), or None when there is none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
