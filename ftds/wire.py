"""The wire: length-framed, HMAC-authenticated JSON messages over TCP.

Frame layout::

    +----------------+----------------------+---------------------------+
    | length: u32 BE | HMAC-SHA256 (32 B)   | UTF-8 JSON object (body)  |
    +----------------+----------------------+---------------------------+

``length`` counts the MAC and the body. The MAC covers the body bytes exactly as sent, so no
canonical re-encoding is needed, and a frame is authenticated before its JSON is parsed.

Under mutual TLS (the cluster file's ``tls`` section, ``ftds.tls``) the TLS record layer
authenticates and encrypts every byte and rules out replay, so frames carry no MAC (the key is
``b""``): ``length: u32 BE | body``. A connection without a key that is not TLS is refused. Every
body carries ``v`` (protocol version), ``t`` (type), ``from`` (sender id) and ``e`` (the sender's
epoch). Nothing on the wire is ever evaluated or unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from . import authz, supervise
from .errors import WireError
from .gate import LISTEN_BACKLOG
from .tls import Identity, LinkTls, identity_of

if TYPE_CHECKING:
    from .gate import Gate

PROTOCOL_VERSION = 1
MAC_LEN = 32
HEADER = struct.Struct(">I")
# A peer that stops reading while we keep writing is cut off past this many buffered bytes.
MAX_WRITE_BUFFER = 64 * 1024 * 1024
# What a peer on a listening port may make us buffer before its hello is accepted.
PRE_AUTH_LIMIT = 64 * 1024
# Requests one ``req`` frame may carry: a replica takes a frame in one turn of its applier, so
# this bounds how long one frame can hold it (about 30 ms at 1,024); the client splits a larger
# turn into several frames.
MAX_REQUESTS_PER_FRAME = 1024
# orjson encodes 255 levels of nesting at most, and a request's op sits 3 levels inside its
# frame (envelope, its list, the request).
MAX_OP_DEPTH = 252
# A hello deadline that fires this late means a busy loop: bytes may wait unread, so read first.
HELLO_LATE = 0.05
HELLO_LATE_CHECKS = 3
HELLO_SPREAD = 0.1
TLS_READ = 256 * 1024  # plaintext taken from TLS per read call
_TLS_BUFFER = memoryview(bytearray(TLS_READ))  # one loop per process: shared, copied out
_NO_BIO = ssl.MemoryBIO()  # a connection without server-side TLS never touches it

log = logging.getLogger("ftds.wire")

Message = dict[str, Any]


def encode_body(msg: Message) -> bytes:
    return orjson.dumps(msg)


def unencodable(value: Any, max_depth: int = MAX_OP_DEPTH) -> str | None:
    """None if ``value`` travels as the JSON it is, else why not: orjson fails on other types,
    on integers past 64 bits and past 255 levels, and writes NaN and infinities as null."""
    return _unencodable(value, 1, max_depth)


def _unencodable(v: Any, depth: int, max_depth: int) -> str | None:
    kind = type(v)  # exact types first: this runs for every request a client sends
    if kind is str or kind is bool or v is None:
        return None
    if depth > max_depth:
        return f"nested deeper than {max_depth} levels"
    if isinstance(v, str):
        return None
    if isinstance(v, int):
        return None if -(2**63) <= v < 2**64 else "integers must fit in 64 bits"
    if isinstance(v, float):
        return None if math.isfinite(v) else "numbers must be finite (JSON has no NaN)"
    if isinstance(v, dict):
        for k, item in v.items():
            if type(k) is not str:
                return "object keys must be strings"
            if (problem := _unencodable(item, depth + 1, max_depth)) is not None:
                return problem
        return None
    if isinstance(v, (list, tuple)):  # orjson writes a tuple as an array
        for item in v:
            if (problem := _unencodable(item, depth + 1, max_depth)) is not None:
                return problem
        return None
    return f"a {kind.__name__} is not JSON"


def frame(body: bytes, key: bytes) -> bytes:
    if not key:  # a TLS link: the record layer authenticates it
        return HEADER.pack(len(body)) + body
    mac = hmac.digest(key, body, "sha256")
    return HEADER.pack(len(body) + MAC_LEN) + mac + body


def encode(msg: Message, key: bytes) -> bytes:
    return frame(orjson.dumps(msg), key)


def decode_body(body: bytes | memoryview) -> Message:
    try:
        msg = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError("malformed", f"body is not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise WireError("malformed", "body is not a JSON object")
    version = msg.get("v")
    if version != PROTOCOL_VERSION:
        raise WireError("version", f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    kind = msg.get("t")
    if not isinstance(kind, str):
        raise WireError("malformed", "message has no type field 't'")
    epoch = msg.get("e", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise WireError("malformed", "epoch 'e' must be a non-negative integer")
    return msg


class FrameDecoder:
    """Turns a TCP byte stream into authenticated messages, however the reads were split.

    With ``pre_auth`` (a connection a listening port accepted) frames may announce at most
    PRE_AUTH_LIMIT bytes and come out one per ``feed`` until ``authenticated()``: the frame
    after a hello is judged by the limit that hello earned, not by the stranger's.
    """

    def __init__(self, key: bytes, max_frame: int, *, pre_auth: bool = False) -> None:
        self._key = key
        self._max_frame = max_frame
        self._limit = min(PRE_AUTH_LIMIT, max_frame) if pre_auth else max_frame
        self.pre_auth = pre_auth
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def authenticated(self) -> None:
        self.pre_auth = False
        self._limit = self._max_frame

    def feed(self, data: bytes) -> list[Message]:
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data  # the common case: parse straight from what was read
        out: list[Message] = []
        pos = 0
        end = len(buf)
        unpack_from = HEADER.unpack_from
        key = self._key
        mac_len = MAC_LEN if key else 0
        limit = self._limit
        one = self.pre_auth
        while end - pos >= 4:
            (length,) = unpack_from(buf, pos)
            if length > limit:
                if one:
                    raise WireError("oversize", f"frame of {length} bytes before hello (at "
                                                f"most {limit} until a hello is accepted)")
                raise WireError(
                    "oversize", f"frame of {length} bytes exceeds max_frame {self._max_frame}"
                )
            if length < mac_len + 2:
                raise WireError("malformed", f"frame of {length} bytes is too short")
            if end - pos - 4 < length:
                break
            body_start = pos + 4 + mac_len
            stop = pos + 4 + length
            body = bytes(buf[body_start:stop])
            if key and not hmac.compare_digest(hmac.digest(key, body, "sha256"),
                                               bytes(buf[pos + 4:body_start])):
                raise WireError("auth", "HMAC does not match the cluster key")
            out.append(decode_body(body))
            pos = stop
            if one:
                break
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(buf[pos:])
        return out


def envelope(kind: str, sender: str, epoch: int, fields: Message | None = None) -> Message:
    msg: Message = {"v": PROTOCOL_VERSION, "t": kind, "from": sender, "e": epoch}
    if fields:
        msg.update(fields)
    return msg


class Conn(asyncio.Protocol):
    """One framed connection. Outgoing frames written in one loop iteration go out in one write.

    Incoming messages go to ``on_message(conn, msg)`` when given, else to a queue read with
    ``recv()``. A frame that cannot be accepted is logged, answered with an ``error`` message
    where possible, and the connection is closed; nothing of it reaches the handler.

    A connection a listening port accepted has a ``gate`` (and an ``on_message``): it is a
    stranger until its handler gives it a ``role`` (accepts its hello), which must happen
    within the gate's hello timeout, with at most PRE_AUTH_LIMIT bytes buffered meanwhile.
    """

    def __init__(
        self,
        key: bytes,
        max_frame: int,
        sender: str,
        epoch_fn: Callable[[], int] = lambda: 0,
        on_message: Callable[[Conn, Message], None] | None = None,
        on_close: Callable[[Conn], None] | None = None,
        label: str = "peer",
        gate: Gate | None = None,
    ) -> None:
        self.key = key
        self.sender = sender
        self.epoch_fn = epoch_fn
        self.on_message = on_message
        self.on_close = on_close
        self.label = label
        self.peer_id: str | None = None
        self.role: str | None = None
        # Under TLS, who the peer's verified certificate says it is (see claim()).
        self.identity: Identity | None = None
        self.attrs: dict[str, Any] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.gate = gate
        self.peer_host = ""  # the remote end's address, and with its port
        self.peer_addr = ""
        self._peer_port = 0
        self._decoder = FrameDecoder(key, max_frame, pre_auth=gate is not None)
        self._admitted = False  # counted by the gate
        self._hello_timer: asyncio.TimerHandle | None = None
        self._hello_deadline = 0.0
        self._late_checks = 0
        # A listening port's TLS (set by listen()), run in memory once the gate counted it.
        self.server_tls: LinkTls | None = None
        self._tls: ssl.SSLObject | None = None
        self._tls_in = self._tls_out = _NO_BIO
        self._handshaking = False
        self._closed_down = False
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._queue: asyncio.Queue[Message | None] | None = (
            None if on_message is not None else asyncio.Queue()
        )
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        if peer:
            host = str(peer[0])
            self.peer_host = host
            self.peer_addr = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
            self._peer_port = peer[1] if isinstance(peer[1], int) else 0
            if self.label == "peer":
                self.label = self.peer_addr
        gate = self.gate
        if gate is not None:
            self.label = f"{self.label} from {self.peer_addr}"
            if not gate.admit(self.peer_host, self.peer_addr):
                transport.abort()  # refused at once: nothing read, nothing said
                return
            self._admitted = True
            # The deadline covers the TLS handshake too: a stranger is counted and timed
            # from its TCP connect, not from a handshake it may never finish.
            # Up to 10% later, spread by the peer's port: strangers that came in one burst (a
            # flood that reconnects each one it lost) fall due over many loop turns, not in
            # one. Not random: a simulated run must replay exactly.
            spread = ((self._peer_port * 2654435761) & 0xFFFF) / 0x10000
            self._arm_hello(gate.hello_timeout() * (1 + HELLO_SPREAD * spread))
        if self.server_tls is not None:
            # TLS in memory on the TCP connection the gate counted and timed: the handshake
            # is a stranger's like its hello, bounded by the same deadline and caps. Its
            # state is made with the first bytes: a silent stranger costs no TLS object.
            self._handshaking = True
            return
        if not self.key:
            self._take_identity(transport.get_extra_info("ssl_object"))

    def _take_identity(self, ssl_object: ssl.SSLObject | None) -> bool:
        """The peer's identity from its verified certificate; False (and closed) if none."""
        assert self.transport is not None
        if ssl_object is None:  # no MAC and no TLS: nothing would authenticate it
            log.error("%s: a link without TLS in a TLS cluster; closing", self.label)
            self.transport.abort()
            return False
        self.identity = identity_of(ssl_object.getpeercert())
        if self.identity is None:
            log.error("%s: the peer's certificate states no ftds role and name; closing",
                      self.label)
            self.transport.abort()
            return False
        self.label = f"{self.label} ({self.identity})"
        return True

    # -- TLS of an accepted connection -----------------------------------------------------
    def _tls_receive(self, data: bytes) -> bytes:
        """Feed what TCP brought to TLS; the plaintext it yields (b"" for none yet)."""
        tls = self._tls
        assert tls is not None
        self._tls_in.write(data)
        if self._handshaking:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                self._tls_send_pending()
                return b""
            except (ssl.SSLError, OSError, ValueError) as exc:
                self._tls_send_pending()  # the alert that says why
                self._stranger_gone(f"TLS handshake failed ({_short(exc)})")
                return b""
            self._handshaking = False
            self._tls_send_pending()
            if not self._take_identity(tls):
                return b""
        chunks: list[bytes] = []
        buffer = _TLS_BUFFER
        while True:
            try:
                # Into one buffer the loop shares: read(n) alone would allocate n bytes a call.
                chunk = buffer[:tls.read(TLS_READ, buffer)].tobytes()
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer closed its side of TLS
                self.close()
                break
            except ssl.SSLError as exc:
                log.error("%s: TLS: %s; closing", self.label, _short(exc))
                self.abort()
                return b""
            if not chunk:
                break
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _tls_send_pending(self) -> None:
        out = self._tls_out.read()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _tls_write(self, data: bytes) -> None:
        tls = self._tls
        assert tls is not None
        view = memoryview(data)
        while view:
            view = view[tls.write(view):]
        self._tls_send_pending()

    def _tls_goodbye(self) -> None:
        """close_notify before a close, so the peer reads an end rather than a cut."""
        if self._tls is None or self._handshaking:
            return
        with contextlib.suppress(ssl.SSLError, ValueError):
            self._tls.unwrap()
        self._tls_send_pending()

    def _stranger_gone(self, why: str) -> None:
        if self.gate is not None and not self._closed_down:
            self.gate.stranger_closed(self.peer_host, self.peer_addr, why)
        self.abort()

    def data_received(self, data: bytes) -> None:
        if self.gate is not None and not self._admitted:
            return
        if self.server_tls is not None:
            if self._tls is None:
                self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
                self._tls = self.server_tls.listener.wrap_bio(self._tls_in, self._tls_out,
                                                              server_side=True)
            data = self._tls_receive(data)
            if not data or self.is_closing():
                return
        while True:
            pre_auth = self._decoder.pre_auth
            try:
                messages = self._decoder.feed(data)
            except WireError as exc:
                self.reject(exc.code, exc.detail)
                return
            port = self.gate.port if self.gate is not None else ""
            for msg in messages:
                if self.is_closing():
                    return
                if port and not authz.may_send(port, self.role, msg["t"]):
                    self.reject("forbidden", authz.refusal(port, self.role, msg["t"]))
                    return
                if self.on_message is not None:
                    try:
                        self.on_message(self, msg)
                    except WireError as exc:
                        self.reject(exc.code, exc.detail)
                        return
                    except Exception as exc:
                        self._handler_failed(msg, exc)
                        return
                else:
                    assert self._queue is not None
                    self._queue.put_nowait(msg)
            if not pre_auth or not messages or self.is_closing():
                return
            if self.role is not None:  # its hello was accepted: no longer a stranger
                self._authenticated()
            data = b""  # frames after the hello wait in the decoder

    def _handler_failed(self, msg: Message, exc: Exception) -> None:
        """A defect, not a refusal: what the daemon did halfway is unknown (a decision made,
        its record not written), so it stops (fail-stop) rather than go on without this
        connection as if nothing happened."""
        log.critical("%s: handling %r failed: %s: %s; exiting so the fault detectors see it",
                     self.label, msg.get("t"), exc.__class__.__name__, exc, exc_info=exc)
        self.abort()
        supervise.fatal(f"message handler ({self.label})", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed_down:  # a failed handshake reports it, and TLS may report it again
            return
        self._closed_down = True
        self._out.clear()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if self._admitted and self.gate is not None:
            self._admitted = False
            self.gate.release(self.peer_host)
        if self._queue is not None:
            self._queue.put_nowait(None)
        if not self.closed.done():
            self.closed.set_result(None)
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(self)

    # -- who may say what ------------------------------------------------------------------
    def claim(self, role: str, name: str | None = None) -> None:
        """Accept a hello's ``role`` for this connection. Under TLS the peer's certificate must
        allow it (``authz.may_claim``) and, with ``name``, carry that name; else WireError."""
        ident = self.identity
        if ident is not None:
            port = self.gate.port if self.gate is not None else ""
            if port and not authz.may_claim(port, ident.role, role):
                raise WireError("forbidden", f"a {ident.role} certificate ({ident.name}) may "
                                             f"not speak as {role!r} here")
            if name is not None and name != ident.name:
                raise WireError("forbidden", f"{ident} may not speak as {role} {name!r}")
        self.role = role

    # -- strangers -------------------------------------------------------------------------
    def _authenticated(self) -> None:
        self._decoder.authenticated()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def _arm_hello(self, timeout: float) -> None:
        # Real time, not loop.time(): uvloop's clock is cached per iteration, so a deadline
        # taken late in a busy iteration would fire early.
        self._hello_deadline = time.monotonic() + timeout
        self._hello_timer = self._loop.call_later(timeout, self._hello_expired)

    def _hello_expired(self) -> None:
        self._hello_timer = None
        if self.role is not None or self.is_closing() or self.gate is None:
            return
        now = time.monotonic()
        if now < self._hello_deadline:
            self._hello_timer = self._loop.call_later(self._hello_deadline - now,
                                                      self._hello_expired)
            return
        if now - self._hello_deadline > HELLO_LATE and self._late_checks < HELLO_LATE_CHECKS:
            # The loop was busy past the deadline: a hello that came meanwhile may be unread
            # (uvloop runs timers before polling), so judge on a timer that fires on time.
            self._late_checks += 1
            self._arm_hello(HELLO_LATE)
            return
        timeout = self.gate.hello_timeout()
        if self._handshaking:  # still in its TLS handshake: nothing to say it in
            self._stranger_gone(f"no TLS handshake within {timeout:g} s "
                                f"(tunables.hello_timeout)")
            return
        self.gate.stranger_closed(self.peer_host, self.peer_addr,
                                  f"no hello within {timeout:g} s (tunables.hello_timeout)")
        self._out.clear()
        self.send("error", {"code": "timeout", "message": f"no hello within {timeout:g} s"})
        self.close()

    # -- sending ---------------------------------------------------------------------------
    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def send(self, kind: str, fields: Message | None = None) -> None:
        self.send_raw(encode_body(envelope(kind, self.sender, self.epoch_fn(), fields)))

    def send_raw(self, body: bytes) -> None:
        self.send_frame(frame(body, self.key))

    def send_frame(self, data: bytes) -> None:
        """Queue an already framed (and authenticated) message."""
        if self.is_closing():
            return
        self._out.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out or self.transport is None or self.transport.is_closing():
            self._out.clear()
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        if self.server_tls is not None:
            if self._tls is None or self._handshaking:
                return  # nothing may be said before TLS is up
            self._tls_write(data)
        else:
            self.transport.write(data)
        if self.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.error("%s: peer is not reading (%d bytes queued); closing", self.label,
                      self.transport.get_write_buffer_size())
            self.transport.abort()

    def pause_reading(self) -> None:
        """Take no more bytes from this peer until ``resume_reading``: TCP pushes back on it."""
        if not self.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.is_closing():
            self.transport.resume_reading()

    def pending_bytes(self) -> int:
        """What is queued for this peer and not yet taken by the kernel."""
        queued = sum(len(chunk) for chunk in self._out)
        if self.transport is not None and not self.transport.is_closing():
            queued += self.transport.get_write_buffer_size()
        return queued

    def flush_now(self) -> None:
        self._flush()

    @property
    def who(self) -> str:
        """The label, and under TLS who the peer's certificate says it is (if not in it)."""
        ident = self.identity
        if ident is None or f"({ident})" in self.label:
            return self.label
        return f"{self.label} ({ident})"

    def reject(self, code: str, detail: str) -> None:
        """Refuse what the peer sent: log, tell the peer why, close. State is untouched."""
        if self.gate is not None and self.role is None:
            # A stranger's garbage is logged by its gate, which sums up floods.
            self.gate.stranger_closed(self.peer_host, self.peer_addr, f"{code}: {detail}")
        else:
            log.error("%s: %s: %s; closing the connection", self.who, code, detail)
        if self.transport is not None and not self.transport.is_closing():
            self._out.clear()
            self.send("error", {"code": code, "message": detail})
            self._flush()
            self._tls_goodbye()
            self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self._tls_goodbye()
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- queue mode ------------------------------------------------------------------------
    async def recv(self, timeout: float | None = None) -> Message | None:
        """Next message, or None when the connection closed (queue mode only)."""
        assert self._queue is not None, "recv() needs a Conn without on_message"
        if timeout is None:
            return await self._queue.get()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def request(self, kind: str, fields: Message | None = None,
                      timeout: float = 5.0, expect: Iterable[str] = ()) -> Message:
        """Send one message and wait for the next one (simple request/response tools)."""
        self.send(kind, fields)
        msg = await self.recv(timeout)
        if msg is None:
            raise ConnectionError(f"{self.label}: connection closed")
        if msg.get("t") == "error":
            raise ConnectionError(f"{self.label}: {msg.get('code')}: {msg.get('message')}")
        wanted = set(expect)
        if wanted and msg["t"] not in wanted:
            raise ConnectionError(f"{self.label}: expected {sorted(wanted)}, got {msg['t']!r}")
        return msg


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def broadcast(conns: Iterable[Conn], kind: str, fields: Message, sender: str, epoch: int,
              key: bytes) -> int:
    """Send one message to many connections, encoding and authenticating it once."""
    data = frame(encode_body(envelope(kind, sender, epoch, fields)), key)
    count = 0
    for conn in conns:
        conn.send_frame(data)
        count += 1
    return count


async def listen(factory: Callable[[], Conn], host: str, port: int, *,
                 tls: LinkTls | None = None) -> asyncio.Server:
    """A listening port of a daemon. Under TLS each connection makes its handshake once its
    gate counted it, within the same hello deadline (``Conn._start_tls``)."""
    def accepted() -> Conn:
        conn = factory()
        conn.server_tls = tls  # upgraded by the connection once its gate counted it
        return conn

    loop = asyncio.get_running_loop()
    return await loop.create_server(accepted if tls is not None else factory, host, port,
                                    reuse_address=True, backlog=LISTEN_BACKLOG)


async def connect(
    host: str,
    port: int,
    key: bytes,
    max_frame: int,
    sender: str,
    *,
    timeout: float,
    epoch_fn: Callable[[], int] = lambda: 0,
    on_message: Callable[[Conn, Message], None] | None = None,
    on_close: Callable[[Conn], None] | None = None,
    label: str | None = None,
    tls: LinkTls | None = None,
    expect: str | None = None,
) -> Conn:
    """Dial a peer. Under TLS (``tls`` given, ``key`` empty) the peer's certificate must name
    ``host`` and, with ``expect`` ("role" or "role name"), be that role (and name)."""
    loop = asyncio.get_running_loop()
    if not key and tls is None:
        raise ConnectionRefusedError(f"{host}:{port}: a TLS cluster, and no TLS identity to "
                                     f"dial with")

    def factory() -> Conn:
        return Conn(key, max_frame, sender, epoch_fn, on_message, on_close,
                    label or f"{host}:{port}")

    # asyncio.timeout, not wait_for: on Python 3.11, wait_for cancelled just as the connect
    # fails raises the connect's OSError and loses the cancellation (a close never returns).
    async with asyncio.timeout(timeout):
        if tls is None:
            _, conn = await loop.create_connection(factory, host, port)
        else:
            _, conn = await loop.create_connection(factory, host, port, ssl=tls.client(),
                                                   server_hostname=host)
    if expect is not None and tls is not None:
        want = expect.split(" ", 1)
        got = conn.identity
        if got is None or got.role != want[0] or (len(want) > 1 and got.name != want[1]):
            conn.abort()
            raise ConnectionRefusedError(f"{host}:{port} is {got or 'no ftds identity'}, "
                                         f"not {expect}")
    return conn


async def stay_connected(
    dial: Callable[[], Awaitable[Conn]],
    session: Callable[[Conn], Awaitable[None]],
    *,
    first: float = 0.02,
    cap: float = 1.0,
    on_unreachable: Callable[[BaseException], None] | None = None,
) -> None:
    """Keep one outbound connection: dial, run ``session`` while it lasts, dial again.

    Every daemon's links (LFD -> GFD, GFD -> RM, RM -> replicas, a member's stream, a client's
    replicas) are this loop. Failed dials back off from ``first`` doubling to ``cap``;
    ``on_unreachable`` hears of the first failure of each outage. Runs until cancelled.
    """
    backoff = first
    outage = False
    while True:
        try:
            conn = await dial()
        except (OSError, TimeoutError) as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from exc  # cancelled as the dial failed: stop
            if not outage and on_unreachable is not None:
                on_unreachable(exc)
            outage = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, cap)
            continue
        outage = False
        backoff = first
        try:
            await session(conn)
        finally:
            conn.close()
        await asyncio.sleep(backoff)


def require(msg: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """A field of a received message, or a WireError naming it (closes that connection)."""
    value = msg.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise WireError("malformed", f"{msg.get('t')}: field {name!r} missing or wrong type")
    return value


def optional(msg: Message, name: str, kind: type | tuple[type, ...]) -> Any:
    """A field that may be missing or null (None), else of ``kind`` (WireError otherwise)."""
    return None if msg.get(name) is None else require(msg, name, kind)
