"""The cluster's CA and every host's TLS identities, on the controller (role ftds_common).

    python tls_pki.py SPEC-JSON        (run by Ansible once per play, delegated to localhost)

SPEC: {"dir": the controller's pki directory of this cluster, "cluster": its name,
       "vault_password_file": the file (or executable) giving the vault password,
       "ca_days": N, "cert_days": N, "renew_days": N, "rotate": bool, "drop_old": bool,
       "certs": [{"owner": inventory host or "controller", "role": ..., "name": ...,
                  "hosts": [addresses]}],
       "source": the ftds checkout whose ftds.pki to use,
       "check": true for Ansible's --check (reports what it would do, changes nothing),
       "revoke": [serial numbers of certificates to revoke (hex)]}

Layout of "dir": ca.crt, ca.key (ansible-vault encrypted: the CA's key is never on disk in
clear), ca.crl, issued/ (what the CA signed, for `ftds pki revoke`), <owner>/<name>.crt and
<name>.key (0600) of each certificate. The CA is made when it is missing; a certificate is
issued only when it is missing, names other hosts than wanted, was not signed by the CA's key,
or expires within renew_days. The CA key is decrypted only into a private temporary directory
for the issuing and removed after. A certificate issued again keeps its key
(pki.issue(keep_key=True)).
"revoke" puts certificates on the CRL by serial number; an identity whose certificate is
revoked gets a new one with a new key in the same run.
Prints JSON: {"changed": bool, "issued": [...]}.

What the hosts trust is trust.crt (ca.crt, and during a rotation old/ca.crt after it) and
trust.crl (the CRLs of both). "rotate" (when no rotation is under way) moves the CA to old/ and
makes a new one: every certificate is then issued again by the new CA, while the hosts trust
both. "drop_old" ends a rotation once every certificate here is the new CA's: old/ moves to
retired/<date>/ and the hosts trust the new CA only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import VaultLib, get_file_vault_secret
from cryptography import x509
from cryptography.hazmat.primitives import serialization

# ftds.pki from the checkout being deployed: the controller's Python needs no ftds installed
# (ansible-core brings cryptography and PyYAML, all ftds.pki needs)
if __name__ == "__main__" and len(sys.argv) > 1:
    sys.path.insert(0, json.loads(sys.argv[1]).get("source") or ".")
from ftds import pki


def _vault(password_file: Path) -> VaultLib:
    if not password_file.exists():  # made once, like the generated cluster key
        password_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    secret = get_file_vault_secret(filename=str(password_file), vault_id="default",
                                   loader=DataLoader())
    secret.load()
    return VaultLib([("default", secret)])


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(v) for v in ext.get_values_for_type(x509.IPAddress)} | \
        set(ext.get_values_for_type(x509.DNSName))


def _norm(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def _current(crt: Path, key: Path, ca: x509.Certificate, hosts: list[str], role: str,
             renew: dt.timedelta) -> bool:
    if not (crt.exists() and key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        cert.verify_directly_issued_by(ca)
        if pki.identity_of(cert)[0] != role or _sans(cert) != {_norm(h) for h in hosts}:
            return False
    except Exception:  # any doubt (unreadable, another CA's, no identity): issue again
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > renew


def _issued_by(crt: Path, ca: x509.Certificate) -> bool:
    try:
        x509.load_pem_x509_certificate(crt.read_bytes()).verify_directly_issued_by(ca)
    except Exception:  # unreadable or another CA's
        return False
    return True


def _revoke(serials: list[str], base: Path, work: Path, ca: x509.Certificate) -> list[str]:
    """Put the certificates of these serial numbers (hex, as `ftds pki show` prints them) on the
    CA's CRL, each once (given again, nothing happens). Where one is an identity's current
    certificate, it and its key are removed here, so the issuing after this makes a new one
    with a new key (the old key may be in other hands)."""
    done: list[str] = []
    for text in serials:
        try:
            serial = int(str(text).strip().replace(":", ""), 16)
        except ValueError:
            raise SystemExit(f"ftds_common_tls_revoke: {text!r} is not a certificate serial "
                             "number (hex, as `ftds pki show` prints it)") from None
        crl = x509.load_pem_x509_crl((base / pki.CA_CRL).read_bytes())
        if crl.get_revoked_certificate_by_serial_number(serial) is not None:
            continue
        copy = base / pki.ISSUED / f"{serial:x}.crt"
        if not copy.exists():
            raise SystemExit(f"ftds_common_tls_revoke: no certificate {serial:x} in {copy.parent} "
                             "(the serial numbers this CA issued are the file names there)")
        if not _issued_by(copy, ca):
            raise SystemExit(f"ftds_common_tls_revoke: {serial:x} was issued by another CA than "
                             f"{base / pki.CA_CERT} (a CA being rotated out is dropped whole "
                             "with ftds_common_tls_drop_old_ca)")
        (work / pki.CA_CRL).write_bytes((base / pki.CA_CRL).read_bytes())
        pki.revoke(work, copy)
        _write(base / pki.CA_CRL, (work / pki.CA_CRL).read_bytes(), 0o644)
        done.append(f"revoked {serial:x}")
        for current in base.glob("*/*.crt"):
            if current.parent.name in ("old", "retired", pki.ISSUED):
                continue
            if x509.load_pem_x509_certificate(current.read_bytes()).serial_number == serial:
                current.unlink()
                current.with_suffix(".key").unlink(missing_ok=True)
    return done


def main() -> int:
    spec = json.loads(sys.argv[1])
    for flag in ("rotate", "drop_old", "check"):
        spec[flag] = str(spec.get(flag, False)).lower() in ("true", "yes", "on", "1")
    if spec["rotate"] and spec["drop_old"]:
        raise SystemExit("rotate the CA and drop the old one in two runs: the hosts must trust "
                         "both until every certificate is the new CA's")
    if not spec["check"]:
        return run(spec, Path(spec["dir"]), Path(spec["vault_password_file"]))
    # --check: the same run on a copy of the directory, thrown away; nothing here changes
    with tempfile.TemporaryDirectory(prefix="ftds-pki-check-") as tmp:
        base, password = Path(tmp) / "pki", Path(spec["vault_password_file"])
        if Path(spec["dir"]).exists():
            shutil.copytree(spec["dir"], base, symlinks=True)
        if not password.exists():
            password = Path(tmp) / "vault-password"
        return run(spec, base, password)


def run(spec: dict, base: Path, password_file: Path) -> int:
    vault = _vault(password_file)
    issued: list[str] = []
    with tempfile.TemporaryDirectory(prefix="ftds-ca-") as tmp:
        work = Path(tmp)  # 0700: the CA key in clear lives only here
        old = base / "old"
        if spec.get("rotate") and not old.exists() and (base / pki.CA_CERT).exists():
            old.mkdir(mode=0o700)
            for name in (pki.CA_CERT, pki.CA_KEY, pki.CA_CRL):
                os.replace(base / name, old / name)
            issued.append("rotation: the CA moved to old/")
        if not (base / pki.CA_CERT).exists():
            pki.create_ca(work, spec["cluster"], int(spec["ca_days"]))
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write(base / pki.CA_KEY, vault.encrypt((work / pki.CA_KEY).read_bytes()), 0o600)
            for name in (pki.CA_CERT, pki.CA_CRL):
                _write(base / name, (work / name).read_bytes(), 0o644)
            issued.append("CA")
        else:
            _write(work / pki.CA_KEY, vault.decrypt((base / pki.CA_KEY).read_bytes()), 0o600)
            (work / pki.CA_CERT).write_bytes((base / pki.CA_CERT).read_bytes())
        (base / pki.ISSUED).mkdir(mode=0o700, exist_ok=True)
        if not (work / pki.ISSUED).exists():
            (work / pki.ISSUED).symlink_to(base / pki.ISSUED)
        ca = x509.load_pem_x509_certificate((base / pki.CA_CERT).read_bytes())
        # the key in ca.key must be the CA's (a stale or foreign ca.key stops here)
        ca_key = serialization.load_pem_private_key((work / pki.CA_KEY).read_bytes(), None)
        if ca_key.public_key() != ca.public_key():
            raise SystemExit(f"{base / pki.CA_KEY} is not the key of {base / pki.CA_CERT}")
        issued += _revoke(spec.get("revoke") or [], base, work, ca)
        renew = dt.timedelta(days=int(spec["renew_days"]))
        for c in spec["certs"]:
            out = base / c["owner"]
            crt, key = out / f"{c['name']}.crt", out / f"{c['name']}.key"
            if _current(crt, key, ca, c["hosts"], c["role"], renew):
                continue
            out.mkdir(mode=0o700, parents=True, exist_ok=True)
            args = {"role": c["role"], "name": c["name"], "hosts": c["hosts"],
                    "days": int(spec["cert_days"]), "cluster": spec["cluster"]}
            try:
                pki.issue(work, out, keep_key=True, **args)
            except pki.PkiError:  # a key that cannot be kept (unreadable, another kind)
                pki.issue(work, out, **args)
            issued.append(f"{c['owner']}/{c['name']}")
        if spec.get("drop_old") and old.exists():
            # the identities deployed now; an old-CA certificate of an identity the inventory
            # no longer has (a host gone, a replica renamed) dies with the old CA
            left = [f"{c['owner']}/{c['name']}.crt" for c in spec["certs"]
                    if not _issued_by(base / c["owner"] / f"{c['name']}.crt", ca)]
            if left:
                raise SystemExit(f"the old CA is still needed by {', '.join(left)}: run once "
                                 "more without drop_old first")
            retired = base / "retired" / dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
            retired.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(old, retired)
            issued.append(f"rotation done: the old CA moved to {retired.relative_to(base)}")
    trusted = [base] + ([old] if old.exists() else [])
    for name, src in (("trust.crt", pki.CA_CERT), ("trust.crl", pki.CA_CRL)):
        data = b"".join((d / src).read_bytes() for d in trusted)
        target = base / name
        if not target.exists() or target.read_bytes() != data:
            _write(target, data, 0o644)
    print(json.dumps({"changed": bool(issued), "issued": issued}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
