"""The ftds units: enabled, running, listening, hardened, and who restarts what."""

from __future__ import annotations

import pytest
from conftest import host_key

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "ProtectProc": "invisible",
    "ProcSubset": "pid",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "RemoveIPC": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0077",
    # the LFD must see its replica in /proc: no user namespace per unit
    "PrivateUsers": "no",
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogUSec": "10s",
}


_shown: dict[tuple[str, str], dict[str, str]] = {}
_LIVE = {"MainPID", "ActiveState", "SubState"}


def show(host, unit: str, *props: str) -> dict[str, str]:
    """`systemctl show UNIT` (every property, once per host and unit; live ones each time)."""
    key = (host_key(host), unit)
    if key not in _shown or _LIVE & set(props):
        out = host.check_output(f"systemctl show {unit}")
        _shown[key] = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {p: _shown[key].get(p, "") for p in props}


def test_units_enabled_and_running(host, role):
    for unit in role.units:
        service = host.service(unit)
        assert service.is_enabled, f"{unit} is not enabled (it must start at boot)"
        assert service.is_running, f"{unit} is not running"


def test_no_foreign_units(host, role):
    """A host runs the units of its roles only (no replica on a client, no RM on a replica)."""
    listed = host.check_output("systemctl list-units --all --plain --no-legend 'ftds-*'")
    running = {line.split()[0] for line in listed.splitlines()
               if line.strip() and " active " in f" {line} "}
    assert running <= set(role.units), f"unexpected ftds units: {running - set(role.units)}"


@pytest.mark.parametrize("prop,value", sorted(HARDENING.items()))
def test_hardening(host, role, prop, value):
    if not role.units:
        pytest.skip("no ftds units on this host")
    for unit in role.units:
        assert show(host, unit, prop).get(prop) == value, f"{unit}: {prop}"


def test_address_families(host, role):
    for unit in role.units:
        families = set(show(host, unit, "RestrictAddressFamilies")["RestrictAddressFamilies"]
                       .split())
        assert families == {"AF_INET", "AF_INET6", "AF_UNIX"}, unit


def test_syscall_filter(host, role):
    for unit in role.units:
        props = show(host, unit, "SystemCallFilter", "SystemCallErrorNumber")
        assert props["SystemCallFilter"], f"{unit}: no system call filter"
        assert "reboot" not in props["SystemCallFilter"].split(), unit  # ~@privileged


def test_hardening_in_effect(host, role):
    """The running processes really have no capabilities, no_new_privs and a seccomp filter."""
    for unit in role.units:
        pid = show(host, unit, "MainPID")["MainPID"]
        status = host.file(f"/proc/{pid}/status").content_string
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        assert fields["CapEff"].strip() == "0000000000000000", unit
        assert fields["CapBnd"].strip() == "0000000000000000", unit
        assert fields["NoNewPrivs"].strip() == "1", unit
        assert fields["Seccomp"].strip() == "2", unit


def test_users_and_credentials(host, role):
    for unit in role.units:
        props = show(host, unit, "User", "Group", "LoadCredential")
        expected = "ftds-rm" if unit == "ftds-rm.service" else "ftds"
        assert (props["User"], props["Group"]) == (expected, expected), unit
    if role.manager:
        props = show(host, "ftds-rm.service", "StateDirectory", "StateDirectoryMode")
        assert props["StateDirectory"] == "ftds-rm"
        assert props["StateDirectoryMode"] == "0700"


def test_secrets_are_credentials(host, role, config):
    """Units get their key (the cluster key, or with TLS their own: S1.key, LFD1.key, GFD.key,
    RM.key) as a systemd credential, and cannot read the root-only file; nothing else."""
    for unit in role.units:
        user = show(host, unit, "User")["User"]
        key = (f"/etc/ftds/tls/{tls_name(unit)}.key" if "tls" in config
               else "/etc/ftds/cluster.key")
        denied = host.run(f"runuser -u {user} -- cat {key}")
        assert denied.rc != 0, f"{user} can read {key}"
        pid = show(host, unit, "MainPID")["MainPID"]
        environ = host.file(f"/proc/{pid}/environ").content.split(b"\0")
        cred = [e for e in environ if e.startswith(b"CREDENTIALS_DIRECTORY=")]
        assert cred, f"{unit}: no credentials"
        directory = cred[0].split(b"=", 1)[1].decode()
        names = {key.rsplit("/", 1)[1]} | ({"ssh_key"} if unit == "ftds-rm.service" else set())
        found = set(host.run(f"ls {directory}").stdout.split())
        assert found == names, f"{unit}: credentials {sorted(found)}, want {sorted(names)}"


def tls_name(unit: str) -> str:
    """The TLS identity a unit runs as: ftds-replica@S1 S1, ftds-lfd@S1 LFD1, GFD, RM."""
    if unit.startswith("ftds-replica@"):
        return unit.split("@")[1].removesuffix(".service")
    if unit.startswith("ftds-lfd@"):
        return "LFD" + unit.split("@")[1].removesuffix(".service").removeprefix("S")
    return {"ftds-gfd.service": "GFD", "ftds-rm.service": "RM"}[unit]


def test_restart_policy(host, role):
    """Replicas: the RM restarts them (Restart=no); LFD, GFD, RM: systemd (Restart=always)."""
    for unit in role.units:
        props = show(host, unit, "Restart", "StartLimitBurst", "StartLimitIntervalUSec",
                     "ExecReload")
        expected = "no" if unit.startswith("ftds-replica@") else "always"
        assert props["Restart"] == expected, unit
        assert props["StartLimitIntervalUSec"] == "1min", unit
        assert int(props["StartLimitBurst"]) in (10, 20), unit
        assert "/bin/kill -HUP $MAINPID" in props["ExecReload"], unit


def test_units_grouped_by_ftds_target(host, role):
    """`systemctl stop|start ftds.target` acts on exactly this host's ftds units."""
    if not role.runs_daemons:
        pytest.skip("no ftds daemons on this host")
    target = host.service("ftds.target")
    assert target.is_enabled and target.is_running
    wants = set(show(host, "ftds.target", "Wants")["Wants"].split())
    assert {u for u in wants if u.startswith("ftds-")} == set(role.units)
    for unit in role.units:
        props = show(host, unit, "PartOf", "After")
        assert "ftds.target" in props["PartOf"].split(), unit
        assert "ftds.target" in props["After"].split(), f"{unit}: stopping the target " \
            "would return before the unit stopped"


def test_unit_files_of_its_roles_only(host, role):
    """A host keeps no unit of a role it lost (the deploy removes them), and ftds.target
    lists the units itself (no wants directory of links that could outlive a role)."""
    files = set(host.check_output(
        "ls /etc/systemd/system | grep -E '^(ftds-.*[.]service|ftds[.]target)$' || true").split())
    expected = set()
    if role.replica:
        expected |= {"ftds-replica@.service", "ftds-lfd@.service"}
    if role.manager:
        expected |= {"ftds-gfd.service", "ftds-rm.service"}
    if role.runs_daemons:
        expected.add("ftds.target")
    assert files == expected
    assert not host.file("/etc/systemd/system/ftds.target.wants").exists
    enabled = set(host.check_output(
        "ls /etc/systemd/system/multi-user.target.wants | grep '^ftds' || true").split())
    assert enabled == set(role.units) | ({"ftds.target"} if role.runs_daemons else set())


def test_units_carry_the_log_level(host, role):
    for unit in role.units:
        exec_start = show(host, unit, "ExecStart")["ExecStart"]
        assert "/bin/ftds " in exec_start and "--log-level " in exec_start, unit


def test_lfd_not_bound_to_replica(host, role):
    """Stopping the replica must not stop its LFD (it is the one that reports the loss)."""
    if not role.replica:
        pytest.skip("not a replica host")
    lfd = f"ftds-lfd@{role.replica_id}.service"
    replica = f"ftds-replica@{role.replica_id}.service"
    props = show(host, lfd, "BindsTo", "PartOf", "Requires", "Requisite")
    for prop, value in props.items():
        assert replica not in value.split(), f"{lfd}: {prop}={value}"


def test_lfd_sees_its_replica(host, role):
    """The LFD tells a crash from a hang through /proc/<replica pid>: it must see it."""
    if not role.replica:
        pytest.skip("not a replica host")
    lfd_pid = show(host, f"ftds-lfd@{role.replica_id}.service", "MainPID")["MainPID"]
    replica_pid = show(host, f"ftds-replica@{role.replica_id}.service", "MainPID")["MainPID"]
    uid = host.user("ftds").uid
    gid = host.group("ftds").gid
    seen = host.run(f"nsenter -t {lfd_pid} -m -S {uid} -G {gid} "
                    f"test -r /proc/{replica_pid}/stat")
    assert seen.rc == 0, "the LFD cannot see its replica's /proc entry"


def test_replica_ports(host, replica_spec):
    for port in (replica_spec["port"], replica_spec["control_port"]):
        sock = host.socket(f"tcp://{replica_spec['host']}:{port}")
        assert sock.is_listening, f"nothing listens on {replica_spec['host']}:{port}"


def test_manager_ports(host, role, config):
    endpoints = [(name, config[name]["host"], config[name]["port"]) for name in ("gfd", "rm")]
    if config["rm"].get("metrics_port"):
        endpoints.append(("rm metrics", config["rm"]["host"], config["rm"]["metrics_port"]))
    for name, address, port in endpoints:
        listening = host.socket(f"tcp://{address}:{port}").is_listening
        assert listening == role.manager, f"{name} port {port}"


def test_no_replica_ports_elsewhere(host, role, config):
    if role.replica:
        pytest.skip("a replica host")
    ports = {r["port"] for r in config["replicas"]} | {r["control_port"]
                                                      for r in config["replicas"]}
    for port in ports:
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening
        for sock in host.socket.get_listening_sockets():
            assert not sock.endswith(f":{port}"), f"{sock} on a host without a replica"
