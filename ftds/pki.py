"""The cluster's certificates for mutual TLS 1.3 (``ftds pki``): a CA, one identity per daemon.

What it makes (ECDSA P-256 keys, SHA-256 signatures, random serials):

- a CA directory: ``ca.crt`` (self-signed; BasicConstraints ca=True pathlen=0; KeyUsage
  keyCertSign + cRLSign; subject O = the cluster's name, CN = ``ftds CA <cluster> <YYYY-MM-DD>``,
  distinct per CA so that a rotation's old and new CA can sit in one bundle), ``ca.key`` (0600,
  PKCS8 PEM, in clear or encrypted with a passphrase, see below), ``ca.crl`` (PEM, signed by
  the CA, possibly empty) and ``issued/<serial>.crt``, a copy of every certificate issued;
- leaf certificates ``<out>/<name>.crt`` (0644) with ``<out>/<name>.key`` (0600, PKCS8 PEM,
  unencrypted). Subject: O = cluster, OU = role (one of ``ROLES``), CN = the daemon's name:
  replicas ``S1``, ``S2``..., LFDs ``LFD1``..., ``GFD``, ``RM``, the operator's tools ``admin``,
  clients ``client`` (or any name). SubjectAlternativeName: the host(s) it serves on, IP
  addresses as IPAddress entries, names as DNSName. ExtendedKeyUsage serverAuth + clientAuth,
  KeyUsage digitalSignature, BasicConstraints ca=False, Subject/AuthorityKeyIdentifier.

The CA key at rest: ``create_ca(passphrase=...)`` (``ftds pki ca --key-passphrase-file FILE``,
default ``$FTDS_CA_PASSPHRASE_FILE``) writes ca.key encrypted (``BEGIN ENCRYPTED PRIVATE KEY``,
cryptography's BestAvailableEncryption); ``read_passphrase`` reads a passphrase file's first
line, without its newline (an empty one is refused). Whatever signs with the CA (``issue``,
``revoke``, ``issue_cluster``) then takes the same keyword ``passphrase``; without it, or with
a wrong one, a PkiError says so. A passphrase given for a key in clear is not needed, and
ignored: the key loads as it is. The leaf keys stay unencrypted (the daemons read them).

Every file is written atomically (a temporary file in the same directory, created with its
final mode, fsynced, renamed); an existing CA is replaced only when asked (``force``).

The CRL's next update is the CA's own expiry: the verifiers read the file an operator
distributes (tls.crl) and OpenSSL refuses every peer once a CRL has expired, so a CRL that
had to be re-signed every month would stop a cluster that nobody re-signed it for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import tls
from .authz import CERT_ROLES as ROLES

if TYPE_CHECKING:
    from .config import ClusterConfig

CA_CERT, CA_KEY, CA_CRL, ISSUED = "ca.crt", "ca.key", "ca.crl", "issued"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # also a file name: no "/", no ".x"
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,44}")  # the CA's CN must fit in 64
_DNS = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})")  # as the cluster file's hosts
_SKEW = dt.timedelta(minutes=5)  # valid from a little earlier: hosts' clocks differ


class PkiError(Exception):
    """An operator error, on one line: the file and what went wrong, then what to do."""


# ========================================================================= files ====
def _write(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds ``data`` with ``mode``, all or nothing (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)  # exactly mode, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PkiError(f"cannot write {path}: {exc.strerror or exc}; check that its directory "
                       "exists and is writable") from exc


def _mkdir(path: Path, mode: int) -> None:
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise PkiError(f"cannot create {path}: {exc.strerror or exc}; check the path and its "
                       "permissions") from exc


def _read(path: Path, todo: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror or exc}; {todo}") from exc


def load_cert(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file; a PkiError if there is none."""
    try:
        return x509.load_pem_x509_certificate(_read(path, "check the path"))
    except ValueError:
        raise PkiError(f"{path} is not a PEM certificate; name a .crt file written by "
                       "ftds pki") from None


def read_passphrase(path: Path) -> bytes:
    """The CA key's passphrase: ``path``'s first line, without its line ending (a PkiError if
    it is empty or the file cannot be read)."""
    path = Path(path)
    line = _read(path, "name a file that holds the CA key's passphrase").split(b"\n", 1)[0]
    line = line.removesuffix(b"\r")
    if not line:
        raise PkiError(f"{path}: an empty passphrase; write the CA key's passphrase on the "
                       "file's first line")
    return line


def _check_passphrase(passphrase: bytes | None) -> None:
    if passphrase is not None and not passphrase:
        raise PkiError("an empty passphrase for the CA key; give one of at least one byte, "
                       "or none for a key in clear")


_OPTION = "--key-passphrase-file FILE (or FTDS_CA_PASSPHRASE_FILE)"


def _load_ca_key(key_path: Path, passphrase: bytes | None, todo: str) -> PrivateKeyTypes:
    """ca.key, decrypted with ``passphrase`` if it is encrypted (a key in clear ignores it)."""
    _check_passphrase(passphrase)
    data = _read(key_path, todo)
    try:  # without a password: a TypeError says the key is encrypted, a ValueError it is none
        return serialization.load_pem_private_key(data, password=None)
    except ValueError:
        raise PkiError(f"{key_path} is not a PEM private key; {todo}") from None
    except TypeError:
        if passphrase is None:
            raise PkiError(f"{key_path}: the CA key is encrypted; give its passphrase with "
                           f"{_OPTION}") from None
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except (ValueError, TypeError):  # ValueError: it could not be decrypted
        raise PkiError(f"{key_path}: wrong passphrase; give the one the CA key was encrypted "
                       f"with, in {_OPTION}") from None


def _load_ca(ca_dir: Path, *, passphrase: bytes | None = None,
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    todo = f"is {ca_dir} a CA directory (ftds pki ca --dir {ca_dir})?"
    cert_path, key_path = ca_dir / CA_CERT, ca_dir / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_path, todo))
    except ValueError:
        raise PkiError(f"{cert_path} is not a PEM certificate; {todo}") from None
    key = _load_ca_key(key_path, passphrase, todo)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(f"{key_path} is not the key of {cert_path}; restore the pair, or make a "
                       "new CA with --force")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{cert_path} is not a CA certificate; {todo}")
    return cert, key


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if len(values) == 1 else None


# ================================================================ certificates ====
def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             not_before: dt.datetime, not_after: dt.datetime) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def _key_usage(*, signature: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signature, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def _pem_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS8 PEM; encrypted with ``passphrase`` if one is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption() if passphrase is None
        else serialization.BestAvailableEncryption(passphrase))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             encryption)


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"a validity of {days} days; give at least 1")


def create_ca(ca_dir: Path, cluster: str, days: int = 3650, *, force: bool = False,
              passphrase: bytes | None = None) -> Path:
    """Make a new CA in ``ca_dir`` (ca.crt, ca.key, an empty ca.crl); the path of ca.crt.
    With ``passphrase``, ca.key is encrypted with it (give it again to whatever signs)."""
    if not _CLUSTER.fullmatch(cluster):
        raise PkiError(f"cluster name {cluster!r}: use 1-45 letters, digits, '.', '_' or '-', "
                       "as the cluster file's name")
    _check_days(days)
    _check_passphrase(passphrase)
    ca_dir = Path(ca_dir)
    existing = [p for p in (ca_dir / CA_CERT, ca_dir / CA_KEY) if p.exists()]
    if existing and not force:
        raise PkiError(f"{existing[0]} exists; keep that CA, or pass --force to replace it "
                       "(what it issued is then trusted only while the old ca.crt stays in "
                       "the verifiers' bundle)")
    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
        x509.NameAttribute(NameOID.COMMON_NAME, f"ftds CA {cluster} {now:%Y-%m-%d}"),
    ])
    cert = (_builder(subject, subject, key.public_key(), now - _SKEW, now + dt.timedelta(days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _mkdir(ca_dir, 0o700)
    _write(ca_dir / CA_KEY, _pem_key(key, passphrase), 0o600)
    _write(ca_dir / CA_CERT, _pem(cert), 0o644)
    _write_crl(ca_dir, cert, key, [], 1)
    return ca_dir / CA_CERT


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not _DNS.fullmatch(host):
            raise PkiError(f"host {host!r} is neither an IP address nor a host name; give the "
                           "address or name the daemon is reached at") from None
        return x509.DNSName(host)


def issue(ca_dir: Path, out_dir: Path, *, role: str, name: str, hosts: Sequence[str],
          days: int = 825, cluster: str | None = None,
          not_before: dt.datetime | None = None,
          keep_key: bool = False, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Issue ``name``'s certificate for ``role`` on ``hosts``: (``<name>.crt``, ``<name>.key``)
    in ``out_dir``, replacing an earlier pair. Valid from ``not_before`` (default: now) for
    ``days``, but never beyond the CA; ``cluster`` defaults to the CA's O. With ``keep_key``
    an existing ``<name>.key`` is certified again rather than replaced: a daemon under systemd
    holds a copy of its key made when it started (a credential), so a renewal or a CA
    rotation that keeps the key takes effect at the next connection, without a restart.
    ``passphrase``: the CA key's, if it is encrypted."""
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    if not _NAME.fullmatch(name):
        raise PkiError(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-', not "
                       "beginning with '.' or '-' (e.g. S1, LFD1, GFD, RM, admin, client)")
    if not hosts:
        raise PkiError(f"no host for {name}; give the address(es) or name(s) it is reached at")
    _check_days(days)
    alt_names = [_host_name(h) for h in dict.fromkeys(hosts)]
    ca_dir, out_dir = Path(ca_dir), Path(out_dir)
    ca_cert, ca_key = _load_ca(ca_dir, passphrase=passphrase)
    if cluster is None:
        cluster = _one(ca_cert.subject, NameOID.ORGANIZATION_NAME)
        if cluster is None:
            raise PkiError(f"{ca_dir / CA_CERT} names no cluster (one O); give the cluster")
    now = dt.datetime.now(dt.UTC)
    if ca_cert.not_valid_after_utc <= now:
        raise PkiError(f"{ca_dir / CA_CERT} expired on {ca_cert.not_valid_after_utc:%Y-%m-%d}; "
                       "make a new CA (ftds pki ca --force) and issue again")
    start = now - _SKEW if not_before is None else not_before
    if start.tzinfo is None:
        start = start.replace(tzinfo=dt.UTC)  # as cryptography reads a naive time
    end = min(start + dt.timedelta(days), ca_cert.not_valid_after_utc)
    key = _kept_key(Path(out_dir) / f"{name}.key") if keep_key else None
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(subject, ca_cert.subject, key.public_key(), start, end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _mkdir(out_dir, 0o755)
    crt_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    _write(key_path, _pem_key(key), 0o600)
    _write(crt_path, _pem(cert), 0o644)
    _mkdir(ca_dir / ISSUED, 0o700)
    _write(ca_dir / ISSUED / f"{cert.serial_number:x}.crt", _pem(cert), 0o644)
    return crt_path, key_path


def _kept_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    """The P-256 key at ``path``, or None when there is none to keep (a new one is made)."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise PkiError(f"{path}: cannot keep this key ({exc}); remove it to have a new one "
                       "made") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PkiError(f"{path}: not an ECDSA P-256 key; remove it to have a new one made")
    return key


def issue_cluster(ca_dir: Path, out_dir: Path, config: ClusterConfig, *,
                  passphrase: bytes | None = None) -> list[Path]:
    """Every daemon's and tool's certificate for ``config``'s cluster; the .crt paths.
    ``passphrase``: the CA key's, if it is encrypted."""
    wanted: list[tuple[str, str, list[str]]] = []
    for spec in config.replicas:
        wanted += [("replica", spec.id, [spec.host]), ("lfd", spec.lfd_id, [spec.host])]
    wanted += [("gfd", "GFD", [config.gfd.host]), ("rm", "RM", [config.rm.host]),
               ("admin", "admin", [config.rm.host]), ("client", "client", ["127.0.0.1"])]
    return [issue(ca_dir, out_dir, role=role, name=name, hosts=hosts, cluster=config.name,
                  passphrase=passphrase)[0]
            for role, name, hosts in wanted]


# ================================================================= revocation ====
def _write_crl(ca_dir: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
               revoked: list[x509.RevokedCertificate], number: int) -> None:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - _SKEW).next_update(ca_cert.not_valid_after_utc)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    _write(ca_dir / CA_CRL, _pem(builder.sign(ca_key, hashes.SHA256())), 0o644)


def revoke(ca_dir: Path, cert_path: Path, *, passphrase: bytes | None = None) -> None:
    """Add ``cert_path``'s certificate (issued by this CA) to ca.crl, keeping what it held.
    ``passphrase``: the CA key's, if it is encrypted."""
    ca_dir = Path(ca_dir)
    ca_cert, ca_key = _load_ca(ca_dir, passphrase=passphrase)
    cert = load_cert(Path(cert_path))
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError(f"{cert_path} was not issued by the CA in {ca_dir}; revoke it with the "
                       "CA that issued it (see ftds pki show)") from None
    revoked: list[x509.RevokedCertificate] = []
    number = 1
    crl_path = ca_dir / CA_CRL
    if crl_path.exists():
        try:
            crl = x509.load_pem_x509_crl(_read(crl_path, "check its permissions"))
        except ValueError:
            raise PkiError(f"{crl_path} is not a PEM CRL; restore it (its revocations would be "
                           "lost)") from None
        if not crl.is_signature_valid(ca_key.public_key()):
            raise PkiError(f"{crl_path} is not signed by the CA in {ca_dir}; restore this CA's "
                           "ca.crl (its revocations would be lost)")
        revoked = list(crl)
        with contextlib.suppress(x509.ExtensionNotFound):
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    if all(entry.serial_number != cert.serial_number for entry in revoked):
        revoked.append(x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
                       .revocation_date(dt.datetime.now(dt.UTC)).build())
    _write_crl(ca_dir, ca_cert, ca_key, revoked, number)


# =================================================================== identity ====
def identity_of(cert: x509.Certificate) -> tuple[str, str]:
    """(role, name) from the subject's OU and CN; a ValueError if either is missing or the role
    is not one of ``ROLES``."""
    found = tls.check_identity(_one(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
                               _one(cert.subject, NameOID.COMMON_NAME),
                               f"the certificate {cert.subject.rfc4514_string()!r}")
    return found.role, found.name


def identity_from_peercert(peercert: dict) -> tuple[str, str]:
    """identity_of for ``ssl.SSLSocket.getpeercert()``'s dict (empty if nothing verified)."""
    found = tls.parse_peercert(peercert)
    return found.role, found.name


def summary(cert: x509.Certificate) -> dict[str, str]:
    """What ``ftds pki show`` prints: role, name, cluster, hosts, not-after, issuer, serial."""
    try:
        role, name = identity_of(cert)
    except ValueError:
        role, name = "-", _one(cert.subject, NameOID.COMMON_NAME) or "-"
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(h) for h in alt.get_values_for_type(x509.IPAddress)]
        hosts += alt.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        hosts = []
    return {"role": role, "name": name,
            "cluster": _one(cert.subject, NameOID.ORGANIZATION_NAME) or "-",
            "hosts": ", ".join(hosts) or "-",
            "not-after": cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M:%S UTC"),
            "issuer": cert.issuer.rfc4514_string(), "serial": f"{cert.serial_number:x}"}
