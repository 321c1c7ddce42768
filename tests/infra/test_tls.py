"""Mutual TLS identities on every ftds host (ftds_tls): each host holds exactly its own
daemons' and tools' certificates and keys, root-only keys, no CA key and, on client hosts, no
member key and no cluster key; each certificate names the host's address, is in date and was
issued by the deployed CA bundle. Skipped when the cluster file has no `tls` section."""

from __future__ import annotations

import json

import pytest
from conftest import FTDS_PYTHON

TLS_DIR = "/etc/ftds/tls"
MEMBER_KEYS = ("S", "LFD", "GFD", "RM", "admin")

# Run on the host with the venv's Python (cryptography comes with ftds).
INSPECT = r"""
import datetime as dt, glob, json, os, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
d = sys.argv[1]
cas = x509.load_pem_x509_certificates(open(os.path.join(d, "ca.crt"), "rb").read())
out = {}
for path in sorted(glob.glob(os.path.join(d, "*.crt"))):
    if os.path.basename(path) == "ca.crt":
        continue
    cert = x509.load_pem_x509_certificate(open(path, "rb").read())
    issued = False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            issued = True
        except Exception:
            pass
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    now = dt.datetime.now(dt.timezone.utc)
    out[os.path.basename(path)[:-4]] = {
        "sans": [str(v) for v in san.get_values_for_type(x509.IPAddress)]
                + san.get_values_for_type(x509.DNSName),
        "in_date": cert.not_valid_before_utc <= now < cert.not_valid_after_utc,
        "issued_by_ca": issued,
        "ou": cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value,
        "cn": cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value,
    }
print(json.dumps(out))
"""


@pytest.fixture
def tls(config) -> dict:
    if "tls" not in config:
        pytest.skip("TLS is off (no tls section in the cluster file)")
    return config["tls"]


def expected(role) -> dict[str, str]:
    """name -> certificate role (OU) of what this host should hold."""
    names: dict[str, str] = {}
    if role.replica:
        n = role.replica_id.removeprefix("S")
        names.update({f"S{n}": "replica", f"LFD{n}": "lfd"})
    if role.manager:
        names.update({"GFD": "gfd", "RM": "rm", "admin": "admin"})
    if role.client and not role.manager:
        names["client"] = "client"
    return names


def test_tls_section(tls, config):
    assert tls == {"ca": f"{TLS_DIR}/ca.crt", "dir": TLS_DIR, "crl": f"{TLS_DIR}/ca.crl"}
    assert "key_file" not in config


def test_exactly_this_hosts_identities(host, role, tls):
    d = host.file(TLS_DIR)
    assert d.is_directory and d.user == "root" and d.mode & 0o022 == 0
    files = set(host.file(TLS_DIR).listdir())
    names = expected(role)
    want = {"ca.crt", "ca.crl"} | {f"{n}.crt" for n in names} | {f"{n}.key" for n in names}
    assert files == want


def test_no_ca_key_and_no_member_key_on_a_client_host(host, role, tls):
    found = host.run("find /etc /root /opt/ftds /var/lib -name 'ca.key' -o -name 'ca.key.*'")
    assert found.stdout.strip() == "", found.stdout
    if role.runs_daemons:
        return
    assert not host.file("/etc/ftds/cluster.key").exists, "cluster key on a client host"
    keys = host.run("find / -xdev -path /proc -prune -o -name '*.key' -print").stdout.split()
    members = [k for k in keys if k.rsplit("/", 1)[-1].startswith(MEMBER_KEYS)]
    assert not members, f"member keys on a client host: {members}"


def test_key_files_root_only_and_certificates_readable(host, role, tls):
    for name in expected(role):
        key = host.file(f"{TLS_DIR}/{name}.key")
        assert (key.user, key.group, key.mode) == ("root", "root", 0o600), name
        crt = host.file(f"{TLS_DIR}/{name}.crt")
        assert (crt.user, crt.group, crt.mode) == ("root", "root", 0o644), name
    for name in ("ca.crt", "ca.crl"):
        f = host.file(f"{TLS_DIR}/{name}")
        assert (f.user, f.mode) == ("root", 0o644), name


def test_certificates_valid_for_this_host(host, role, tls, config):
    result = host.run("%s -c %s %s", FTDS_PYTHON, INSPECT, TLS_DIR)
    assert result.rc == 0, result.stderr
    certs = json.loads(result.stdout)
    addresses: set[str] = set()
    for iface in host.interface.names():
        addresses.update(host.interface(iface).addresses)
    if role.replica:
        addresses &= {r["host"] for r in config["replicas"] if r["id"] == role.replica_id}
    elif role.manager:
        addresses &= {config["rm"]["host"]}
    assert addresses, "the host's service address is not among its interfaces"
    for name, ou in expected(role).items():
        c = certs[name]
        assert (c["ou"], c["cn"]) == (ou, name), c
        assert c["in_date"], f"{name}: expired or not yet valid"
        assert c["issued_by_ca"], f"{name}: not issued by the CA in {TLS_DIR}/ca.crt"
        assert addresses & set(c["sans"]), f"{name}: SAN {c['sans']} lacks {addresses}"
