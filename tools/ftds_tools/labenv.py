"""The nspawn lab as the controller sees it: its inventory, SSH to its hosts, the fault verbs of
``scripts/lab``, and a local copy of the deployed cluster file (with the controller's own TLS
identities, or a copy of the cluster key) so that ``ftds`` tools on the controller (status,
clients, checkers) can talk to the lab over its bridge."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

# The checkout (tools/ftds_tools/labenv.py): the lab lives in it, beside scripts/lab.
REPO = Path(__file__).resolve().parents[2]
LAB_SCRIPT = REPO / "scripts" / "lab"
INVENTORY = REPO / "inventory" / "lab"


class LabError(RuntimeError):
    """The lab is not there or a command on it failed; the message says what to do."""


class Lab:
    def __init__(self, inventory: Path = INVENTORY) -> None:
        self.inventory = inventory
        hosts_file = inventory / "hosts.yml"
        if not hosts_file.exists():
            raise LabError(f"no lab inventory at {hosts_file}: run `scripts/lab up 5` first")
        data = yaml.safe_load(hosts_file.read_text())["all"]
        groups = data["children"]
        self.addresses = {h: v["ansible_host"] for h, v in data["hosts"].items()}
        self.replica_hosts = {v["ftds_replica_id"]: h
                              for h, v in groups["ftds_replicas"]["hosts"].items()}
        self.manager = next(iter(groups["ftds_managers"]["hosts"]))
        self.clients = list(groups["ftds_clients"]["hosts"])
        self.ssh_config = inventory / "ssh_config"

    def host_of(self, replica: str) -> str:
        return self.replica_hosts[replica]

    def ssh(self, host: str, command: str, *, check: bool = True, timeout: float = 60,
            shared: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a lab host as root. ``shared`` reuses the connection-sharing
        master (fast); faults use fresh connections so a dead master never hangs them."""
        options = [] if shared else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        result = subprocess.run(["ssh", "-F", str(self.ssh_config), *options, host, command],
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise LabError(f"{host}: `{command}` exited {result.returncode}: "
                           f"{(result.stderr or result.stdout).strip()[-500:]}")
        return result

    def lab(self, *args: str, timeout: float = 180) -> str:
        result = subprocess.run([str(LAB_SCRIPT), *args], capture_output=True, text=True,
                                timeout=timeout)
        if result.returncode != 0:
            raise LabError(f"scripts/lab {' '.join(args)}: "
                           f"{(result.stderr or result.stdout).strip()[-800:]}")
        return result.stdout

    def fetch_cluster(self, dest: Path) -> Path:
        """The deployed cluster file for controller tools. With TLS (the default) it names the
        controller's own admin and client certificates, which the roles issue into the
        inventory's pki directory, and what the hosts trust (trust.crt/.crl: both CAs during
        a rotation); with the cluster key, a copy of the key (root-only, mode 0600)."""
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o700)
        config = yaml.safe_load(self.ssh(self.manager, "cat /etc/ftds/cluster.yml",
                                         shared=True).stdout)
        if "tls" in config:
            pki = self.inventory / ".secrets" / "pki" / config["name"]
            if not (pki / "controller" / "admin.crt").exists():
                raise LabError(f"the lab runs TLS but {pki / 'controller'} holds no admin "
                               "certificate: run scripts/deploy (it issues the controller's)")
            config["tls"] = {"ca": str(pki / "trust.crt"), "dir": str(pki / "controller"),
                             "crl": str(pki / "trust.crl")}
        else:
            key = self.ssh(self.manager, "cat /etc/ftds/cluster.key", shared=True).stdout
            key_path = dest / "cluster.key"
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(key)
            config["key_file"] = str(key_path.resolve())
        path = dest / "cluster.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path
