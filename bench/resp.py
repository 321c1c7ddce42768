"""A minimal RESP2 client: encoding, an incremental parser, and one asyncio connection.

Hand-written on purpose: the same small client drives Redis and the PySyncObj front end, with
one command outstanding per connection (no pipelining), so the client side costs about the
same for both and nothing of a client library's pooling or retries colours the figures.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

CRLF = b"\r\n"


class ProtocolError(Exception):
    """Bytes that are not RESP: the connection cannot be trusted any further."""


@dataclass(frozen=True)
class RespError:
    """An error reply (``-ERR ...``): a value, not an exception, so callers count it."""

    message: str

    @property
    def kind(self) -> str:
        return self.message.split(" ", 1)[0] if self.message else "ERR"


Value: TypeAlias = bytes | int | RespError | list["Value"] | None


def encode(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buf: bytes | bytearray, pos: int = 0) -> tuple[Value, int] | None:
    """One reply from ``buf[pos:]``: (value, position after it), or None if incomplete."""
    end = buf.find(CRLF, pos)
    if end < 0:
        return None
    if end == pos:
        raise ProtocolError("empty line")
    kind = buf[pos]
    line = bytes(buf[pos + 1:end])
    after = end + 2
    if kind == 0x2B:  # +simple
        return line, after
    if kind == 0x2D:  # -error
        return RespError(line.decode(errors="replace")), after
    try:
        number = int(line)
    except ValueError:
        raise ProtocolError(f"bad length or integer {line[:20]!r}") from None
    if kind == 0x3A:  # :integer
        return number, after
    if number < -1:
        raise ProtocolError(f"negative length {number}")
    if kind == 0x24:  # $bulk
        if number == -1:
            return None, after
        if len(buf) < after + number + 2:
            return None
        if buf[after + number:after + number + 2] != CRLF:
            raise ProtocolError("bulk string not followed by CRLF")
        return bytes(buf[after:after + number]), after + number + 2
    if kind == 0x2A:  # *array
        if number == -1:
            return None, after
        items: list[Value] = []
        for _ in range(number):
            got = parse(buf, after)
            if got is None:
                return None
            value, after = got
            items.append(value)
        return items, after
    raise ProtocolError(f"unknown reply type {chr(kind)!r}")


class RespConn(asyncio.Protocol):
    """One connection; replies are matched to calls in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: collections.deque[tuple[float, asyncio.Future[Value]]] = \
            collections.deque()
        self.closed = False
        self.on_push: Callable[[Value], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        pos = 0
        try:
            while pos < len(self.buf):
                got = parse(self.buf, pos)
                if got is None:
                    break
                value, pos = got
                if self.waiting:
                    fut = self.waiting.popleft()[1]
                    if not fut.done():
                        fut.set_result(value)
                elif self.on_push is not None:  # pub/sub messages come unasked
                    self.on_push(value)
        except ProtocolError as exc:
            self.abort(exc)
            return
        del self.buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(exc or ConnectionResetError("connection closed"))

    def _fail(self, exc: BaseException) -> None:
        while self.waiting:
            fut = self.waiting.popleft()[1]
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # a caller that gave up on it must not be reported at exit

    def call(self, *args: bytes | str | int) -> asyncio.Future[Value]:
        fut: asyncio.Future[Value] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None or self.transport.is_closing():
            fut.set_exception(ConnectionResetError("connection closed"))
            return fut
        self.waiting.append((time.monotonic(), fut))
        self.transport.write(encode(*args))
        return fut

    def call_many(self, *commands: tuple[bytes | str | int, ...]) -> list[asyncio.Future[Value]]:
        """Several commands in one write (one logical operation, e.g. SET then WAIT)."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Value]] = [loop.create_future() for _ in commands]
        if self.closed or self.transport is None or self.transport.is_closing():
            for fut in futs:
                fut.set_exception(ConnectionResetError("connection closed"))
                fut.exception()
            return futs
        now = time.monotonic()
        self.waiting.extend((now, fut) for fut in futs)
        self.transport.write(b"".join(encode(*c) for c in commands))
        return futs

    def overdue(self, now: float, timeout: float) -> bool:
        return bool(self.waiting) and now - self.waiting[0][0] > timeout

    def abort(self, exc: BaseException) -> None:
        """Give up on this connection: a late reply would answer the wrong call."""
        self.closed = True
        self._fail(exc)
        if self.transport is not None:
            self.transport.abort()


async def open_conn(host: str, port: int, timeout: float = 1.0) -> RespConn:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        _, conn = await loop.create_connection(RespConn, host, port)
    return conn


def text(value: Value) -> str:
    """A bulk or simple string reply as text (for INFO and SENTINEL answers)."""
    return value.decode(errors="replace") if isinstance(value, bytes) else ""


def info_fields(value: Value) -> dict[str, str]:
    """``INFO`` output as a dict (``role``, ``master_link_status``, ...)."""
    fields = {}
    for line in text(value).splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v.strip()
    return fields
