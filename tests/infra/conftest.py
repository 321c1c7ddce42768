"""testinfra checks of a deployed ftds cluster, against any inventory.

    PATH=$PWD/.venv/bin:$PATH .venv/bin/pytest tests/infra \
        --ansible-inventory=inventory/lab/hosts.yml --connection=ansible --hosts='all'
    .venv/bin/pytest tests/infra --hosts='ssh://root@10.77.0.11,...' --ssh-config=...

With the ansible backend, what applies to a host comes from its inventory groups
(ftds_replicas with ftds_replica_id, ftds_managers, ftds_clients); testinfra still talks plain
ssh with the inventory's settings (the lab's ssh_config shares connections). With any other
backend the host's role is read from the deployed /etc/ftds/cluster.yml and the host's own
addresses (a host whose address is a replica's host runs that replica, ...).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import yaml

CONFIG = "/etc/ftds/cluster.yml"
FTDS = "/opt/ftds/bin/ftds"
FTDS_PYTHON = "/opt/ftds/bin/python"
GROUPS = ("ftds_replicas", "ftds_managers", "ftds_clients")


@dataclass
class Role:
    name: str
    groups: set[str] = field(default_factory=set)
    replica_id: str | None = None

    @property
    def replica(self) -> bool:
        return "ftds_replicas" in self.groups

    @property
    def manager(self) -> bool:
        return "ftds_managers" in self.groups

    @property
    def client(self) -> bool:
        return "ftds_clients" in self.groups

    @property
    def runs_daemons(self) -> bool:
        return self.replica or self.manager

    @property
    def units(self) -> list[str]:
        units = []
        if self.replica:
            units += [f"ftds-replica@{self.replica_id}.service",
                      f"ftds-lfd@{self.replica_id}.service"]
        if self.manager:
            units += ["ftds-gfd.service", "ftds-rm.service"]
        return units


_configs: dict[str, dict] = {}
_roles: dict[str, Role] = {}


def host_key(host) -> str:
    return str(host.backend.get_pytest_id())


def cluster_config(host) -> dict:
    key = host_key(host)
    if key not in _configs:
        f = host.file(CONFIG)
        assert f.exists, f"{CONFIG} is missing: is ftds deployed on this host?"
        _configs[key] = yaml.safe_load(f.content_string)
    return _configs[key]


def _role_from_inventory(host) -> Role | None:
    if host.backend.NAME != "ansible":
        return None
    variables = host.ansible.get_variables()
    groups = {g for g in variables.get("group_names", []) if g in GROUPS}
    return Role(variables.get("inventory_hostname", host_key(host)), groups,
                variables.get("ftds_replica_id"))


def _role_from_config(host) -> Role:
    config = cluster_config(host)
    addresses: set[str] = set()
    for iface in host.interface.names():
        addresses.update(host.interface(iface).addresses)
    role = Role(host_key(host))
    for r in config["replicas"]:
        if r["host"] in addresses:
            role.groups.add("ftds_replicas")
            role.replica_id = r["id"]
    if config["rm"]["host"] in addresses:
        role.groups.add("ftds_managers")
    if not role.groups:
        role.groups.add("ftds_clients")
    return role


@pytest.fixture
def role(host) -> Role:
    key = host_key(host)
    if key not in _roles:
        _roles[key] = _role_from_inventory(host) or _role_from_config(host)
    return _roles[key]


@pytest.fixture
def config(host) -> dict:
    return cluster_config(host)


@pytest.fixture
def replica_spec(role, config) -> dict:
    if not role.replica:
        pytest.skip("not a replica host")
    for r in config["replicas"]:
        if r["id"] == role.replica_id:
            return r
    pytest.fail(f"{role.replica_id} is not in {CONFIG}")


def status_json(host, timeout: float = 15.0) -> dict:
    """`ftds status --json` on a manager, retried until it answers and is healthy."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = host.run(f"{FTDS} status --json")
        if last.rc in (0, 1, 2):
            status = json.loads(last.stdout)
            if last.rc == 0 and all(r["ready"] for r in status["replicas"].values()):
                return status
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert last.rc in (0, 1, 2), f"ftds status: rc {last.rc}: {last.stderr}"
    return json.loads(last.stdout)


def pytest_collection_modifyitems(config, items):
    """Without --hosts (or the ansible backend) testinfra would check this machine: skip."""
    if config.getoption("hosts", default=None) or config.getoption("connection", default=None):
        return
    skip = pytest.mark.skip(reason="tests/infra checks deployed hosts: pass --hosts=... or "
                                   "--ansible-inventory=... --connection=ansible --hosts=all")
    for item in items:
        if "tests/infra/" in str(item.fspath):
            item.add_marker(skip)
