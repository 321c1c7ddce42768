"""ftds.pki and ``ftds pki``: the CA, the daemons' certificates, revocation, and that Python's
own ssl module accepts (or refuses) them in a real mutual TLS 1.3 handshake on loopback."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ftds import pki
from ftds.cli import build_parser, main
from ftds.config import load_config


# ========================================================================== helpers ====
@pytest.fixture
def ca(tmp_path: Path) -> Path:
    ca_dir = tmp_path / "ca"
    pki.create_ca(ca_dir, "lab")
    return ca_dir


def leaf(ca_dir: Path, out: Path, name: str, role: str = "replica",
         hosts: tuple[str, ...] = ("127.0.0.1",), **kwargs: Any) -> tuple[str, str]:
    crt, key = pki.issue(ca_dir, out, role=role, name=name, hosts=hosts, **kwargs)
    return str(crt), str(key)


def context(side: int, cas: Sequence[Path], pair: tuple[str, str],
            crls: Sequence[Path] = ()) -> ssl.SSLContext:
    """As the links use them: TLS 1.3 only, a certificate required of the peer."""
    ctx = ssl.SSLContext(side)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    for path in [*cas, *crls]:
        ctx.load_verify_locations(cafile=str(path))
    if crls:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.load_cert_chain(*pair)
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext,
              hostname: str = "127.0.0.1") -> tuple[Any, Any]:
    """One connection on loopback: (what the server got, what the client got), each the peer's
    getpeercert() or the error. The client reads a byte from the server, so that a certificate
    the server refuses after the client's TLS 1.3 handshake ended shows on the client too."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: dict[str, Any] = {}

    def serve() -> None:
        raw, _ = listener.accept()
        raw.settimeout(5)
        try:
            with server.wrap_socket(raw, server_side=True) as conn:
                got["server"] = conn.getpeercert()
                conn.sendall(b"!")
                with contextlib.suppress(OSError):
                    conn.recv(1)  # until the client closes
        except OSError as exc:  # ssl.SSLError included
            got["server"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname=hostname) as conn:
            peer = conn.getpeercert()
            if conn.recv(1) != b"!":
                raise ConnectionError("the server closed the connection")
            got["client"] = peer
    except OSError as exc:
        got["client"] = exc
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive()
    return got["server"], got["client"]


def refused(result: Any, words: str) -> None:
    assert isinstance(result, OSError), result
    assert words in str(result), result


@pytest.fixture
def pairs(ca: Path, tmp_path: Path) -> dict[str, tuple[str, str]]:
    out = tmp_path / "certs"
    return {"S1": leaf(ca, out, "S1"), "client": leaf(ca, out, "client", role="client")}


# ======================================================== handshakes (Python's ssl) ====
def test_a_mutual_tls13_handshake_states_each_sides_role_and_name(ca, pairs):
    cas = [ca / "ca.crt"]
    server = context(ssl.PROTOCOL_TLS_SERVER, cas, pairs["S1"])
    client = context(ssl.PROTOCOL_TLS_CLIENT, cas, pairs["client"])
    assert client.check_hostname
    got_server, got_client = handshake(server, client)
    assert pki.identity_from_peercert(got_server) == ("client", "client")
    assert pki.identity_from_peercert(got_client) == ("replica", "S1")


def test_the_handshake_is_tls13(ca, pairs):
    cas = [ca / "ca.crt"]
    server = context(ssl.PROTOCOL_TLS_SERVER, cas, pairs["S1"])
    listener = socket.create_server(("127.0.0.1", 0))
    with listener:
        client = context(ssl.PROTOCOL_TLS_CLIENT, cas, pairs["client"])
        result: list[str | None] = []

        def serve() -> None:
            raw, _ = listener.accept()
            with server.wrap_socket(raw, server_side=True) as conn:
                result.append(conn.version())
                conn.sendall(b"!")

        thread = threading.Thread(target=serve)
        thread.start()
        with socket.create_connection(listener.getsockname(), timeout=5) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            assert conn.recv(1) == b"!"
        thread.join(10)
    assert result == ["TLSv1.3"]


def test_a_certificate_of_another_ca_is_refused_either_way(ca, pairs, tmp_path):
    pki.create_ca(tmp_path / "other", "lab")
    stranger = leaf(tmp_path / "other", tmp_path / "strangers", "S1")
    cas = [ca / "ca.crt"]
    # A client with a certificate of another CA: the server refuses it.
    got_server, got_client = handshake(context(ssl.PROTOCOL_TLS_SERVER, cas, pairs["S1"]),
                                       context(ssl.PROTOCOL_TLS_CLIENT, cas, stranger))
    refused(got_server, "certificate verify failed")
    assert isinstance(got_client, OSError)
    # A server with one: the client refuses it.
    got_server, got_client = handshake(context(ssl.PROTOCOL_TLS_SERVER, cas, stranger),
                                       context(ssl.PROTOCOL_TLS_CLIENT, cas, pairs["client"]))
    refused(got_client, "certificate verify failed")


def test_the_server_must_be_named_by_its_certificate(ca, pairs, tmp_path):
    out = tmp_path / "certs"
    cas = [ca / "ca.crt"]
    client = context(ssl.PROTOCOL_TLS_CLIENT, cas, pairs["client"])
    elsewhere = leaf(ca, out, "S2", hosts=("10.9.9.9",))
    refused(handshake(context(ssl.PROTOCOL_TLS_SERVER, cas, elsewhere), client)[1],
            "IP address mismatch")
    named = leaf(ca, out, "S3", hosts=("localhost", "10.9.9.9"))
    _, got_client = handshake(context(ssl.PROTOCOL_TLS_SERVER, cas, named), client, "localhost")
    assert pki.identity_from_peercert(got_client) == ("replica", "S3")


def test_a_revoked_certificate_is_refused_and_earlier_revocations_are_kept(ca, pairs, tmp_path):
    out = tmp_path / "certs"
    first, second, kept = (leaf(ca, out, name, role="client") for name in ("c1", "c2", "c3"))
    pki.revoke(ca, Path(first[0]))
    pki.revoke(ca, Path(second[0]))
    pki.revoke(ca, Path(second[0]))  # again: still one entry
    crl = x509.load_pem_x509_crl((ca / "ca.crl").read_bytes())
    assert sorted(r.serial_number for r in crl) == sorted(
        pki.load_cert(Path(p[0])).serial_number for p in (first, second))
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4
    cas, crls = [ca / "ca.crt"], [ca / "ca.crl"]
    server = context(ssl.PROTOCOL_TLS_SERVER, cas, pairs["S1"], crls)
    for pair in (first, second):
        got_server, got_client = handshake(server, context(ssl.PROTOCOL_TLS_CLIENT, cas, pair))
        refused(got_server, "certificate revoked")
        assert isinstance(got_client, OSError)
    # The CRL itself is good (signed, current): a certificate not on it passes the check.
    got_server, _ = handshake(server, context(ssl.PROTOCOL_TLS_CLIENT, cas, kept))
    assert pki.identity_from_peercert(got_server) == ("client", "c3")


def test_an_expired_certificate_is_refused(ca, pairs, tmp_path):
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = leaf(ca, tmp_path / "certs", "old", role="client", not_before=ago, days=1)
    assert pki.load_cert(Path(expired[0])).not_valid_after_utc < dt.datetime.now(dt.UTC)
    cas = [ca / "ca.crt"]
    got_server, _ = handshake(context(ssl.PROTOCOL_TLS_SERVER, cas, pairs["S1"]),
                              context(ssl.PROTOCOL_TLS_CLIENT, cas, expired))
    refused(got_server, "certificate has expired")


def test_a_rotations_old_and_new_ca_sit_in_one_bundle(tmp_path):
    """Two CAs of one cluster, made the same day: a verifier holding both (and both CRLs)
    accepts what each issued and refuses what each revoked."""
    old, new, out = tmp_path / "old", tmp_path / "new", tmp_path / "certs"
    pki.create_ca(old, "lab")
    pki.create_ca(new, "lab")
    server_pair = leaf(new, out, "S1")
    old_client, new_client = leaf(old, out, "a", role="admin"), leaf(new, out, "b", role="admin")
    revoked = leaf(new, out, "c", role="admin")
    pki.revoke(new, Path(revoked[0]))
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes((old / "ca.crt").read_bytes() + (new / "ca.crt").read_bytes())
    crls = tmp_path / "crls.pem"
    crls.write_bytes((old / "ca.crl").read_bytes() + (new / "ca.crl").read_bytes())
    server = context(ssl.PROTOCOL_TLS_SERVER, [bundle], server_pair, [crls])
    for pair, name in ((old_client, "a"), (new_client, "b")):
        got_server, got_client = handshake(server,
                                           context(ssl.PROTOCOL_TLS_CLIENT, [bundle], pair))
        assert pki.identity_from_peercert(got_server) == ("admin", name)
        assert pki.identity_from_peercert(got_client) == ("replica", "S1")
    got_server, _ = handshake(server, context(ssl.PROTOCOL_TLS_CLIENT, [bundle], revoked))
    refused(got_server, "certificate revoked")


# ============================================================== the certificates ====
def test_a_leaf_certificate_follows_the_conventions(ca, tmp_path):
    crt, key = pki.issue(ca, tmp_path / "certs", role="lfd", name="LFD2",
                         hosts=["10.0.0.2", "node2.lab", "::1"])
    cert, ca_cert = pki.load_cert(crt), pki.load_cert(ca / "ca.crt")
    subject = {a.oid: a.value for a in cert.subject}
    assert subject == {NameOID.ORGANIZATION_NAME: "lab", NameOID.ORGANIZATIONAL_UNIT_NAME: "lfd",
                       NameOID.COMMON_NAME: "LFD2"}
    assert pki.identity_of(cert) == ("lfd", "LFD2")
    ext = cert.extensions
    alt = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.2"),
                                                       ipaddress.ip_address("::1")]
    assert alt.get_values_for_type(x509.DNSName) == ["node2.lab"]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = ext.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert (ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
            == ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            .value.key_identifier)
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca_cert)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=825, minutes=10)
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
    assert (ca / "issued" / f"{cert.serial_number:x}.crt").read_bytes() == crt.read_bytes()


def test_the_ca_follows_the_conventions(ca):
    cert = pki.load_cert(ca / "ca.crt")
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    assert cert.subject == cert.issuer == x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lab"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"ftds CA lab {today}")])
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True and constraints.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)
    crl = x509.load_pem_x509_crl((ca / "ca.crl").read_bytes())
    assert list(crl) == [] and crl.is_signature_valid(cert.public_key())
    assert crl.next_update_utc == cert.not_valid_after_utc  # never expires before the CA


def test_a_leaf_never_outlives_its_ca(tmp_path):
    pki.create_ca(tmp_path / "ca", "lab", days=30)
    crt, _ = pki.issue(tmp_path / "ca", tmp_path, role="rm", name="RM", hosts=["10.0.0.9"])
    assert (pki.load_cert(crt).not_valid_after_utc
            == pki.load_cert(tmp_path / "ca" / "ca.crt").not_valid_after_utc)


@pytest.fixture(params=[0o000, 0o077], ids=["umask 000", "umask 077"])
def umask(request: pytest.FixtureRequest) -> Iterator[None]:
    old = os.umask(request.param)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_0600_and_certificates_0644_whatever_the_umask(tmp_path, umask):
    pki.create_ca(tmp_path / "ca", "lab")
    crt, key = pki.issue(tmp_path / "ca", tmp_path / "certs", role="gfd", name="GFD",
                         hosts=["127.0.0.1"])
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert mode(key) == 0o600
    assert mode(tmp_path / "ca" / "ca.crt") == mode(crt) == mode(tmp_path / "ca" / "ca.crl") \
        == 0o644
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # none left over


def test_reissuing_replaces_the_pair(ca, tmp_path):
    first = pki.load_cert(pki.issue(ca, tmp_path, role="rm", name="RM", hosts=["h1"])[0])
    crt, key = pki.issue(ca, tmp_path, role="rm", name="RM", hosts=["h2"])
    assert pki.load_cert(crt).serial_number != first.serial_number
    context(ssl.PROTOCOL_TLS_SERVER, [ca / "ca.crt"], (str(crt), str(key)))  # a matching pair


def test_create_ca_refuses_to_overwrite_unless_forced(ca):
    before = {p.name: p.read_bytes() for p in ca.iterdir() if p.is_file()}
    with pytest.raises(pki.PkiError, match=r"ca\.crt exists.*--force"):
        pki.create_ca(ca, "lab")
    (ca / "ca.crt").unlink()  # a half-present CA is still one: its key is there
    with pytest.raises(pki.PkiError, match=r"ca\.key exists"):
        pki.create_ca(ca, "lab")
    assert (ca / "ca.key").read_bytes() == before["ca.key"]
    pki.create_ca(ca, "lab", force=True)
    assert (ca / "ca.key").read_bytes() != before["ca.key"]


@pytest.mark.parametrize("kwargs, words", [
    ({"role": "root"}, "unknown role 'root'"),
    ({"name": "../S1"}, "name '../S1'"),
    ({"name": ".hidden"}, "name '.hidden'"),
    ({"name": ""}, "name ''"),
    ({"hosts": []}, "no host"),
    ({"hosts": ["bad host"]}, "host 'bad host'"),
    ({"days": 0}, "validity of 0 days"),
])
def test_issue_refuses_what_would_make_a_bad_certificate(ca, tmp_path, kwargs, words):
    args = {"role": "replica", "name": "S1", "hosts": ["127.0.0.1"], **kwargs}
    with pytest.raises(pki.PkiError, match=words):
        pki.issue(ca, tmp_path / "certs", **args)
    assert not (tmp_path / "certs").exists()


def test_issue_without_a_usable_ca_says_so(tmp_path, ca):
    with pytest.raises(pki.PkiError, match=r"cannot read .*ca\.crt.*ftds pki ca"):
        pki.issue(tmp_path / "nowhere", tmp_path, role="rm", name="RM", hosts=["h"])
    other = tmp_path / "other"
    pki.create_ca(other, "lab")
    (ca / "ca.key").write_bytes((other / "ca.key").read_bytes())
    with pytest.raises(pki.PkiError, match=r"ca\.key is not the key of"):
        pki.issue(ca, tmp_path, role="rm", name="RM", hosts=["h"])


def test_revoke_refuses_a_certificate_of_another_ca(ca, tmp_path):
    pki.create_ca(tmp_path / "other", "lab")
    crt, _ = pki.issue(tmp_path / "other", tmp_path, role="rm", name="RM", hosts=["h"])
    crl = (ca / "ca.crl").read_bytes()
    with pytest.raises(pki.PkiError, match="not issued by the CA"):
        pki.revoke(ca, crt)
    assert (ca / "ca.crl").read_bytes() == crl


def test_issue_cluster_makes_every_daemons_certificate(ca, tmp_path):
    data = {
        "name": "lab", "mode": "passive", "key_file": "cluster.key",
        "replicas": [{"id": f"S{i}", "host": f"10.0.0.{i}", "port": 7000 + i,
                      "control_port": 7100 + i} for i in (1, 2, 3)],
        "gfd": {"host": "10.0.0.10", "port": 7200},
        "rm": {"host": "10.0.0.11", "port": 7201},
    }
    (tmp_path / "cluster.yml").write_text(yaml.safe_dump(data))
    crts = pki.issue_cluster(ca, tmp_path / "certs", load_config(tmp_path / "cluster.yml"))
    expected = {"S1": ("replica", "10.0.0.1"), "S2": ("replica", "10.0.0.2"),
                "S3": ("replica", "10.0.0.3"), "LFD1": ("lfd", "10.0.0.1"),
                "LFD2": ("lfd", "10.0.0.2"), "LFD3": ("lfd", "10.0.0.3"),
                "GFD": ("gfd", "10.0.0.10"), "RM": ("rm", "10.0.0.11"),
                "admin": ("admin", "10.0.0.11"), "client": ("client", "127.0.0.1")}
    assert sorted(c.name for c in crts) == sorted(f"{n}.crt" for n in expected)
    for crt in crts:
        summary = pki.summary(pki.load_cert(crt))
        role, host = expected[crt.stem]
        assert (summary["role"], summary["name"], summary["hosts"], summary["cluster"]) == \
            (role, crt.stem, host, "lab")
        assert mode(crt.with_suffix(".key")) == 0o600


# ===================================================================== identities ====
def self_signed(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))


OU, CN, ORG = (NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COMMON_NAME,
             NameOID.ORGANIZATION_NAME)


@pytest.mark.parametrize("attributes, words", [
    ([(ORG, "lab"), (CN, "S1")], "no role"),
    ([(ORG, "lab"), (OU, "replica")], "no name"),
    ([(ORG, "lab"), (OU, "root"), (CN, "S1")], "unknown role 'root'"),
    ([(OU, "client"), (OU, "rm"), (CN, "x")], "no role"),  # two OUs: which? neither
    ([(OU, "rm"), (CN, "RM"), (CN, "S1")], "no name"),
])
def test_identity_of_refuses_a_subject_without_one_known_role_and_one_name(attributes, words):
    with pytest.raises(ValueError, match=words):
        pki.identity_of(self_signed(*attributes))


def test_identity_of_a_good_subject():
    assert pki.identity_of(self_signed((ORG, "lab"), (OU, "gfd"), (CN, "GFD"))) == ("gfd", "GFD")


def rdns(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"subject": tuple(((key, value),) for key, value in pairs)}


@pytest.mark.parametrize("peercert, words", [
    ({}, "no role"),
    (None, "no role"),
    (rdns(("organizationName", "lab"), ("commonName", "S1")), "no role"),
    (rdns(("organizationalUnitName", "replica")), "no name"),
    (rdns(("organizationalUnitName", "root"), ("commonName", "S1")), "unknown role 'root'"),
    (rdns(("organizationalUnitName", "rm"), ("organizationalUnitName", "client"),
          ("commonName", "x")), "no role"),
])
def test_identity_from_peercert_refuses_what_states_no_identity(peercert, words):
    with pytest.raises(ValueError, match=words):
        pki.identity_from_peercert(peercert)


def test_identity_from_peercert_reads_getpeercerts_form():
    peercert = {"subject": ((("organizationName", "lab"),), (("organizationalUnitName", "rm"),),
                            (("commonName", "RM"),)), "issuer": ()}
    assert pki.identity_from_peercert(peercert) == ("rm", "RM")


# ============================================================================ CLI ====
def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["pki", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_cli_makes_a_ca_issues_shows_and_revokes(tmp_path, capsys):
    ca_dir, out = tmp_path / "ca", tmp_path / "certs"
    code, text, _ = run(capsys, "ca", "--dir", ca_dir, "--cluster", "lab", "--days", "100")
    assert code == 0 and "ca.crt" in text
    code, _, err = run(capsys, "issue", "--ca", ca_dir, "--out", out, "--role", "lfd", "--name",
                       "LFD1", "--host", "10.0.0.1", "--host", "node1", "--days", "30")
    assert code == 0, err
    code, text, _ = run(capsys, "show", out / "LFD1.crt")
    assert code == 0
    shown = dict(line.split(":", 1) for line in text.splitlines())
    assert {k: v.strip() for k, v in shown.items()} | {"not-after": "", "serial": ""} == {
        "role": "lfd", "name": "LFD1", "cluster": "lab", "hosts": "10.0.0.1, node1",
        "issuer": f"CN=ftds CA lab {dt.datetime.now(dt.UTC):%Y-%m-%d},O=lab",
        "not-after": "", "serial": ""}
    assert run(capsys, "revoke", "--ca", ca_dir, out / "LFD1.crt")[0] == 0
    assert len(list(x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes()))) == 1


def test_cli_issues_a_cluster_file(tmp_path, capsys, ca):
    data = {"name": "lab", "key_file": "k",
            "replicas": [{"id": "S1", "host": "127.0.0.1", "port": 7001, "control_port": 7101}],
            "gfd": {"host": "127.0.0.1", "port": 7200}, "rm": {"host": "127.0.0.1", "port": 7201}}
    (tmp_path / "cluster.yml").write_text(yaml.safe_dump(data))
    code, _, err = run(capsys, "cluster", "--ca", ca, "--out", tmp_path / "certs", "--config",
                       tmp_path / "cluster.yml")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "certs").glob("*.crt")) == [
        "GFD.crt", "LFD1.crt", "RM.crt", "S1.crt", "admin.crt", "client.crt"]


@pytest.mark.parametrize("argv, words", [
    (["ca", "--dir", "{ca}", "--cluster", "lab"], "--force"),
    (["ca", "--dir", "{tmp}/new", "--cluster", "a b"], "cluster name 'a b'"),
    (["ca", "--dir", "{tmp}/new", "--cluster", "lab", "--days", "0"], "--days"),
    (["issue", "--ca", "{tmp}/none", "--out", "{tmp}", "--role", "rm", "--name", "RM",
      "--host", "h"], "ftds pki ca"),
    (["issue", "--ca", "{ca}", "--out", "{tmp}", "--role", "root", "--name", "RM",
      "--host", "h"], "invalid choice"),
    (["issue", "--ca", "{ca}", "--out", "{tmp}", "--role", "rm", "--name", "RM"], "--host"),
    (["issue", "--ca", "{ca}", "--out", "{tmp}", "--role", "rm", "--name", "../RM",
      "--host", "h"], "name '../RM'"),
    (["issue", "--ca", "{ca}", "--out", "{ca}/ca.crt", "--role", "rm", "--name", "RM",
      "--host", "h"], "cannot create"),
    (["revoke", "--ca", "{ca}", "{tmp}/absent.crt"], "cannot read"),
    (["revoke", "--ca", "{ca}", "{ca}/ca.key"], "not a PEM certificate"),
    (["show", "{tmp}/absent.crt"], "absent.crt"),
    (["show", "{ca}/ca.crl"], "not a PEM certificate"),
    (["cluster", "--ca", "{ca}", "--out", "{tmp}", "--config", "{tmp}/absent.yml"],
     "cannot read"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, ca, argv, words):
    argv = [a.format(ca=ca, tmp=tmp_path) for a in argv]
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2, err
    assert line.startswith(f"ftds pki {argv[0]}: ") and words in line, line


def test_cli_in_a_subprocess_is_one_line_not_a_traceback(tmp_path, ca):
    result = subprocess.run([sys.executable, "-m", "ftds", "pki", "ca", "--dir", str(ca),
                             "--cluster", "lab"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result.stderr).startswith("ftds pki ca: ")


def test_cli_roles_are_the_librarys():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    pki_parser = sub.choices["pki"]
    issue_parser = next(a for a in pki_parser._actions if a.dest == "pki").choices["issue"]
    role = next(a for a in issue_parser._actions if a.dest == "role")
    assert tuple(role.choices) == pki.ROLES


def test_a_certificate_issued_again_can_keep_its_key(tmp_path):
    """What a running daemon under systemd needs: its credential's key, certified anew."""
    ca = tmp_path / "ca"
    pki.create_ca(ca, "lab")
    crt, key = pki.issue(ca, tmp_path / "out", role="replica", name="S1", hosts=["10.0.0.1"])
    before = key.read_bytes()
    first = pki.load_cert(crt)
    pki.issue(ca, tmp_path / "out", role="replica", name="S1", hosts=["10.0.0.1"],
              keep_key=True)
    assert key.read_bytes() == before
    again = pki.load_cert(crt)
    assert again.serial_number != first.serial_number
    assert again.public_key() == first.public_key()
    pki.issue(ca, tmp_path / "out", role="replica", name="S1", hosts=["10.0.0.1"])
    assert key.read_bytes() != before  # without keep_key, a new key
    (tmp_path / "out" / "S1.key").write_text("not a key")
    with pytest.raises(pki.PkiError, match="cannot keep this key"):
        pki.issue(ca, tmp_path / "out", role="replica", name="S1", hosts=["10.0.0.1"],
                  keep_key=True)


# ============================================================ the CA key at rest ====
PASSPHRASE = b"correct horse battery staple"


def passphrase_file(tmp_path: Path, content: bytes = PASSPHRASE + b"\n",
                    name: str = "ca.pass") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def encrypted_ca(tmp_path: Path, name: str = "eca") -> Path:
    ca_dir = tmp_path / name
    pki.create_ca(ca_dir, "lab", passphrase=PASSPHRASE)
    return ca_dir


def load_config_of(tmp_path: Path) -> Any:
    """A one-replica cluster file, tmp_path/cluster.yml, loaded."""
    data = {"name": "lab", "key_file": "k",
            "replicas": [{"id": "S1", "host": "127.0.0.1", "port": 7001, "control_port": 7101}],
            "gfd": {"host": "127.0.0.1", "port": 7200}, "rm": {"host": "127.0.0.1", "port": 7201}}
    (tmp_path / "cluster.yml").write_text(yaml.safe_dump(data))
    return load_config(tmp_path / "cluster.yml")


def test_an_encrypted_ca_key_cannot_be_loaded_without_its_passphrase(tmp_path, umask):
    ca_dir = encrypted_ca(tmp_path)
    data = (ca_dir / "ca.key").read_bytes()
    assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert mode(ca_dir / "ca.key") == 0o600
    assert mode(ca_dir / "ca.crt") == mode(ca_dir / "ca.crl") == 0o644
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(data, password=None)
    with pytest.raises(ValueError):
        serialization.load_pem_private_key(data, password=b"not it")
    key = serialization.load_pem_private_key(data, password=PASSPHRASE)
    assert key.public_key() == pki.load_cert(ca_dir / "ca.crt").public_key()
    # The CRL create_ca wrote is signed with that key.
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert crl.is_signature_valid(key.public_key())


def test_an_encrypted_ca_issues_and_revokes_with_its_passphrase(tmp_path):
    ca_dir, out = encrypted_ca(tmp_path), tmp_path / "certs"
    crt, key = pki.issue(ca_dir, out, role="rm", name="RM", hosts=["10.0.0.1"],
                         passphrase=PASSPHRASE)
    pki.load_cert(crt).verify_directly_issued_by(pki.load_cert(ca_dir / "ca.crt"))
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # the leaf's: in clear
    assert mode(key) == 0o600
    pki.revoke(ca_dir, crt, passphrase=PASSPHRASE)
    crl = x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes())
    assert [r.serial_number for r in crl] == [pki.load_cert(crt).serial_number]
    assert crl.is_signature_valid(pki.load_cert(ca_dir / "ca.crt").public_key())
    crts = pki.issue_cluster(ca_dir, tmp_path / "all", load_config_of(tmp_path),
                             passphrase=PASSPHRASE)
    assert len(crts) == 6
    assert (ca_dir / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED")  # untouched


@pytest.mark.parametrize("passphrase, words", [
    (None, r"eca/ca\.key: the CA key is encrypted; give its passphrase with "
           r"--key-passphrase-file FILE \(or FTDS_CA_PASSPHRASE_FILE\)"),
    (b"not it", r"eca/ca\.key: wrong passphrase; .*--key-passphrase-file"),
    (b"", "an empty passphrase"),
])
def test_an_encrypted_ca_refuses_a_missing_or_wrong_passphrase(tmp_path, passphrase, words):
    ca_dir, out = encrypted_ca(tmp_path), tmp_path / "certs"
    pki.issue(ca_dir, out, role="client", name="c1", hosts=["h"], passphrase=PASSPHRASE)
    before = {p: p.read_bytes() for p in ca_dir.rglob("*") if p.is_file()}
    with pytest.raises(pki.PkiError, match=words) as error:
        pki.issue(ca_dir, out, role="rm", name="RM", hosts=["h"], passphrase=passphrase)
    assert "\n" not in str(error.value)
    with pytest.raises(pki.PkiError, match=words):
        pki.revoke(ca_dir, out / "c1.crt", passphrase=passphrase)
    with pytest.raises(pki.PkiError, match=words):
        pki.issue_cluster(ca_dir, out, load_config_of(tmp_path), passphrase=passphrase)
    assert not (out / "RM.crt").exists()
    assert {p: p.read_bytes() for p in ca_dir.rglob("*") if p.is_file()} == before


def test_a_passphrase_for_a_ca_key_in_clear_is_not_needed_and_ignored(ca, tmp_path):
    crt, _ = pki.issue(ca, tmp_path, role="rm", name="RM", hosts=["h"], passphrase=b"any")
    pki.revoke(ca, crt, passphrase=b"any")
    assert (ca / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_a_ca_key_that_is_no_key_says_so(ca, tmp_path):
    (ca / "ca.key").write_text("not a key\n")
    for passphrase in (None, PASSPHRASE):
        with pytest.raises(pki.PkiError, match=r"ca\.key is not a PEM private key"):
            pki.issue(ca, tmp_path, role="rm", name="RM", hosts=["h"], passphrase=passphrase)


def test_an_empty_passphrase_makes_no_ca(tmp_path):
    with pytest.raises(pki.PkiError, match="an empty passphrase"):
        pki.create_ca(tmp_path / "ca", "lab", passphrase=b"")
    assert not (tmp_path / "ca").exists()


@pytest.mark.parametrize("content, expected", [
    (b"s3cret\n", b"s3cret"),
    (b"s3cret", b"s3cret"),
    (b"s3cret\r\n", b"s3cret"),
    (b" two words \nsecond line\n", b" two words "),  # only the newline goes
])
def test_read_passphrase_takes_the_first_line(tmp_path, content, expected):
    assert pki.read_passphrase(passphrase_file(tmp_path, content)) == expected


@pytest.mark.parametrize("content", [b"", b"\n", b"\r\n", b"\nsecond line\n"])
def test_read_passphrase_refuses_an_empty_one(tmp_path, content):
    with pytest.raises(pki.PkiError, match=r"ca\.pass: an empty passphrase"):
        pki.read_passphrase(passphrase_file(tmp_path, content))


def test_read_passphrase_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(pki.PkiError, match=r"cannot read .*absent"):
        pki.read_passphrase(tmp_path / "absent")


def test_the_passphrase_is_keyword_only_and_optional():
    """Callers that know nothing of it (ftds local, the Ansible issuer) keep working."""
    import inspect

    for function in (pki.create_ca, pki.issue, pki.issue_cluster, pki.revoke):
        parameter = inspect.signature(function).parameters["passphrase"]
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, function
        assert parameter.default is None, function


def test_a_certificate_of_an_encrypted_ca_passes_a_real_handshake(tmp_path):
    ca_dir, out = encrypted_ca(tmp_path), tmp_path / "certs"
    server_pair = leaf(ca_dir, out, "S1", passphrase=PASSPHRASE)
    client_pair = leaf(ca_dir, out, "client", role="client", passphrase=PASSPHRASE)
    revoked = leaf(ca_dir, out, "c2", role="client", passphrase=PASSPHRASE)
    pki.revoke(ca_dir, Path(revoked[0]), passphrase=PASSPHRASE)
    cas, crls = [ca_dir / "ca.crt"], [ca_dir / "ca.crl"]
    server = context(ssl.PROTOCOL_TLS_SERVER, cas, server_pair, crls)
    got_server, got_client = handshake(server,
                                       context(ssl.PROTOCOL_TLS_CLIENT, cas, client_pair))
    assert pki.identity_from_peercert(got_server) == ("client", "client")
    assert pki.identity_from_peercert(got_client) == ("replica", "S1")
    got_server, _ = handshake(server, context(ssl.PROTOCOL_TLS_CLIENT, cas, revoked))
    refused(got_server, "certificate revoked")


@pytest.fixture
def no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FTDS_CA_PASSPHRASE_FILE", raising=False)


def test_cli_encrypts_the_ca_key_and_signs_with_the_passphrase(tmp_path, capsys,
                                                                no_passphrase_env):
    ca_dir, out, pw = tmp_path / "ca", tmp_path / "certs", passphrase_file(tmp_path)
    code, text, err = run(capsys, "ca", "--dir", ca_dir, "--cluster", "lab",
                          "--key-passphrase-file", pw)
    assert code == 0, err
    assert "encrypted" in text
    assert (ca_dir / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert mode(ca_dir / "ca.key") == 0o600
    code, _, err = run(capsys, "issue", "--ca", ca_dir, "--out", out, "--role", "rm", "--name",
                       "RM", "--host", "10.0.0.1", "--key-passphrase-file", pw)
    assert code == 0, err
    code, _, err = run(capsys, "revoke", "--ca", ca_dir, out / "RM.crt",
                       "--key-passphrase-file", pw)
    assert code == 0, err
    assert len(list(x509.load_pem_x509_crl((ca_dir / "ca.crl").read_bytes()))) == 1
    load_config_of(tmp_path)
    code, _, err = run(capsys, "cluster", "--ca", ca_dir, "--out", tmp_path / "all",
                       "--config", tmp_path / "cluster.yml", "--key-passphrase-file", pw)
    assert code == 0, err
    assert len(list((tmp_path / "all").glob("*.crt"))) == 6


@pytest.mark.parametrize("argv", [
    ["issue", "--ca", "{ca}", "--out", "{tmp}/certs", "--role", "rm", "--name", "RM",
     "--host", "h"],
    ["revoke", "--ca", "{ca}", "{tmp}/certs/c1.crt"],
    ["cluster", "--ca", "{ca}", "--out", "{tmp}/certs", "--config", "{tmp}/cluster.yml"],
])
@pytest.mark.parametrize("given, words", [
    (None, "eca/ca.key: the CA key is encrypted; give its passphrase with --key-passphrase-file"),
    (b"not it\n", "eca/ca.key: wrong passphrase; give the one the CA key was encrypted with"),
    (b"\n", "wrong.pass: an empty passphrase"),
])
def test_cli_refuses_a_missing_wrong_or_empty_passphrase_on_one_line(
        tmp_path, capsys, no_passphrase_env, argv, given, words):
    ca_dir = encrypted_ca(tmp_path)
    pki.issue(ca_dir, tmp_path / "certs", role="client", name="c1", hosts=["h"],
              passphrase=PASSPHRASE)
    load_config_of(tmp_path)
    argv = [a.format(ca=ca_dir, tmp=tmp_path) for a in argv]
    if given is not None:
        argv += ["--key-passphrase-file", str(passphrase_file(tmp_path, given, "wrong.pass"))]
    crl = (ca_dir / "ca.crl").read_bytes()
    code, _, err = run(capsys, *argv)
    line = one_error_line(err)
    assert code == 2, err
    assert line.startswith(f"ftds pki {argv[0]}: ") and words in line, line
    assert (ca_dir / "ca.crl").read_bytes() == crl
    assert not (tmp_path / "certs" / "RM.crt").exists()


def test_cli_refuses_an_empty_passphrase_for_a_new_ca(tmp_path, capsys, no_passphrase_env):
    code, _, err = run(capsys, "ca", "--dir", tmp_path / "ca", "--cluster", "lab",
                       "--key-passphrase-file", passphrase_file(tmp_path, b""))
    line = one_error_line(err)
    assert code == 2, err
    assert line.startswith("ftds pki ca: ") and "ca.pass: an empty passphrase" in line, line
    assert not (tmp_path / "ca").exists()
    code, _, err = run(capsys, "ca", "--dir", tmp_path / "ca", "--cluster", "lab",
                       "--key-passphrase-file", tmp_path / "absent")
    assert code == 2 and "cannot read" in one_error_line(err), err
    assert not (tmp_path / "ca").exists()


def test_cli_takes_the_passphrase_file_from_the_environment(tmp_path, capsys, monkeypatch):
    ca_dir, out = tmp_path / "ca", tmp_path / "certs"
    monkeypatch.setenv("FTDS_CA_PASSPHRASE_FILE", str(passphrase_file(tmp_path)))
    assert run(capsys, "ca", "--dir", ca_dir, "--cluster", "lab")[0] == 0
    assert (ca_dir / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), PASSPHRASE)
    assert key.public_key() == pki.load_cert(ca_dir / "ca.crt").public_key()
    code, _, err = run(capsys, "issue", "--ca", ca_dir, "--out", out, "--role", "rm", "--name",
                       "RM", "--host", "h")
    assert code == 0, err
    assert run(capsys, "revoke", "--ca", ca_dir, out / "RM.crt")[0] == 0
    # The option wins over the environment.
    code, _, err = run(capsys, "issue", "--ca", ca_dir, "--out", out, "--role", "rm", "--name",
                       "RM", "--host", "h", "--key-passphrase-file",
                       passphrase_file(tmp_path, b"other\n", "other.pass"))
    assert code == 2 and "wrong passphrase" in one_error_line(err), err
    monkeypatch.setenv("FTDS_CA_PASSPHRASE_FILE", "")  # empty: as if unset
    code, _, err = run(capsys, "issue", "--ca", ca_dir, "--out", out, "--role", "rm", "--name",
                       "RM", "--host", "h")
    assert code == 2 and "the CA key is encrypted" in one_error_line(err), err


def test_cli_in_a_subprocess_with_an_encrypted_ca(tmp_path):
    """As typed: the environment's passphrase file makes the CA, its absence is one line."""
    pw = passphrase_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "FTDS_CA_PASSPHRASE_FILE"}

    def ftds(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ftds", "pki", *argv], capture_output=True,
                              text=True, timeout=60, env={**env, **extra})

    made = ftds("ca", "--dir", str(tmp_path / "ca"), "--cluster", "lab",
                FTDS_CA_PASSPHRASE_FILE=str(pw))
    assert made.returncode == 0, made.stderr
    refused_ = ftds("issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path), "--role",
                    "rm", "--name", "RM", "--host", "h")
    assert refused_.returncode == 2, refused_.stderr
    assert one_error_line(refused_.stderr).startswith(
        f"ftds pki issue: {tmp_path / 'ca' / 'ca.key'}: the CA key is encrypted")
    issued = ftds("issue", "--ca", str(tmp_path / "ca"), "--out", str(tmp_path), "--role",
                  "rm", "--name", "RM", "--host", "h", "--key-passphrase-file", str(pw))
    assert issued.returncode == 0, issued.stderr
