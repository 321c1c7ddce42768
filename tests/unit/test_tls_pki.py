"""The roles' controller-side issuer (ansible/roles/ftds_common/files/tls_pki.py), run as
Ansible runs it: a CA once, certificates when due, --check on a copy, revocation by serial
with a new key, and a CA rotation whose end ignores identities the inventory dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "ansible" / "roles" / "ftds_common" / "files" / "tls_pki.py"


def run(tmp: Path, owners: list[str], **flags: object) -> dict:
    spec = {"dir": str(tmp / "pki"), "cluster": "t", "ca_days": 30, "cert_days": 10,
            "renew_days": 1, "vault_password_file": str(tmp / "vault-password"),
            "source": str(REPO), "rotate": False, "drop_old": False, "check": False,
            "revoke": [],
            "certs": [{"owner": o, "role": "client", "name": "client", "hosts": ["127.0.0.1"]}
                      for o in owners]} | flags
    done = subprocess.run([sys.executable, str(SCRIPT), json.dumps(spec)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def files(tmp: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((tmp / "pki").rglob("*")) if p.is_file()}


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_check_mode_says_what_it_would_issue_and_writes_nothing(tmp_path):
    dry = run(tmp_path, ["h1"], check=True)
    assert dry["changed"] and dry["issued"] == ["CA", "h1/client"]
    assert not (tmp_path / "pki").exists() and not (tmp_path / "vault-password").exists()
    assert run(tmp_path, ["h1"])["issued"] == ["CA", "h1/client"]
    before = files(tmp_path)
    assert run(tmp_path, ["h1", "h2"], check=True)["issued"] == ["h2/client"]
    assert run(tmp_path, ["h1"], check=True, rotate=True)["changed"]
    assert files(tmp_path) == before
    assert run(tmp_path, ["h1"]) == {"changed": False, "issued": []}


def test_a_revoked_certificate_is_on_the_crl_once_and_its_identity_gets_a_new_key(tmp_path):
    run(tmp_path, ["h1", "h2"])
    crt, key = tmp_path / "pki" / "h1" / "client.crt", tmp_path / "pki" / "h1" / "client.key"
    old_serial, old_key = serial(crt), key.read_bytes()
    revoke = [f"{old_serial:x}"]
    result = run(tmp_path, ["h1", "h2"], revoke=revoke)
    assert result["issued"] == [f"revoked {old_serial:x}", "h1/client"]
    crl = x509.load_pem_x509_crl((tmp_path / "pki" / "trust.crl").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(old_serial) is not None
    assert serial(crt) != old_serial and key.read_bytes() != old_key
    assert crl.get_revoked_certificate_by_serial_number(
        serial(tmp_path / "pki" / "h2" / "client.crt")) is None
    before = files(tmp_path)
    assert run(tmp_path, ["h1", "h2"], revoke=revoke) == {"changed": False, "issued": []}
    assert files(tmp_path) == before


def test_a_rotation_ends_although_the_inventory_dropped_a_host(tmp_path):
    run(tmp_path, ["h1", "h2"])
    assert "rotation: the CA moved to old/" in run(tmp_path, ["h1"], rotate=True)["issued"]
    done = run(tmp_path, ["h1"], drop_old=True)  # h2's old-CA certificate is nobody's now
    assert any(i.startswith("rotation done") for i in done["issued"])
    trust = (tmp_path / "pki" / "trust.crt").read_bytes()
    assert trust.count(b"BEGIN CERTIFICATE") == 1
