"""The RM's Prometheus endpoint: what a scrape renders, and how it behaves when things go wrong."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ftds.config import Tunables
from ftds.rm import metrics
from ftds.rm.incidents import Incident
from ftds.rm.metrics import RmMetrics


def replica(**fields: Any) -> dict[str, Any]:
    base = {"present": True, "ready": True, "role": "backup", "seq": 40,
            "checkpoint_count": 3, "heartbeat_age": 0.05, "heartbeat_interval": 0.1,
            "restarts": 0, "budget_left": 5, "budget_exhausted": False}
    return {**base, **fields}


STATUS = {
    "mode": "passive", "epoch": 4, "view_version": 2, "primary": "S2",
    "members": ["S2", "S3"], "membership": ["S2", "S3"], "membership_view": 9,
    "gfd_stable": True, "gfd_connected": True, "failover_pending": None,
    "replicas": {
        "S1": replica(present=False, ready=False, role="down", seq=None, checkpoint_count=None,
                      heartbeat_age=None, restarts=5, budget_left=0, budget_exhausted=True),
        "S2": replica(role="primary", seq=42),
        "S3": replica(),
    },
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    def get() -> str:
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    return samples(await asyncio.to_thread(get))


def test_a_scrape_renders_the_status_the_rm_holds():
    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async def snapshot() -> dict[str, Any]:
            return STATUS

        exporter = RmMetrics(snapshot)
        assert await exporter.start("127.0.0.1", free_port())
        try:
            return await scrape(exporter.port)
        finally:
            await exporter.close()

    got = asyncio.run(main())
    assert got[("ftds_rm_responsive", ())] == 1
    assert got[("ftds_epoch", ())] == 4
    assert got[("ftds_ready_members", ())] == 2
    assert got[("ftds_cluster_info", (("mode", "passive"),))] == 1
    assert got[("ftds_replica_primary", (("replica", "S2"),))] == 1
    assert got[("ftds_replica_primary", (("replica", "S3"),))] == 0
    assert got[("ftds_replica_up", (("replica", "S1"),))] == 0
    assert got[("ftds_replica_restart_budget_exhausted", (("replica", "S1"),))] == 1
    assert got[("ftds_replica_relaunches_total", (("replica", "S1"),))] == 5
    assert got[("ftds_replica_applied_seq", (("replica", "S2"),))] == 42
    # unknown values are left out, not reported as 0
    assert ("ftds_replica_applied_seq", (("replica", "S1"),)) not in got
    assert ("ftds_replica_heartbeat_age_seconds", (("replica", "S1"),)) not in got


def test_a_loop_that_cannot_answer_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(metrics, "SNAPSHOT_TIMEOUT", 0.2)

    async def main() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        async def stuck() -> dict[str, Any]:
            await asyncio.sleep(3600)
            return STATUS

        exporter = RmMetrics(stuck)
        assert await exporter.start("127.0.0.1", free_port())
        try:
            return await asyncio.wait_for(scrape(exporter.port), 5)
        finally:
            await exporter.close()

    got = asyncio.run(main())
    assert got[("ftds_rm_responsive", ())] == 0
    assert ("ftds_epoch", ()) not in got


def test_closed_incidents_fill_the_recovery_histograms():
    exporter = RmMetrics(lambda: None)  # type: ignore[arg-type,return-value]
    incident = Incident(1, "S2", "crash", was_primary=True, confirmed_dead=True,
                        detected=100.0, removed=100.005, new_primary=100.014,
                        relaunch_issued=100.02, ready=100.3)
    exporter.incident_opened(incident)
    exporter.incident_closed(incident)
    value = exporter.registry.get_sample_value
    assert value("ftds_incidents_total", {"was_primary": "true"}) == 1
    assert value("ftds_recovery_seconds_count", {"phase": "detect_to_new_primary"}) == 1
    assert abs(value("ftds_recovery_seconds_sum", {"phase": "detect_to_ready"}) - 0.3) < 1e-6
    assert abs(value("ftds_recovery_seconds_sum", {"phase": "relaunch_to_ready"}) - 0.28) < 1e-6
    assert value("ftds_recovery_seconds_bucket",
                 {"phase": "detect_to_new_primary", "le": "0.01"}) == 0
    assert value("ftds_recovery_seconds_bucket",
                 {"phase": "detect_to_new_primary", "le": "0.025"}) == 1


def test_a_port_in_use_leaves_the_rm_running_without_metrics(caplog):
    async def main() -> RmMetrics:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            exporter = RmMetrics(lambda: None)  # type: ignore[arg-type,return-value]
            assert not await exporter.start("127.0.0.1", busy.getsockname()[1])
            return exporter

    with caplog.at_level(logging.ERROR, logger="ftds.rm"):
        exporter = asyncio.run(main())
    assert exporter.port == 0  # not serving
    assert "cannot serve metrics" in caplog.text and "rm.metrics_port" in caplog.text


# -- the endpoint: a snapshot, on the RM's loop, with the exporter-toolkit's web config ------
def web(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


async def get(port: int, path: str = "/metrics", *, auth: tuple[str, str] | None = None,
              tls: ssl.SSLContext | None = None, method: str = "GET",
              extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own: (status, headers, body)."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="127.0.0.1" if tls else None)
    lines = [f"{method} {path} HTTP/1.1", "Host: rm", "Connection: close"]
    if auth:
        lines.append("Authorization: Basic " +
                     base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    writer.write(("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode())
    async with asyncio.timeout(10):
        data = await reader.read()
    writer.close()
    if not data:
        raise ConnectionError("closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


@contextlib.asynccontextmanager
async def exporter_on(web_config: str = "", snapshot: Any = None, **tunables: float
                      ) -> AsyncIterator[RmMetrics]:
    async def status() -> dict[str, Any]:
        return STATUS

    exporter = RmMetrics(snapshot or status, lambda: Tunables(**tunables))  # type: ignore[arg-type]
    assert await exporter.start("127.0.0.1", 0, web_config)
    try:
        yield exporter
    finally:
        await exporter.close()


def test_scrapes_are_answered_from_the_snapshot_with_no_thread_per_request():
    calls = []

    async def snapshot() -> dict[str, Any]:
        calls.append(time.monotonic())
        return STATUS

    async def main() -> tuple[list[int], int, int]:
        async with exporter_on(snapshot=snapshot) as exporter:
            threads = threading.active_count()
            statuses = []
            for _ in range(5):  # 5 rounds of 20 scrapes at once
                results = await asyncio.gather(*(get(exporter.port) for _ in range(20)))
                statuses += [status for status, _, _ in results]
                assert all(body == exporter.page for _, _, body in results)
            return statuses, threading.active_count() - threads, len(calls)

    statuses, new_threads, snapshots = asyncio.run(main())
    assert statuses == [200] * 100
    assert new_threads == 0
    assert snapshots <= 3  # one at start and one a second: not one per scrape


def test_a_connection_carries_several_scrapes():
    async def main() -> list[bytes]:
        async with exporter_on() as exporter:
            reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
            heads = []
            for _ in range(3):
                writer.write(b"GET /metrics HTTP/1.1\r\nHost: rm\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                heads.append(head.split(b"\r\n")[0])
            writer.close()
            return heads

    assert asyncio.run(main()) == [b"HTTP/1.1 200 OK"] * 3


def test_strangers_on_the_metrics_port_are_bounded():
    async def main() -> tuple[bytes, int, bytes]:
        async with exporter_on(hello_timeout=0.3, max_conns_per_source=3) as exporter:
            idle = [await asyncio.open_connection("127.0.0.1", exporter.port,
                                                  local_addr=("127.0.0.2", 0))
                    for _ in range(3)]
            over, over_w = await asyncio.open_connection("127.0.0.1", exporter.port,
                                                         local_addr=("127.0.0.2", 0))
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionResetError):
                    refused = await over.read()
                start = time.monotonic()
                closed = await asyncio.gather(*(r.read() for r, _ in idle))
            held = time.monotonic() - start
            status, _, _ = await get(exporter.port, extra="X-Pad: " + "x" * 9000 + "\r\n")
            for _, w in [*idle, (None, over_w)]:
                w.close()
            return refused, round(held, 1), b"".join(closed) + str(status).encode()

    refused, held, rest = asyncio.run(main())
    assert refused == b"" and held <= 1.0
    assert rest == b"431"  # nothing said to the idle ones; an oversized head is refused


def test_basic_auth_with_bcrypt_hashes_in_one_thread(tmp_path):
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    config = web(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n"
                           "http_server_config:\n  headers:\n    X-Frame-Options: deny\n")

    async def main() -> dict[str, Any]:
        async with exporter_on(config) as exporter:
            got = {
                "none": await get(exporter.port),
                "wrong": await get(exporter.port, auth=("prometheus", "guess")),
                "stranger": await get(exporter.port, auth=("mallory", "s3cret")),
                "right": await get(exporter.port, auth=("prometheus", "s3cret")),
            }
            await asyncio.gather(*(get(exporter.port, auth=("prometheus", "s3cret"))
                                   for _ in range(10)))
            got["bcrypt_threads"] = sum(t.name.startswith("metrics-bcrypt")
                                        for t in threading.enumerate())
            return got

    got = asyncio.run(main())
    for name in ("none", "wrong", "stranger"):
        status, headers, body = got[name]
        assert status == 401 and headers["www-authenticate"] == 'Basic realm="ftds"', name
        assert b"ftds_epoch" not in body
    status, headers, body = got["right"]
    assert status == 200 and b"ftds_epoch 4.0" in body and headers["x-frame-options"] == "deny"
    assert got["bcrypt_threads"] == 1


def test_tls_with_client_certificates(tmp_path):
    pki = make_pki(tmp_path)
    config = web(tmp_path, "tls_server_config:\n  cert_file: server.crt\n"
                           "  key_file: server.key\n  client_ca_file: ca.crt\n"
                           "  client_auth_type: RequireAndVerifyClientCert\n")

    def client(with_cert: bool) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        if with_cert:
            ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        return ctx

    async def main() -> tuple[int, str, str]:
        async with exporter_on(config, hello_timeout=0.3) as exporter:
            silent, silent_w = await asyncio.open_connection("127.0.0.1", exporter.port)
            async with asyncio.timeout(3):  # no TLS handshake: closed after hello_timeout
                assert await silent.read() == b""
            silent_w.close()
            status, _, _ = await get(exporter.port, tls=client(True))
            try:
                await get(exporter.port, tls=client(False))
                anonymous = "served"
            except (ssl.SSLError, ConnectionError) as exc:
                anonymous = type(exc).__name__
            try:
                await get(exporter.port)  # plain HTTP to a TLS port
                plain = "served"
            except (ConnectionError, ValueError, IndexError) as exc:
                plain = type(exc).__name__
            return status, anonymous, plain

    status, anonymous, plain = asyncio.run(main())
    assert status == 200
    assert anonymous != "served" and plain != "served"


@pytest.mark.parametrize(("text", "error"), [
    ("tls_server_config:\n  cert_file: a.crt\n",
     "tls_server_config: needs cert_file and key_file"),
    ("tls_server_config:\n  cipher_suites: [x]\n",
     "tls_server_config.cipher_suites: not supported"),
    ("basic_auth_users:\n  alice: hunter2\n", "basic_auth_users.alice: not a bcrypt hash"),
    ("rate_limit:\n  interval: soon\n", "rate_limit.interval: not a duration"),
    ("bogus: 1\n", "bogus: not supported by ftds"),
])
def test_a_web_config_error_names_the_field(tmp_path, text, error):
    with pytest.raises(metrics.WebConfigError, match=re.escape(error)):
        metrics.load_web_config(web(tmp_path, text))


def test_a_broken_web_config_serves_nothing_rather_than_less_protection(tmp_path, caplog):
    async def main() -> bool:
        exporter = RmMetrics(lambda: None)  # type: ignore[arg-type,return-value]
        started = await exporter.start("127.0.0.1", 0, web(tmp_path, "basic_auth_users: 7\n"))
        await exporter.close()
        return started

    with caplog.at_level(logging.ERROR, logger="ftds.rm"):
        assert not asyncio.run(main())
    assert "not serving metrics (rm.metrics_web_config)" in caplog.text


def test_a_reload_takes_new_users_and_the_rate_limit(tmp_path):
    def users(password: bytes) -> str:
        return f"basic_auth_users:\n  p: '{bcrypt.hashpw(password, bcrypt.gensalt(4)).decode()}'\n"

    config = web(tmp_path, users(b"old"))
    changed = users(b"new") + "rate_limit:\n  interval: 1h\n  burst: 2\n"

    async def main() -> list[int]:
        async with exporter_on(config) as exporter:
            seen = [(await get(exporter.port, auth=("p", "old")))[0]]
            web(tmp_path, changed)
            exporter.reload_web_config(config)
            for password in ("old", "new", "new"):
                seen.append((await get(exporter.port, auth=("p", password)))[0])
            return seen

    assert asyncio.run(main()) == [200, 401, 200, 429]


def make_pki(directory: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, key: Any, issuer: x509.Name, signer: Any, ca: bool,
             san: list[x509.GeneralName]) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(signer, hashes.SHA256())

    def write(name: str, key: Any, certificate: x509.Certificate) -> None:
        (directory / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        (directory / f"{name}.crt").write_bytes(certificate.public_bytes(
            serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ftds test CA")])
    write("ca", ca_key, cert("ftds test CA", ca_key, ca_name, ca_key, True, []))
    for name, san in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                      ("client", [x509.DNSName("prometheus")])):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, key, cert(name, key, ca_name, ca_key, False, san))
    return directory


@pytest.mark.parametrize("pad", [9_000, 200_000, 2_000_000])
def test_an_oversized_request_head_is_answered_431_however_much_was_sent(pad):
    # A head the server stops reading must not make the close a reset that loses the answer.
    async def main() -> int:
        async with exporter_on() as exporter:
            status, _, body = await get(exporter.port, extra="X-Pad: " + "x" * pad + "\r\n")
            assert body == b"request head too large\n"
            return status

    assert asyncio.run(main()) == 431


def _mangled_requests(seed: int, count: int) -> list[bytes]:
    """Requests a careless or hostile scraper might send: a valid one, cut, doubled, with
    odd methods, versions, headers, credentials and bytes (seeded: the same every run)."""
    import random

    rng = random.Random(seed)
    valid = b"GET /metrics HTTP/1.1\r\nHost: rm\r\n\r\n"
    parts = [b"GET", b"HEAD", b"POST", b"\x00\xff", b"/metrics", b"/", b"/?x=\xe9", b" ",
             b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9", b"\r\n", b"\n", b":", b"Content-Length: 5",
             b"Content-Length: -1", b"Transfer-Encoding: chunked", b"Connection: close",
             b"Authorization: Basic " + base64.b64encode(b"prometheus:" + b"p" * 100),
             b"Authorization: Basic !!!", b"Authorization: Basic " + base64.b64encode(b"\xff:"),
             b"Authorization: Bearer x", b"X-Long: " + b"y" * 5000]
    out = []
    for _ in range(count):
        how = rng.randrange(5)
        if how == 0:
            body = b"".join(rng.choice(parts) for _ in range(rng.randrange(1, 12)))
        elif how == 1:
            body = valid[:rng.randrange(len(valid))] + bytes(rng.randrange(256) for _ in range(8))
        elif how == 2:
            body = valid.replace(b"\r\n\r\n", b"\r\n" + rng.choice(parts) + b"\r\n\r\n")
        elif how == 3:
            body = valid * rng.randrange(2, 5)
        else:
            body = valid.replace(b"GET", rng.choice([b"POST", b"HEAD", b"DELETE", b"G\x00T"]))
            body = body.replace(b"/metrics", rng.choice([b"/metrics", b"/", b"/x", b"*"]))
        out.append(body + b"\r\n\r\n")
    return out


def test_whatever_a_scraper_sends_no_task_of_the_exporter_dies(tmp_path):
    """Each mangled request is answered or closed; the daemon's loop sees no exception (under
    ``runloop.serve`` one would stop the RM) and a proper scrape is still answered."""
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
    config = web(tmp_path, f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    errors: list[str] = []

    async def main() -> int:
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: errors.append(f"{context.get('message')}: "
                                                f"{context.get('exception')!r}"))
        async with exporter_on(config, hello_timeout=0.3) as exporter:
            for request in _mangled_requests(749, 150):
                reader, writer = await asyncio.open_connection("127.0.0.1", exporter.port)
                writer.write(request)
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                    writer.write_eof()
                    async with asyncio.timeout(5):
                        while await reader.read(65536):
                            pass
                writer.close()
            status, _, _ = await get(exporter.port, auth=("prometheus", "s3cret"))
        await asyncio.sleep(0)
        return status

    assert asyncio.run(main()) == 200
    assert errors == []
