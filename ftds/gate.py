"""What a stranger may cost a listening port: connections, time to say hello, bytes before it.

Every listening port of every daemon (a replica's client and control ports, the GFD's, the
RM's and its metrics endpoint) has one ``Gate``. It counts the port's connections, in all and
per source address, and refuses one past ``tunables.max_conns_per_port`` or
``max_conns_per_source`` by closing it at once. A connection it admitted must be authenticated
(its hello accepted) within ``tunables.hello_timeout`` with at most 64 KiB buffered meanwhile
(``wire.Conn`` enforces both and reports here). Refusals and closed strangers are logged with
the peer, a few lines per window and then a sum, so a flood does not flood the log.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from .config import Tunables

log = logging.getLogger("ftds.gate")

# The accept queue of every listening port: a burst of strangers' connects must not leave a
# client's or a daemon's connect waiting for a SYN retransmit (1 s) behind them.
LISTEN_BACKLOG = 1024
LOG_WINDOW = 10.0  # seconds: after LOG_BURST lines in a window, the rest is summed at its end
LOG_BURST = 3  # lines a window before the sum


class Throttle:
    """At most ``burst`` lines per ``window`` for one kind of event; one line sums the rest."""

    def __init__(self, what: str, level: int, window: float = LOG_WINDOW,
                 burst: int = LOG_BURST) -> None:
        self.what = what  # e.g. "S1 client port 127.0.0.1:7100: connections refused"
        self.level = level
        self.window = window
        self.burst = burst
        self._window_end = 0.0
        self._lines = 0
        self._suppressed: collections.Counter[str] = collections.Counter()
        self._flush: asyncio.TimerHandle | None = None
        self.total = 0  # events since start (tests and status read it)

    def event(self, source: str, line: str) -> None:
        self.total += 1
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._window_end:
            self._window_end = now + self.window
            self._lines = 0
        if self._lines < self.burst:
            self._lines += 1
            suffix = "" if self._lines < self.burst else \
                f" (more are summed up every {self.window:g} s)"
            log.log(self.level, "%s%s", line, suffix)
            return
        self._suppressed[source] += 1
        if self._flush is None:
            self._flush = loop.call_at(self._window_end, self._summarise)

    def _summarise(self) -> None:
        self._flush = None
        count = sum(self._suppressed.values())
        if not count:
            return
        now = asyncio.get_running_loop().time()
        span = min(self.window, now - (self._window_end - self.window))  # early when closing
        top = ", ".join(f"{src} x{n}" for src, n in self._suppressed.most_common(3))
        more = len(self._suppressed) - 3
        if more > 0:
            top += f" and {more} more sources"
        span_text = f"{span * 1000:.0f} ms" if span < 1 else f"{span:.0f} s"
        log.log(self.level, "%s: %d more in the last %s (%s)", self.what, count, span_text,
                top)
        self._suppressed.clear()

    def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._summarise()


class Gate:
    """The connection accounting of one listening port (see the module's docstring)."""

    def __init__(self, name: str, tunables: Callable[[], Tunables], port: str = "") -> None:
        self.name = name  # e.g. "S1 client port 127.0.0.1:7100"
        self.port = port  # its kind in ftds.authz: who may say what here ("" = not checked)
        self._tunables = tunables  # read at each use: a reload changes the limits
        self.open = 0
        self.by_source: collections.Counter[str] = collections.Counter()
        # One line when a cap bites, then sums; a few closed strangers by name, then sums.
        self.refusals = Throttle(f"{name}: connections refused", logging.WARNING, burst=1)
        self.strangers = Throttle(f"{name}: strangers closed", logging.WARNING)

    def hello_timeout(self) -> float:
        return self._tunables().hello_timeout

    def admit(self, host: str, addr: str) -> bool:
        """Count a new connection, or say it must be closed at once (and log why)."""
        tun = self._tunables()
        if self.open >= tun.max_conns_per_port:
            self.refusals.event(host, f"{self.name}: refusing {addr}: {self.open} connections "
                                      f"open, the most this port takes "
                                      f"(tunables.max_conns_per_port)")
            return False
        if self.by_source[host] >= tun.max_conns_per_source:
            self.refusals.event(host, f"{self.name}: refusing {addr}: {self.by_source[host]} "
                                      f"connections from {host} already, the most one source "
                                      f"may hold (tunables.max_conns_per_source)")
            return False
        self.open += 1
        self.by_source[host] += 1
        return True

    def release(self, host: str) -> None:
        self.open -= 1
        left = self.by_source[host] - 1
        if left > 0:
            self.by_source[host] = left
        else:
            del self.by_source[host]

    def stranger_closed(self, host: str, addr: str, why: str) -> None:
        """A connection closed before its hello was accepted."""
        self.strangers.event(host, f"{self.name}: closing {addr} before hello: {why}")

    def close(self) -> None:
        self.refusals.close()
        self.strangers.close()
