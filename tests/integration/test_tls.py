"""Mutual TLS on every link of a real local cluster, and the hostile peers it keeps out.

The embedded cluster (replicas, LFDs, GFD, RM as processes) runs with ``tls``: every daemon
has its own certificate from the cluster's CA. The tests dial its four kinds of port with
certificates of every role, from other CAs, expired, revoked, and with no TLS at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ManagedCluster, check_counters, finish, run

from ftds import authz, pki, wire
from ftds.config import TlsSettings
from ftds.tls import LinkTls, load_link_tls

TIMEOUT = 5.0

# Every message type any handler knows, and one that none does.
ALL_KINDS = sorted({kind for roles in authz.SENDS.values() for kinds in roles.values()
                    for kind in kinds} | {"format_disk", "error", "reply", "entries"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    managed = ManagedCluster(tmp_path_factory.mktemp("tls"), tls=True)
    managed.up()
    yield managed
    managed.stop_all()


def ports(cluster: ManagedCluster) -> dict[str, tuple[str, int]]:
    s1 = cluster.config.replica("S1")
    return {"replica_client": (s1.host, s1.port),
            "replica_control": (s1.host, s1.control_port),
            "gfd": (cluster.config.gfd.host, cluster.config.gfd.port),
            "rm": (cluster.config.rm.host, cluster.config.rm.port)}


def identity(cluster: ManagedCluster, where: Path, role: str, name: str,
             *, ca: Path | None = None, **issue: Any) -> LinkTls:
    """A certificate of ``role`` and ``name`` (from the cluster's CA unless ``ca``)."""
    ca_dir = ca or cluster.dir / "ca"
    out = where / f"{role}-{name}-{time.monotonic_ns()}"
    pki.issue(ca_dir, out, role=role, name=name, hosts=["127.0.0.1"], **issue)
    tls = cluster.config.tls
    assert tls is not None
    return load_link_tls(TlsSettings(ca=tls.ca, dir=str(out), crl=tls.crl), name, "test")


async def exchange(address: tuple[str, int], link: LinkTls, messages: list[tuple[str, dict]],
                   *, sender: str = "x") -> tuple[list[dict[str, Any]], bool]:
    """Send ``messages`` on a new TLS connection; what came back, and whether it was closed."""
    conn = await wire.connect(address[0], address[1], b"", 1 << 20, sender, timeout=TIMEOUT,
                              tls=link)
    try:
        got: list[dict[str, Any]] = []
        for i, (kind, fields) in enumerate(messages):
            conn.send(kind, fields)
            if i < len(messages) - 1:  # its answer first: a refusal drops what is unsent
                msg = await conn.recv(TIMEOUT)
                if msg is None:
                    return got, True
                got.append(msg)
        try:
            while (msg := await conn.recv(TIMEOUT)) is not None:
                got.append(msg)
                if msg["t"] == "error":  # what a refusal says before it closes
                    continue
        except TimeoutError:
            return got, False
        return got, True
    finally:
        conn.close()


def refused(got: list[dict[str, Any]], closed: bool, code: str = "forbidden") -> bool:
    return closed and any(m["t"] == "error" and m.get("code") == code for m in got)


HELLOS = {  # a hello each hello role would send, with the name its certificate must carry
    "client": ("hello", {"client": "C9"}),
    "member": ("hello", {"role": "member", "id": "S2", "seq": 0, "last_epoch": 0}),
    "lfd": ("hello", {"role": "lfd", "id": "LFD1", "replica": "S1", "present": True}),
    "rm": ("hello", {"role": "rm", "id": "RM"}),
    "admin": ("hello", {"role": "admin", "id": "ctl"}),
    "gfd": ("hello", {"role": "gfd"}),
}
NAMES = {"replica": "S2", "lfd": "LFD1", "gfd": "GFD", "rm": "RM", "admin": "admin",
         "client": "client"}


def test_a_tls_cluster_serves_and_loses_nothing_through_a_primary_crash(make_managed,
                                                                         tmp_path):
    cluster = make_managed(tls=True)
    cluster.up()
    assert cluster.config.tls is not None and cluster.key == b""
    primary = cluster.primary()
    history = tmp_path / "C1.jsonl"
    proc = cluster.workload("C1", history, clients=2, rate=200, duration=4)
    time.sleep(1.5)
    cluster.signal(primary, signal.SIGKILL)
    result = finish(proc)
    assert result["failed"] == 0, result
    status = cluster.wait_healthy()
    assert status["primary"] != primary
    check_counters(cluster, [history], ids=cluster.config.replica_ids)


def test_only_the_table_s_roles_may_claim_a_hello(cluster, tmp_path):
    """Every certificate role claiming every hello role it may not, on every port: refused
    and closed; the cluster carries on."""
    before = cluster.wait_healthy()
    tried = 0
    for port, address in ports(cluster).items():
        for cert_role in authz.CERT_ROLES:
            link = identity(cluster, tmp_path, cert_role, NAMES[cert_role])
            for hello_role, message in HELLOS.items():
                if authz.may_claim(port, cert_role, hello_role):
                    continue
                got, closed = run(exchange(address, link, [message]))
                tried += 1
                assert refused(got, closed) or (
                    # A hello a port does not know at all is a protocol error there.
                    closed and any(m["t"] == "error" for m in got)), \
                    f"{cert_role} certificate as {hello_role} on {port}: {got}, closed={closed}"
    assert tried > 60
    after = cluster.wait_healthy()
    assert after["epoch"] == before["epoch"], "a refused hello disturbed the cluster"


def test_a_certificate_speaks_only_for_its_own_name(cluster, tmp_path):
    addresses = ports(cluster)
    s2 = identity(cluster, tmp_path, "replica", "S2")
    as_s3 = ("hello", {"role": "member", "id": "S3", "seq": 0, "last_epoch": 0})
    assert refused(*run(exchange(addresses["replica_control"], s2, [as_s3])))
    lfd2 = identity(cluster, tmp_path, "lfd", "LFD2")
    for port in ("replica_control", "gfd"):  # LFD2 watches S2: not S1, at S1 or at the GFD
        got, closed = run(exchange(addresses[port], lfd2, [HELLOS["lfd"]]))
        assert refused(got, closed), (port, got)
    impostor = identity(cluster, tmp_path, "gfd", "GFD2")
    assert refused(*run(exchange(addresses["rm"], impostor, [HELLOS["gfd"]])))
    assert cluster.wait_healthy()


@pytest.mark.parametrize("port", authz.PORTS)
def test_every_message_a_role_may_not_send_is_refused(cluster, tmp_path, port):
    """After a hello the table accepts, every other message type is refused and closes the
    connection, before any handler sees it; and before a hello, everything but a hello."""
    address = ports(cluster)[port]
    speaker = "client" if port == "replica_client" else "admin"
    link = identity(cluster, tmp_path, speaker, NAMES[speaker])
    hello = HELLOS[speaker]
    stranger = identity(cluster, tmp_path, "client", "client")
    before = cluster.wait_healthy()
    for kind in ALL_KINDS:
        if kind != "hello":
            got, closed = run(exchange(address, stranger, [(kind, {})]))
            assert refused(got, closed), f"{kind} before a hello on {port}: {got}"
        if authz.may_send(port, speaker, kind):
            continue
        got, closed = run(exchange(address, link, [hello, (kind, {})]))
        assert refused(got, closed), f"{speaker} sending {kind} on {port}: {got}"
        assert got[0]["t"] == "welcome", got  # the hello was accepted, the message was not
    after = cluster.wait_healthy()
    assert (after["epoch"], after["primary"]) == (before["epoch"], before["primary"])
    # Each refusal is logged with the peer's identity, from its certificate.
    daemon = {"gfd": "GFD", "rm": "RM"}.get(port, "S1")
    logged = (cluster.dir / "logs" / f"{daemon}.log").read_text()
    assert f"({speaker} {NAMES[speaker]}): forbidden: role '{speaker}' may not send" in logged


def _closed_without_a_word(address: tuple[str, int], link: LinkTls) -> bool:
    """Dial with ``link``: True if the daemon refused the handshake or closed at once."""
    async def attempt() -> bool:
        try:
            got, closed = await exchange(address, link, [HELLOS["admin"]])
        except (OSError, ConnectionError, TimeoutError):
            return True  # the handshake failed
        return closed and not any(m["t"] == "welcome" for m in got)
    return run(attempt())


def test_certificates_of_another_ca_expired_or_revoked_are_refused(cluster, tmp_path):
    addresses = ports(cluster)
    other_ca = tmp_path / "other-ca"
    pki.create_ca(other_ca, "local")
    foreign = identity(cluster, tmp_path, "admin", "admin", ca=other_ca)
    expired = identity(cluster, tmp_path, "admin", "admin",
                       not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10), days=1)
    good = identity(cluster, tmp_path, "admin", "admin")
    for port, address in addresses.items():
        if port == "replica_client":
            continue  # admin does not speak there
        assert not _closed_without_a_word(address, good), f"{port} refused a good admin"
        assert _closed_without_a_word(address, foreign), f"{port} took another CA's cert"
        assert _closed_without_a_word(address, expired), f"{port} took an expired cert"
    # Revoked on the cluster's CA: the daemons read the CRL again at the next connection.
    revoked_dir = Path(good.settings.dir)
    pki.revoke(cluster.dir / "ca", revoked_dir / "admin.crt")
    fresh = identity(cluster, tmp_path, "admin", "admin")
    for port, address in addresses.items():
        if port == "replica_client":
            continue
        assert _closed_without_a_word(address, good), f"{port} took a revoked cert"
        assert not _closed_without_a_word(address, fresh), f"{port} refused a good admin"
    assert cluster.wait_healthy()


def test_a_peer_without_tls_gets_nothing(cluster):
    """The cluster key's framing in plaintext, as a peer of the old protocol would send."""
    key = b"k" * 32
    hello = wire.encode(wire.envelope("hello", "ctl", 0, {"role": "admin"}), key)
    for port, (host, number) in ports(cluster).items():
        with socket.create_connection((host, number), timeout=TIMEOUT) as sock:
            sock.sendall(hello)
            sock.settimeout(TIMEOUT)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(4096):
                    received += chunk
            # Closed; whatever came back is a TLS alert, never an ftds frame.
            assert b'"t"' not in received, (port, received[:200])
    assert cluster.wait_healthy()


async def raw_exchange(address: tuple[str, int], data: bytes, *, eof: bool) -> bytes:
    """Send raw bytes on a plain TCP connection; all that comes back until it is closed."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    if eof:
        writer.write_eof()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(TIMEOUT):
            while chunk := await reader.read(65536):
                received += chunk
    writer.close()
    return received


async def _relay(target: tuple[str, int], record: dict[str, bytearray]) -> asyncio.Server:
    """A TCP relay that keeps a copy of what each direction carried."""
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   into: bytearray) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                into += data
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        await asyncio.gather(pipe(reader, up_writer, record["sent"]),
                             pipe(up_reader, writer, record["received"]))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_a_recorded_session_replayed_is_refused(cluster, tmp_path):
    """An admin session to the RM, recorded on the wire and sent again byte for byte: the
    RM closes it without a reply (fresh keys each handshake), and nothing it asked is done."""
    address = ports(cluster)["rm"]
    admin = identity(cluster, tmp_path, "admin", "admin")
    record = {"sent": bytearray(), "received": bytearray()}

    async def original() -> list[dict[str, Any]]:
        relay = await _relay(address, record)
        port = relay.sockets[0].getsockname()[1]
        try:
            got, _ = await exchange(("127.0.0.1", port), admin,
                                    [HELLOS["admin"], ("status_req", {})])
            return got
        finally:
            relay.close()

    got = run(original())
    assert [m["t"] for m in got][:2] == ["welcome", "status"], got
    again = run(raw_exchange(address, bytes(record["sent"]), eof=False))
    # The first flight of a new handshake and an alert: less than the original's replies.
    assert len(again) < len(record["received"]), (len(again), len(record["received"]))
    assert cluster.wait_healthy()


def test_dialling_checks_who_answers(cluster, tmp_path):
    """A daemon that dials the RM and reaches a replica instead (or any other role) stops."""
    admin = identity(cluster, tmp_path, "admin", "admin")
    host, port = ports(cluster)["replica_control"]

    async def dial() -> None:
        await wire.connect(host, port, b"", 1 << 20, "ctl", timeout=TIMEOUT, tls=admin,
                           expect="rm RM")

    with pytest.raises(ConnectionRefusedError, match="is replica S1, not rm RM"):
        run(dial())


def _client_hello(link: LinkTls) -> bytes:
    """The first flight a real ftds client sends: a TLS 1.3 ClientHello."""
    import ssl

    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = link.client().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def test_a_fuzzed_handshake_closes_only_that_connection(cluster, tmp_path):
    """Random bytes, truncated and mutated ClientHellos on every port: each connection is
    closed with no ftds frame, and the cluster neither fails over nor stops serving."""
    import random

    rng = random.Random(749)
    hello = _client_hello(identity(cluster, tmp_path, "client", "client"))
    assert hello[:1] == b"\x16"  # a handshake record
    blobs = [rng.randbytes(rng.randrange(1, 2048)) for _ in range(8)]
    blobs += [hello[:rng.randrange(1, len(hello))] for _ in range(8)]
    for _ in range(24):
        mutated = bytearray(hello)
        for _ in range(rng.randrange(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        blobs.append(bytes(mutated))
    before = cluster.wait_healthy()

    async def all_ports() -> list[bytes]:
        # EOF after the bytes: a truncated hello would otherwise wait for the deadline.
        return await asyncio.gather(*(raw_exchange(address, blob, eof=True)
                                      for address in ports(cluster).values()
                                      for blob in blobs))

    for received in run(all_ports()):
        assert b'"t"' not in received  # nothing but TLS records (an alert) ever came back
    after = cluster.wait_healthy()
    assert (after["epoch"], after["primary"]) == (before["epoch"], before["primary"])
    assert run(exchange(ports(cluster)["replica_client"],
                        identity(cluster, tmp_path, "client", "client"),
                        [HELLOS["client"]]))[0][0]["t"] == "welcome"


def _replace(path: str, data: bytes) -> None:
    """Write a file whole, as a deployment does (a reader sees the old or the new one)."""
    tmp = Path(f"{path}.new")
    tmp.write_bytes(data)
    tmp.replace(path)


def test_a_ca_rotation_under_load_loses_nothing(make_managed, tmp_path):
    """A new CA while clients write: the bundle holds both CAs, every certificate is issued
    again from the new one, a backup and then the primary crash (their successors and every
    new link use the new certificates), and the old CA is dropped. No daemon restarts for it,
    no request fails, nothing acknowledged is lost, and the old CA's certificates no longer
    get in."""
    cluster = make_managed(tls=True)
    cluster.up()
    tls = cluster.config.tls
    assert tls is not None and tls.crl
    old_ca, old_crl = Path(tls.ca).read_bytes(), Path(tls.crl).read_bytes()
    before_rotation = identity(cluster, tmp_path, "admin", "admin")  # from the old CA
    history = tmp_path / "C1.jsonl"
    proc = cluster.workload("C1", history, clients=2, rate=200, duration=10)
    time.sleep(1.0)
    new = cluster.dir / "ca-new"
    pki.create_ca(new, "local")
    _replace(tls.ca, old_ca + (new / "ca.crt").read_bytes())  # 1. trust both
    _replace(tls.crl, old_crl + (new / "ca.crl").read_bytes())
    pki.issue_cluster(new, Path(tls.dir), cluster.config)  # 2. every certificate anew
    status = cluster.wait_healthy()
    backup = next(r for r in cluster.config.replica_ids if r != status["primary"])
    cluster.signal(backup, signal.SIGKILL)  # its successor dials and is dialled anew
    cluster.wait_healthy(20)
    _replace(tls.ca, (new / "ca.crt").read_bytes())  # 3. the old CA is gone
    _replace(tls.crl, (new / "ca.crl").read_bytes())
    primary = cluster.primary()
    cluster.signal(primary, signal.SIGKILL)  # new links everywhere, under the new CA only
    result = finish(proc)
    assert result["failed"] == 0, result
    after = cluster.wait_healthy(20)
    assert after["primary"] != primary
    check_counters(cluster, [history], ids=cluster.config.replica_ids)
    for address in ports(cluster).values():
        if address != ports(cluster)["replica_client"]:
            assert _closed_without_a_word(address, before_rotation), address
