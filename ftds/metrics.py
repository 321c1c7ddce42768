"""Prometheus metrics of any ftds daemon: the HTTP endpoint, its protections, and what a
replica exports.

``Exporter`` serves ``http[s]://<address>:<port>/metrics`` by a small HTTP/1.1 server on the
daemon's own event loop. Scrapes cost the daemon almost nothing and never wait on anything:
every second the exporter renders the page once, from the daemon's status snapshot, and every
scrape is answered with those bytes. No thread per request: the one worker thread checks bcrypt
passwords.

Optional TLS and basic auth follow the Prometheus exporter-toolkit's web configuration file
(see ``load_web_config``), re-read on ``systemctl reload``. The port is a listening port like
the others: its gate caps connections per port and per source, and a request (after the TLS
handshake) must arrive within ``tunables.hello_timeout`` with a head of at most 8 KiB.

The exporter knows no daemon: each adds collectors of ``Exporter.latest``, its last snapshot
(``ReplicaCollector`` for a replica, ``ftds.rm.metrics.RmMetrics`` for the RM). Every exporter
says ``ftds_build_info``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import platform
import re
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from . import __version__
from .config import Tunables
from .gate import LISTEN_BACKLOG, Gate
from .supervise import spawn

REFRESH = 1.0  # seconds between two renderings of the page, when nothing happens
SNAPSHOT_TIMEOUT = 2.0  # a snapshot that takes longer is reported as an unresponsive daemon
MAX_HEAD = 8192  # bytes of a request's line and headers
KEEPALIVE_IDLE = 60.0  # a served connection may wait this long for its next request
SEND_TIMEOUT = 10.0  # a scraper that does not read its page within this is cut off
LINGER_TIMEOUT = 2.0  # after refusing a head, how long what the peer still sends is read away
LINGER_BYTES = 4 << 20  # and how much of it, before the close may reset
MAX_PENDING_AUTH = 8  # password checks queued for the bcrypt thread; more get 429
AUTH_CACHE = 64  # successful (user, password) checks remembered, as exporter-toolkit does
# Compared against when the user is unknown, so that costs the same as a wrong password.
DUMMY_HASH = b"$2b$10$.RgadKBpUJUKfLoLy1sghOvZmQJ.9eymGG1s/X1Q5s/aD5av2PXT."
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 429: "Too Many Requests",
           431: "Request Header Fields Too Large"}

Snapshot = dict[str, Any]

log = logging.getLogger("ftds.metrics")


class CheckpointAges:
    """``ftds_replica_checkpoint_age_seconds``. Replicas count their checkpoints, they do not
    time them: the age counts from the rendering (once a second) that first saw a replica's
    ``checkpoint_count`` change, or from the exporter's start, so it is +-1 s."""

    def __init__(self, doc: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._doc = doc
        self._clock = clock
        # replica -> (its checkpoint_count, when a rendering first saw that value)
        self._seen: dict[str, tuple[int, float]] = {}

    def family(self, counts: Iterable[tuple[str, int | None]]) -> GaugeMetricFamily:
        now = self._clock()
        family = GaugeMetricFamily("ftds_replica_checkpoint_age_seconds", self._doc,
                                   labels=["replica"])
        for rid, count in counts:
            if count is None:
                continue
            seen = self._seen.get(rid)
            if seen is None or seen[0] != count:
                seen = self._seen[rid] = (count, now)
            family.add_metric([rid], now - seen[1])
        return family


class ReplicaCollector(Collector):
    """A replica's own metrics, from its ``status`` snapshot (None: it did not come in time).

    The request counters are the ones the replica keeps anyway (``Stats``, the state
    machine's executed count): exporting them adds nothing to a request's path. Names and
    the ``replica`` label match the RM's per-replica families, so a dashboard takes either."""

    def __init__(self, replica_id: str, snapshot: Callable[[], Snapshot | None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._id = replica_id
        self._snapshot = snapshot
        self._checkpoints = CheckpointAges(
            "Time since this replica's checkpoint_count was seen to change (or since it "
            "started); it grows while no writes come (no checkpoint is taken then).", clock)

    def collect(self) -> Iterator[Metric]:
        status = self._snapshot()
        yield self._gauge("ftds_replica_responsive",
                          "1 when the replica's last status snapshot was taken in time.",
                          0 if status is None else 1)
        if status is None:
            return
        yield from replica_metrics(self._id, status)
        yield self._checkpoints.family([(self._id, status.get("checkpoint_count"))])

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["replica"])
        family.add_metric([self._id], value)
        return family


REPLICA_COUNTERS = (
    ("ftds_replica_requests_ordered", "Client requests this replica ordered (as primary or "
     "sequencer).", "ordered"),
    ("ftds_replica_requests_executed", "Operations this replica applied, in any role.",
     "executed"),
    ("ftds_replica_replies", "Replies this replica sent to clients.", "replies"),
    ("ftds_replica_duplicates_answered", "Retries answered from the reply cache (not run "
     "again).", "duplicates_answered"),
    ("ftds_replica_checkpoints_sent", "Checkpoints this replica sent.", "checkpoints_sent"),
    ("ftds_replica_checkpoints_received", "Checkpoints this replica installed.",
     "checkpoints_received"),
    ("ftds_replica_divergences", "Checkpoints whose digest differed from this replica's "
     "state.", "divergences"),
    ("ftds_replica_rejected_frames", "Frames refused as malformed or out of place.",
     "rejected_frames"),
)


def replica_metrics(rid: str, s: Snapshot) -> Iterator[Metric]:
    """The metric families of one replica's ``status`` (its JSON form)."""
    stats = s.get("stats") or {}
    for name, doc, key in REPLICA_COUNTERS:
        if key in stats:
            family = CounterMetricFamily(name, doc, labels=["replica"])
            family.add_metric([rid], stats[key])
            yield family
    role = GaugeMetricFamily("ftds_replica_role", "1 for the replica's role.",
                             labels=["replica", "role"])
    role.add_metric([rid, s["role"]], 1)
    yield role
    for name, doc, key in (
            ("ftds_replica_ready", "The replica's i_am_ready.", "i_am_ready"),
            ("ftds_replica_epoch", "The epoch of the view the replica holds.", "epoch"),
            ("ftds_replica_applied_seq", "The highest sequence number the replica applied.",
             "seq"),
            ("ftds_replica_committed_seq", "The highest sequence number known committed.",
             "commit"),
            ("ftds_replica_checkpoints", "The replica's checkpoint_count.", "checkpoint_count"),
            ("ftds_replica_client_connections", "Client connections open to the replica.",
             "client_links"),
            ("ftds_replica_lease_left_seconds", "The primary's lease left (0 on a backup).",
             "lease_left")):
        if s.get(key) is not None:
            family = GaugeMetricFamily(name, doc, labels=["replica"])
            family.add_metric([rid], s[key])
            yield family
    latency = s.get("latency")
    if latency:
        yield request_durations(rid, latency)


def request_durations(rid: str, latency: dict[str, Any]) -> Metric:
    """The replica's request latency histogram from its status's ``latency``: upper bounds
    ``le`` (seconds), ``counts`` per bucket (one more than ``le``, the last over them all) and
    ``sum`` (seconds)."""
    family = HistogramMetricFamily(
        "ftds_replica_request_duration_seconds",
        "Client requests from their receipt by this replica to their reply queued (requests "
        "ordered after a view change not counted).", labels=["replica"])
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip([*latency["le"], "+Inf"], latency["counts"], strict=True):
        cumulative += count
        buckets.append((bound if isinstance(bound, str) else floatToGoString(bound), cumulative))
    family.add_metric([rid], buckets, sum_value=latency["sum"])
    return family


def build_info() -> Metric:
    """Which ftds and which Python serve these metrics (the Prometheus ``*_build_info``)."""
    info = GaugeMetricFamily("ftds_build_info", "The running ftds build (always 1).",
                             labels=["version", "python_version"])
    info.add_metric([__version__, platform.python_version()], 1)
    return info


class WebConfigError(ValueError):
    """A web configuration file that cannot be used; the message names the file and field."""


# exporter-toolkit's client_auth_type values that Python's ssl module can honour.
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
TLS_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
                "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
HEADERS = ("Content-Security-Policy", "X-Frame-Options", "X-Content-Type-Options",
           "X-XSS-Protection", "Strict-Transport-Security")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class WebConfig:
    """What ``rm.metrics_web_config`` asks for; the default is plain HTTP, no auth."""

    path: str = ""
    tls: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    headers: tuple[tuple[str, str], ...] = ()
    rate_interval: float = 0.0  # seconds per request (token bucket); 0 = no limit
    rate_burst: int = 0


def _duration(value: Any, where: str) -> float:
    text = str(value).strip()
    if text == "0":
        return 0.0
    parts = DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise WebConfigError(f"{where}: not a duration like 1s or 250ms: {text!r}")
    return sum(float(n) * UNITS[u] for n, u in parts)


def load_web_config(path: str) -> WebConfig:
    """Read an exporter-toolkit web configuration file (its documented fields ftds supports).

    Supported: ``tls_server_config`` (cert_file, key_file, client_ca_file or client_ca,
    client_auth_type NoClientCert / VerifyClientCertIfGiven / RequireAndVerifyClientCert,
    min_version, max_version), ``http_server_config`` (headers; http2 is accepted and
    ignored: this server speaks HTTP/1.1), ``basic_auth_users`` (bcrypt hashes) and
    ``rate_limit`` (interval, burst). Any other field is an error naming it, so nothing the
    file asks for is silently left out. Relative paths are taken from the file's directory.
    """
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from exc

    def mapping(value: Any, where: str, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise WebConfigError(f"{path}: {where}: must be a mapping")
        for key in value:
            if key not in known:
                raise WebConfigError(f"{path}: {where}.{key}: not supported by ftds "
                                     f"(supported: {', '.join(known)})")
        return value

    def file(value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise WebConfigError(f"{path}: {where}: must be a file name")
        return str(source.parent / value)

    root = mapping(data, "(top level)", ("tls_server_config", "http_server_config",
                                         "basic_auth_users", "rate_limit"))
    tls = None
    tls_raw = mapping(root.get("tls_server_config"), "tls_server_config",
                      ("cert_file", "key_file", "client_ca_file", "client_ca",
                       "client_auth_type", "min_version", "max_version"))
    if tls_raw:
        where = "tls_server_config"
        if "cert_file" not in tls_raw or "key_file" not in tls_raw:
            raise WebConfigError(f"{path}: {where}: needs cert_file and key_file")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(file(tls_raw["cert_file"], f"{where}.cert_file"),
                                file(tls_raw["key_file"], f"{where}.key_file"))
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{path}: {where}: cannot load cert_file/key_file: "
                                 f"{exc}") from exc
        auth = tls_raw.get("client_auth_type", "NoClientCert")
        if auth not in CLIENT_AUTH:
            raise WebConfigError(f"{path}: {where}.client_auth_type: {auth!r} is not supported"
                                 f" by ftds (one of {', '.join(CLIENT_AUTH)})")
        tls.verify_mode = CLIENT_AUTH[auth]
        if auth != "NoClientCert":
            try:
                if "client_ca_file" in tls_raw:
                    tls.load_verify_locations(
                        cafile=file(tls_raw["client_ca_file"], f"{where}.client_ca_file"))
                elif "client_ca" in tls_raw:
                    tls.load_verify_locations(cadata=str(tls_raw["client_ca"]))
                else:
                    raise WebConfigError(f"{path}: {where}: client_auth_type {auth} needs "
                                         "client_ca_file")
            except (OSError, ssl.SSLError) as exc:
                raise WebConfigError(f"{path}: {where}: cannot load the client CA: "
                                     f"{exc}") from exc
        for name, attr, default in (("min_version", "minimum_version", "TLS12"),
                                    ("max_version", "maximum_version", "TLS13")):
            version = tls_raw.get(name, default)
            if version not in TLS_VERSIONS:
                raise WebConfigError(f"{path}: {where}.{name}: one of "
                                     f"{', '.join(TLS_VERSIONS)} (got {version!r})")
            setattr(tls, attr, TLS_VERSIONS[version])
    http = mapping(root.get("http_server_config"), "http_server_config", ("http2", "headers"))
    headers_raw = mapping(http.get("headers"), "http_server_config.headers", HEADERS)
    headers = []
    for name, value in headers_raw.items():
        if not isinstance(value, str) or "\r" in value or "\n" in value:
            raise WebConfigError(f"{path}: http_server_config.headers.{name}: must be one "
                                 "line of text")
        if value:
            headers.append((name, value))
    users: dict[str, bytes] = {}
    users_raw = root.get("basic_auth_users") or {}
    if not isinstance(users_raw, dict):
        raise WebConfigError(f"{path}: basic_auth_users: must be a mapping of user: bcrypt hash")
    for user, hashed in users_raw.items():
        if not isinstance(hashed, str) or not re.fullmatch(r"\$2[abxy]?\$\d\d\$[./A-Za-z0-9]{53}",
                                                           hashed):
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a bcrypt hash "
                                 "(make one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)")
        users[str(user)] = hashed.encode()
    rate = mapping(root.get("rate_limit"), "rate_limit", ("interval", "burst"))
    interval = _duration(rate.get("interval", 0), "rate_limit.interval") if rate else 0.0
    burst = rate.get("burst", 1) if rate else 0
    if isinstance(burst, bool) or not isinstance(burst, int) or (interval and burst < 1):
        raise WebConfigError(f"{path}: rate_limit.burst: must be a positive integer")
    return WebConfig(path, tls, users, tuple(headers), interval, burst)


def _check_password(password: bytes, hashed: bytes | None) -> bool:
    import bcrypt  # the bcrypt thread's only work

    try:
        ok = bcrypt.checkpw(password, hashed or DUMMY_HASH)
    except ValueError:
        return False
    return ok and hashed is not None


class BuildInfoCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield build_info()


class Exporter:
    """A daemon's registry (its process's metrics and ``ftds_build_info``; the daemon adds
    collectors of ``latest``, its last snapshot) and the HTTP endpoint that serves its latest
    rendering. ``who`` names the daemon in log lines, ``setting`` its configuration keys."""

    late_note = ""  # what a late snapshot's warning adds: where the metrics say so

    def __init__(self, who: str, snapshot: Callable[[], Awaitable[Snapshot]],
                 tunables: Callable[[], Tunables] = Tunables, setting: str = "metrics",
                 logger: logging.Logger = log,
                 snapshot_timeout: float = SNAPSHOT_TIMEOUT) -> None:
        self.who = who
        self.setting = setting
        self.log = logger  # the daemon's own: its lines go where its others go
        self.snapshot_timeout = snapshot_timeout
        self._snapshot = snapshot
        self._tunables = tunables
        self._status: Snapshot | None = None
        self._responsive = True
        self.page = b""
        self.page_at = 0.0  # monotonic time of the last rendering
        self.web = WebConfig()
        self.gate: Gate | None = None
        self.port = 0
        self._listener: socket.socket | None = None
        self._accepter: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._bcrypt: ThreadPoolExecutor | None = None
        self._pending_auth = 0
        self._auth_ok: OrderedDict[bytes, None] = OrderedDict()
        # The rate limit's bucket starts full: on its first use, not from the clock's zero
        # (a monotonic clock counts from boot, so an hour's interval on a host up for less
        # than an hour would refuse the first scrapes).
        self._tokens = math.inf
        self._tokens_at = 0.0
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(BuildInfoCollector())

    @property
    def latest(self) -> Snapshot | None:
        """The snapshot of the last rendering (None: it did not come in time)."""
        return self._status

    # -- the snapshot ----------------------------------------------------------------------
    async def refresh(self) -> None:
        """Take the daemon's snapshot and render the page scrapes are answered with."""
        try:
            async with asyncio.timeout(self.snapshot_timeout):
                status: Snapshot | None = await self._snapshot()
        except Exception as exc:  # a stuck or failing snapshot is reported, never raised
            status = None
            if self._responsive:
                self.log.warning("%s: no status snapshot for metrics within %gs (%s)%s",
                                 self.who, self.snapshot_timeout, exc.__class__.__name__,
                                 self.late_note)
        self._responsive = status is not None
        self._status = status
        self.page = generate_latest(self.registry)
        self.page_at = time.monotonic()

    def changed(self) -> None:
        """The daemon decided something (a view, a membership, a relaunch): render again now,
        not at the next tick, so a scrape after an event shows it."""
        self._changed.set()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH):
                    await self._changed.wait()
            self._changed.clear()  # changes during the refresh trigger the next one
            await self.refresh()

    # -- the endpoint ----------------------------------------------------------------------
    async def start(self, host: str, port: int, web_config: str = "") -> bool:
        """Serve on ``host:port`` (from the running loop). Metrics are not worth a daemon that
        cannot start: a port that cannot be bound or a broken web configuration is logged,
        and the daemon runs without them (never without the TLS or auth it asked for)."""
        try:
            self.web = load_web_config(web_config) if web_config else WebConfig()
        except WebConfigError as exc:
            self.log.error("%s: not serving metrics (%s_web_config): %s", self.who,
                           self.setting, exc)
            return False
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            listener = socket.create_server((host, port), family=family,
                                            backlog=LISTEN_BACKLOG)
        except OSError as exc:
            self.log.error("%s: cannot serve metrics on %s:%d (%s_port): %s; running without "
                           "them", self.who, host, port, self.setting, exc.strerror or exc)
            return False
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self.gate = Gate(f"{self.who} metrics port {host}:{self.port}", self._tunables)
        await self.refresh()
        self._accepter = spawn(self._accept(listener, self.gate), "metrics-accept")
        self._refresher = spawn(self._refresh_loop(), "metrics")
        auth = f", basic auth for {len(self.web.users)} user(s)" if self.web.users else ""
        self.log.info("%s: metrics on %s://%s:%d/metrics%s", self.who,
                 "https" if self.web.tls else "http", host, self.port, auth)
        return True

    def reload_web_config(self, path: str) -> None:
        """Re-read the web configuration (``systemctl reload``): new certificates, users."""
        if self._listener is None:
            return
        try:
            web = load_web_config(path) if path else WebConfig()
        except WebConfigError as exc:
            self.log.error("%s: metrics web configuration refused, keeping the running one: "
                           "%s", self.who, exc)
            return
        if (web.tls is None) != (self.web.tls is None):
            self.log.warning("%s: metrics %s TLS from the next connection on", self.who,
                             "switch to" if web.tls else "stop using")
        self.web = web
        self._auth_ok.clear()

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, self._accepter) if t is not None]
        tasks += self._handlers
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._refresher = self._accepter = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.gate is not None:
            self.gate.close()
        if self._bcrypt is not None:
            self._bcrypt.shutdown(wait=False, cancel_futures=True)
            self._bcrypt = None

    async def _accept(self, listener: socket.socket, gate: Gate) -> None:
        """Accept here, not in a server of the loop's: the gate judges each connection by its
        address before any TLS handshake is spent on it."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: not a reason to die
                self.log.error("%s: metrics port cannot accept: %s", self.who, exc)
                await asyncio.sleep(1.0)
                continue
            host = str(peer[0])
            addr = f"{host}:{peer[1]}"
            if not gate.admit(host, addr):
                conn.close()
                continue
            task = loop.create_task(self._connection(conn, gate, host, addr))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _connection(self, conn: socket.socket, gate: Gate, host: str, addr: str) -> None:
        loop = asyncio.get_running_loop()
        web = self.web  # the configuration in force when it connected
        hello = gate.hello_timeout()
        deadline = time.monotonic() + hello
        reader = asyncio.StreamReader(limit=MAX_HEAD)
        writer: asyncio.StreamWriter | None = None
        clean = False
        try:
            try:
                transport, protocol = await loop.connect_accepted_socket(
                    lambda: asyncio.StreamReaderProtocol(reader), conn, ssl=web.tls,
                    ssl_handshake_timeout=hello if web.tls else None)
            except (OSError, ssl.SSLError) as exc:  # TimeoutError is an OSError
                why = "TLS handshake not done" if isinstance(exc, TimeoutError) else \
                    f"TLS handshake failed: {getattr(exc, 'reason', None) or exc}"
                gate.stranger_closed(host, addr, f"{why} (tunables.hello_timeout {hello:g} s)"
                                     if isinstance(exc, TimeoutError) else why)
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            await self._serve(reader, writer, web, gate, host, addr, deadline)
            clean = True
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the peer went away, or did not read its answer (TimeoutError is an OSError)
        finally:
            gate.release(host)
            if writer is None:
                conn.close()  # cancelled (the RM stops) before the loop took the socket
            elif clean:
                writer.close()  # what was sent is flushed already (drained)
            else:
                writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     web: WebConfig, gate: Gate, host: str, addr: str,
                     deadline: float) -> None:
        # The first request head by the hello deadline, in real time: uvloop's clock is cached
        # per iteration, so its timers may fire a little early.
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        head = await reader.readuntil(b"\r\n\r\n")
                    break
                except TimeoutError:
                    if time.monotonic() >= deadline:
                        raise
        except TimeoutError:
            gate.stranger_closed(host, addr, f"no request within {gate.hello_timeout():g} s "
                                             "(tunables.hello_timeout)")
            return
        except asyncio.LimitOverrunError:
            gate.stranger_closed(host, addr, f"request head over {MAX_HEAD} bytes")
            await self._send(writer, 431, b"request head too large\n", web, keep=False)
            await self._linger(reader, writer)
            return
        while True:
            if not await self._answer(reader, writer, head, web, host):
                return
            try:
                async with asyncio.timeout(KEEPALIVE_IDLE):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.LimitOverrunError):
                return

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes, web: WebConfig, host: str) -> bool:
        """Answer one request; whether the connection may carry another."""
        lines = head.decode("latin-1").split("\r\n")
        request = lines[0].split(" ")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if line and not sep:
                request = []
                break
            headers[name.strip().lower()] = value.strip()
        if len(request) != 3 or request[2] not in ("HTTP/1.0", "HTTP/1.1") or \
                headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            await self._send(writer, 400, b"bad request\n", web, keep=False)
            return False
        method, target, version = request
        keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if not self._take_token(web):
            await self._send(writer, 429, b"rate limited (rate_limit)\n", web, keep=keep)
            return keep
        if web.users:
            ok = await self._authorized(web, headers.get("authorization", ""))
            if ok is None:
                await self._send(writer, 429, b"too many password checks at once\n", web,
                                 keep=False)
                return False
            if not ok:
                await self._send(writer, 401, b"Unauthorized\n", web, keep=keep,
                                 extra=(("WWW-Authenticate", 'Basic realm="ftds"'),))
                return keep
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"GET or HEAD\n", web, keep=keep,
                             extra=(("Allow", "GET, HEAD"),))
        elif path == "/metrics":
            await self._send(writer, 200, self.page, web, keep=keep, head=method == "HEAD",
                             content_type=CONTENT_TYPE_LATEST)
        elif path == "/":
            await self._send(writer, 200, f"ftds {self.who}: metrics at /metrics\n".encode(),
                             web, keep=keep,
                             head=method == "HEAD")
        else:
            await self._send(writer, 404, b"not found: try /metrics\n", web, keep=keep)
        return keep

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read away the rest of a refused request, so the close is not a reset that
        discards the answer before the peer reads it (a lingering close)."""
        if writer.can_write_eof():
            writer.write_eof()  # TLS cannot half-close; its peer reads to Content-Length
        left = LINGER_BYTES
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINGER_TIMEOUT):
                while left > 0 and (data := await reader.read(min(left, 1 << 16))):
                    left -= len(data)

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                    web: WebConfig, *, keep: bool, head: bool = False,
                    content_type: str = "text/plain; charset=utf-8",
                    extra: tuple[tuple[str, str], ...] = ()) -> None:
        lines = [f"HTTP/1.1 {status} {REASONS[status]}", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body)}",
                 f"Connection: {'keep-alive' if keep else 'close'}",
                 *(f"{name}: {value}" for name, value in (*web.headers, *extra))]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        async with asyncio.timeout(SEND_TIMEOUT):
            await writer.drain()

    def _take_token(self, web: WebConfig) -> bool:
        if not web.rate_interval:
            return True
        now = time.monotonic()
        self._tokens = min(float(web.rate_burst),
                           self._tokens + (now - self._tokens_at) / web.rate_interval)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    async def _authorized(self, web: WebConfig, header: str) -> bool | None:
        """Whether the request's basic credentials match; None when too many checks wait."""
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True) \
                .decode().partition(":")
        except ValueError:
            return False
        if not sep:
            return False
        hashed = web.users.get(user)
        # The hash is in the key, so a changed password is checked again.
        key = hashlib.sha256(b"\0".join((user.encode(), password.encode(),
                                         hashed or b""))).digest()
        if key in self._auth_ok:
            self._auth_ok.move_to_end(key)
            return True
        if self._pending_auth >= MAX_PENDING_AUTH:
            return None
        if self._bcrypt is None:
            self._bcrypt = ThreadPoolExecutor(1, thread_name_prefix="metrics-bcrypt")
        self._pending_auth += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(
                self._bcrypt, _check_password, password.encode(), hashed)
        finally:
            self._pending_auth -= 1
        if ok:
            self._auth_ok[key] = None
            while len(self._auth_ok) > AUTH_CACHE:
                self._auth_ok.popitem(last=False)
        return ok

