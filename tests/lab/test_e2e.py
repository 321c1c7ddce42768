"""End to end on the lab: 5 systemd hosts (S1..S3 on h1..h3, GFD+RM on h4, clients on h5),
deployed with ansible-playbook; clients run through every fault and their history is judged.

Run by scripts/test-lab (which brings the lab up, deploys, runs these and testinfra).
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from ftds_tools.labenv import INVENTORY

REPO = Path(__file__).resolve().parents[2]


def test_a_playbook_rerun_changes_nothing(cluster):
    result = cluster.deploy()
    recap = re.findall(r"^(h\d+)\s*:\s*ok=\d+\s+changed=(\d+)", result.stdout, re.M)
    assert len(recap) == 5, result.stdout[-2000:]
    assert all(int(changed) == 0 for _, changed in recap), result.stdout[-3000:]


def test_b_systemctl_stop_of_a_replica_is_undone_by_the_rm_over_ssh(cluster):
    start = cluster.wait_healthy()
    cluster.start_clients("A1")
    victim = next(r for r in sorted(start["replicas"]) if r != start["primary"])
    host = cluster.lab.host_of(victim)
    since = cluster.now_on_lab()
    old_pid = cluster.unit_pid(host, f"ftds-replica@{victim}.service")
    stopped_at = time.time()
    cluster.lab.ssh(host, f"systemctl stop ftds-replica@{victim}.service")
    incident = cluster.closed_incident(victim, stopped_at)
    status = cluster.wait_healthy()
    assert status["epoch"] == start["epoch"]  # a backup: the primary stays
    assert cluster.unit_pid(host, f"ftds-replica@{victim}.service") not in (0, old_pid)
    rm_log = cluster.journal(cluster.lab.manager, "ftds-rm.service", since)
    assert f"systemctl start ftds-replica@{victim}.service' on" in rm_log, rm_log[-2000:]
    assert incident["confirmed_dead"] and incident["relaunch_to_ready_ms"] is not None
    cluster.stop_clients_and_check()


def test_c_power_cut_of_the_primary_host_then_it_boots_back_as_a_backup(cluster):
    start = cluster.wait_healthy()
    cluster.start_clients("B1")
    old = start["primary"]
    host = cluster.lab.host_of(old)
    cut_at = time.time()
    cluster.lab.lab("crash", host)
    new = cluster.wait(lambda: (s := cluster.status()) and s["primary"] != old and s["primary"],
                       30, "a new primary")
    time.sleep(1.0)
    cluster.lab.lab("start", host)  # units are enabled: they start at boot
    status = cluster.wait_healthy(90)
    assert status["primary"] == new and status["epoch"] > start["epoch"]
    assert status["replicas"][old]["role"] == "backup"
    incident = cluster.closed_incident(old, cut_at, timeout=90)
    assert incident["was_primary"] and incident["new_primary_id"] == new
    cluster.stop_clients_and_check()


def test_d_partitioned_primary_host_no_split_brain_and_it_rejoins(cluster):
    start = cluster.wait_healthy()
    cluster.start_clients("P1")
    old = start["primary"]
    host = cluster.lab.host_of(old)
    cluster.lab.lab("partition", host)
    try:
        new = cluster.wait(lambda: (s := cluster.status()) and s["primary"] != old
                           and s["primary"], 30, "a new primary")
        time.sleep(2.0)  # both sides keep running for a while
    finally:
        cluster.lab.lab("heal")
    status = cluster.wait_healthy(90)
    assert status["primary"] == new and status["replicas"][old]["ready"]
    cluster.stop_clients_and_check()  # linearizable, nothing acknowledged after deposed


def test_e_heartbeat_interval_change_reloads_without_restart(cluster):
    cluster.wait_healthy()
    pids = cluster.unit_pids()
    change = INVENTORY / "group_vars" / "all" / "60-heartbeat.yml"
    try:
        change.write_text(yaml.safe_dump({"ftds_common_tunables": {"heartbeat_interval": 0.2}}))
        result = cluster.deploy("--tags", "ftds_configure")  # a tunable: configure only
        assert "changed=" in result.stdout
        status = cluster.wait(
            lambda: (s := cluster.status()) and all(r["heartbeat_interval"] == 0.2
                                                    for r in s["replicas"].values()) and s,
            30, "the new heartbeat interval in effect")
        assert cluster.unit_pids() == pids, "a daemon was restarted"
        lfd_log = cluster.journal(cluster.lab.host_of("S1"), "ftds-lfd@S1.service", "-5min")
        assert "heartbeat_interval: 0.1 -> 0.2" in lfd_log
        assert status["primary"]
    finally:
        change.unlink(missing_ok=True)
        cluster.deploy()
    assert cluster.unit_pids() == pids


def _put_and_get_on_the_client_host(cluster, key: str) -> str:
    """``ftds client`` on h5 (with the host's own cluster file) puts a fresh value and reads it
    back; the value."""
    value = f"{key}-{secrets.token_hex(6)}"
    put = cluster.lab.ssh(cluster.client_host, f"ftds client -q put {key} '\"{value}\"'",
                          check=False)
    assert put.returncode == 0, put.stdout + put.stderr
    assert_reads(cluster, key, value)
    return value


def assert_reads(cluster, key: str, value: str) -> None:
    got = cluster.lab.ssh(cluster.client_host, f"ftds client -q get {key}", check=False)
    assert got.returncode == 0 and f'"value": "{value}"' in got.stdout, got.stdout + got.stderr


def _recap(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """changed= per host of a playbook run's recap."""
    found = re.findall(r"^(h\d+)\s*:\s*ok=\d+\s+changed=(\d+)", result.stdout, re.M)
    return {host: int(changed) for host, changed in found}


def test_f_the_cluster_key_instead_of_tls_serves_recovers_and_guards_its_key(cluster):
    """-e ftds_tls=false on the running lab (mutual TLS is the default): every daemon restarts
    on the shared cluster key, client hosts get the key, testinfra passes for that mode, a
    client on h5 puts and reads back, a stopped backup is relaunched by the RM, and a second
    run changes nothing. The daemons hold their key from start-up: a different key in the
    inventory must not be written under them (the cluster would refuse every frame of the
    tools); it stops the play, and with ftds_common_replace_cluster_key the whole cluster
    restarts on the new key. Switched back to TLS at the end."""
    cluster.wait_healthy()
    assert cluster.config.tls is not None, "the lab was deployed without TLS (the default)"
    key_mode = ("-e", "ftds_tls=false")
    key_file = INVENTORY / ".secrets" / "cluster.key"
    deployed = key_file.read_text()
    try:
        switched = cluster.deploy(*key_mode)
        assert _recap(switched).get("h4", 0) > 0, switched.stdout[-3000:]
        cluster.refetch()
        assert cluster.config.tls is None and len(cluster.key) >= 32
        start = cluster.wait_healthy()
        assert cluster.lab.ssh(cluster.client_host, "test -f /etc/ftds/cluster.key && "
                               "test ! -e /etc/ftds/tls/client.key", check=False).returncode == 0

        infra = subprocess.run(
            [str(REPO / ".venv" / "bin" / "pytest"), "-q", "-rs", "-p", "no:cacheprovider",
             "tests/infra/test_tls.py", "tests/infra/test_hosts.py", "tests/infra/test_units.py",
             f"--ansible-inventory={INVENTORY / 'hosts.yml'}", "--connection=ansible",
             "--hosts=all"],
            capture_output=True, text=True, timeout=600, cwd=REPO,
            env={**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"})
        assert infra.returncode == 0, infra.stdout[-3000:] + infra.stderr[-1000:]
        assert "TLS is off" in infra.stdout, infra.stdout[-3000:]  # the key mode, checked

        value = _put_and_get_on_the_client_host(cluster, "e2e-key")

        # a stopped backup: the RM relaunches it over SSH
        victim = next(r for r in sorted(start["replicas"]) if r != start["primary"])
        host = cluster.lab.host_of(victim)
        old_pid = cluster.unit_pid(host, f"ftds-replica@{victim}.service")
        stopped_at = time.time()
        cluster.lab.ssh(host, f"systemctl stop ftds-replica@{victim}.service")
        incident = cluster.closed_incident(victim, stopped_at)
        status = cluster.wait_healthy()
        assert status["epoch"] == start["epoch"]
        assert cluster.unit_pid(host, f"ftds-replica@{victim}.service") not in (0, old_pid)
        assert incident["confirmed_dead"] and incident["relaunch_to_ready_ms"] is not None
        assert_reads(cluster, "e2e-key", value)

        again = cluster.deploy(*key_mode)
        assert len(_recap(again)) == 5 and not any(_recap(again).values()), again.stdout[-3000:]

        # another key in the inventory: refused, nothing restarted; then replaced on purpose
        pids = cluster.unit_pids()
        new_key = secrets.token_hex(32)
        key_file.write_text(new_key + "\n")
        refused = cluster.deploy(*key_mode, check=False)
        assert refused.returncode != 0, refused.stdout[-2000:]
        assert "holds another cluster key than the one to deploy" in refused.stdout
        assert "ftds_common_replace_cluster_key=true" in refused.stdout
        assert new_key not in refused.stdout + refused.stderr
        assert cluster.unit_pids() == pids, "a refused deploy restarted a daemon"
        cluster.wait_healthy(10)  # the tools still speak the deployed key

        replaced = cluster.deploy(*key_mode, "-e", "ftds_common_replace_cluster_key=true")
        assert new_key not in replaced.stdout + replaced.stderr
        cluster.refetch()
        assert cluster.key == new_key.encode()
        cluster.wait_healthy()
        restarted = cluster.unit_pids()
        assert all(restarted[u] not in (0, pid) for u, pid in pids.items()), restarted
    finally:
        key_file.write_text(deployed)
        cluster.deploy("-e", "ftds_common_replace_cluster_key=true")  # TLS again
        cluster.refetch()
    cluster.wait_healthy()
    assert cluster.config.tls is not None
    for h in cluster.lab.addresses:  # nothing reads the key under TLS: no host keeps it
        assert cluster.lab.ssh(h, "test ! -e /etc/ftds/cluster.key",
                               check=False).returncode == 0, f"{h} holds the cluster key"
    rerun = cluster.deploy()
    assert "holds another cluster key" not in rerun.stdout
    assert not any(_recap(rerun).values()), rerun.stdout[-3000:]


def test_g_a_held_replica_host_stopped_as_one_target_stays_down_until_released(cluster):
    """Maintenance on a replica host: hold its replica, `systemctl stop ftds.target` stops the
    replica and its LFD, the RM leaves them down and status says HELD; release, and the RM
    starts the replica (and with it its LFD) over SSH."""
    start = cluster.wait_healthy()
    victim = next(r for r in sorted(start["replicas"]) if r != start["primary"])
    host, manager = cluster.lab.host_of(victim), cluster.lab.manager
    units = f"ftds-replica@{victim}.service ftds-lfd@{victim}.service"
    cluster.lab.ssh(manager, f"ftds ctl hold {victim} --reason 'disk swap'", shared=True)
    try:
        cluster.lab.ssh(host, "systemctl stop ftds.target", shared=True)
        states = cluster.lab.ssh(host, f"systemctl is-active {units}", check=False,
                                 shared=True).stdout.split()
        assert states == ["inactive", "inactive"], states
        cluster.wait(lambda: not cluster.status()["replicas"][victim]["present"], 30,
                     f"{victim} gone per the RM")
        time.sleep(3.0)  # an unheld replica is relaunched over SSH within a second or two
        states = cluster.lab.ssh(host, f"systemctl is-active {units}", check=False,
                                 shared=True).stdout.split()
        assert states == ["inactive", "inactive"], "the RM started a held replica"
        status = cluster.lab.ssh(manager, "ftds status", check=False, shared=True)
        assert status.returncode == 1 and f"{victim} held (disk swap)" in status.stdout, \
            status.stdout
    finally:
        cluster.lab.ssh(manager, f"ftds ctl release {victim}", check=False, shared=True)
    status = cluster.wait_healthy(60)
    assert status["replicas"][victim]["held"] is None and status["epoch"] == start["epoch"]
    cluster.lab.ssh(host, "systemctl start ftds.target", shared=True)
    states = cluster.lab.ssh(host, f"systemctl is-active {units} ftds.target",
                             shared=True).stdout.split()
    assert states == ["active"] * 3, states


def test_h_preflight_names_what_to_fix_and_changes_nothing(cluster):
    """A host whose Python is too old, whose C library is not glibc, or that has no usable
    Python stops the deploy at preflight with what to fix, before anything changes."""
    cluster.wait_healthy()
    pids = cluster.unit_pids()
    # Stand-ins for a host's Python: they answer the preflight's question (version, machine,
    # C library) as a Python 3.10 and a musl-based Python would.
    fakes = {"/usr/local/bin/python-old": "3.10 x86_64 glibc2.36",
             "/usr/local/bin/python-musl": "3.11 x86_64 unknown"}
    host = cluster.lab.host_of("S1")
    try:
        for path, answer in fakes.items():
            cluster.lab.ssh(host, f"printf '#!/bin/sh\\necho \"{answer}\"\\n' > {path} && "
                            f"chmod 755 {path}", shared=True)
        old = cluster.deploy("--limit", host, "-e",
                             "ftds_common_python=/usr/local/bin/python-old", check=False)
        said = " ".join((old.stdout + old.stderr).split())
        assert old.returncode != 0
        assert f"{host} cannot run ftds: Python 3.10 at /usr/local/bin/python-old is older " \
               "than 3.11; install a newer one and set ftds_common_python" in said, said[-3000:]
        musl = cluster.deploy("--limit", host, "-e",
                              "ftds_common_python=/usr/local/bin/python-musl", check=False)
        said = " ".join((musl.stdout + musl.stderr).split())
        assert musl.returncode != 0
        assert f"{host} cannot run ftds: its Python reports the C library unknown, not glibc" \
            in said, said[-3000:]
    finally:
        cluster.lab.ssh(host, "rm -f " + " ".join(fakes), shared=True, check=False)
    missing = cluster.deploy("-e", "ftds_common_python=/usr/bin/python-missing", check=False)
    said = " ".join((missing.stdout + missing.stderr).split())
    assert missing.returncode != 0
    assert "no usable Python at /usr/bin/python-missing" in said
    assert "install python3 and python3-venv, or set ftds_common_python" in said
    assert cluster.unit_pids() == pids, "a refused deploy restarted a daemon"


def test_i_the_units_of_a_role_a_host_lost_are_stopped_and_removed(cluster):
    """A host keeps no ftds unit of a role it no longer has: a replica host's old instance
    (a renamed replica) and a client host's GFD (the manager moved away) go at the next run,
    and nothing of the cluster restarts."""
    cluster.wait_healthy()
    pids = cluster.unit_pids()
    replica_host, client_host = cluster.lab.host_of("S1"), cluster.client_host
    cluster.lab.ssh(replica_host, "systemctl enable ftds-replica@S9.service", shared=True)
    old_gfd = ("[Unit]\nDescription=an old GFD\n[Service]\nExecStart=/bin/sleep infinity\n"
               "[Install]\nWantedBy=multi-user.target\n")
    cluster.lab.ssh(client_host, f"printf '{old_gfd}' > /etc/systemd/system/ftds-gfd.service"
                    " && systemctl daemon-reload && systemctl enable --now ftds-gfd.service",
                    shared=True)
    # a replica host's launch account, as a host that was one keeps it: the RM's key in a
    # root-owned home, and the sudo rule
    cluster.lab.ssh(client_host, "useradd --system --home-dir /var/lib/ftds-launch "
                    "--shell /bin/sh ftds-launch && install -d -m 0755 /var/lib/ftds-launch/.ssh"
                    " && echo 'ssh-ed25519 AAAA rm' > /var/lib/ftds-launch/.ssh/authorized_keys"
                    " && echo 'ftds-launch ALL=(root) NOPASSWD: /usr/bin/systemctl start x'"
                    " > /etc/sudoers.d/ftds-launch && chmod 0440 /etc/sudoers.d/ftds-launch",
                    shared=True)
    result = cluster.deploy("--tags", "ftds_run")
    assert re.search(rf"^{client_host}\s*:\s*ok=\d+\s+changed=[1-9]", result.stdout, re.M)
    gone = cluster.lab.ssh(client_host, "systemctl is-active ftds-gfd.service; "
                           "test -e /etc/systemd/system/ftds-gfd.service && echo present || "
                           "echo absent", shared=True, check=False).stdout.split()
    assert gone == ["inactive", "absent"], gone
    launch = cluster.lab.ssh(client_host, "getent passwd ftds-launch || echo no-account; "
                             "ls -d /var/lib/ftds-launch /etc/sudoers.d/ftds-launch 2>&1 | "
                             "grep -c 'No such file'", shared=True, check=False).stdout.split()
    assert launch == ["no-account", "2"], launch
    kept = cluster.lab.ssh(replica_host, "getent passwd ftds-launch | cut -d: -f1; "
                           "test -e /etc/sudoers.d/ftds-launch && echo rule", shared=True,
                           check=False).stdout.split()
    assert kept == ["ftds-launch", "rule"], kept  # a replica host keeps them
    enabled = cluster.lab.ssh(replica_host, "systemctl is-enabled ftds-replica@S9.service",
                              shared=True, check=False).stdout.strip()
    assert enabled == "disabled", enabled
    assert cluster.unit_pids() == pids, "removing a lost role's units restarted a daemon"
    again = cluster.deploy("--tags", "ftds_run")
    recap = re.findall(r"^(h\d+)\s*:\s*ok=\d+\s+changed=(\d+)", again.stdout, re.M)
    assert recap and all(int(changed) == 0 for _, changed in recap), again.stdout[-3000:]


def other_python() -> str | None:
    """A CPython 3.11+ of another minor version than the hosts' (Debian 12: 3.11), for a
    controller that does not share the hosts' Python."""
    found = [shutil.which(f"python3.{minor}") for minor in range(12, 16)]
    found += sorted(glob.glob("/root/.pyenv/versions/3.1[2-9]*/bin/python3"))
    for path in filter(None, found):
        probe = subprocess.run([path, "-c", "import ensurepip, venv"], capture_output=True,
                               check=False)
        if probe.returncode == 0:
            return path
    return None


def test_j_a_controller_on_another_python_deploys_the_hosts_wheels(cluster, tmp_path):
    """The wheels follow the hosts' platform, not the controller's: ansible-playbook run from
    a Python 3.12+ venv builds the Python 3.11 wheelhouse the hosts need, byte for byte the
    one the usual controller builds, so the deploy succeeds and restarts nothing."""
    python = other_python()
    if python is None:
        pytest.skip("no CPython 3.12 or later on this machine for a second controller")
    cluster.wait_healthy()
    pids = cluster.unit_pids()
    venv = tmp_path / "controller"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "ansible-core==2.19.14"], check=True, timeout=600)
    minor = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import sys; print(sys.version_info[1])"], capture_output=True,
                           text=True, check=True).stdout.strip()
    assert int(minor) >= 12
    wheelhouse = tmp_path / "wheelhouse"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible" / "ansible.cfg"),
           "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    result = subprocess.run([str(venv / "bin" / "ansible-playbook"), "-i",
                             str(INVENTORY / "hosts.yml"), str(REPO / "ansible" / "site.yml"),
                             "-e", f"ftds_common_wheelhouse={wheelhouse}"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=900,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    built = sorted(p.name for p in wheelhouse.iterdir() if not p.name.startswith("."))
    assert built == ["3.11-x86_64-glibc2.36"], built  # the hosts' platform, not 3.{minor}
    ours = (wheelhouse / built[0] / "requirements.txt").read_text()
    usual = (REPO / "wheelhouse" / built[0] / "requirements.txt").read_text()
    assert ours == usual  # the same wheels, pinned by the same hashes: the same package id
    recap = re.findall(r"^(h\d+)\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0",
                       result.stdout, re.M)
    # one change in all: the build of the new wheelhouse (on the controller, counted for the
    # host it ran for); on the hosts, nothing
    assert len(recap) == 5 and sum(int(c) for _, c in recap) == 1, result.stdout[-3000:]
    assert re.search(r"^changed: \[h\d+ -> localhost\]", result.stdout, re.M)
    assert cluster.unit_pids() == pids, "a deploy from another controller restarted a daemon"


def test_k_a_rerun_repairs_drift_it_would_otherwise_skip(cluster):
    """The re-run skips a file or unit only when the state it read is what it would make:
    an edited launch gate, a loosened sudo rule, a unit file with another mode, a stopped
    ftds.target and a launch account with another shell are each put back by one run."""
    cluster.wait_healthy()
    host = cluster.lab.host_of("S2")
    gate = "/usr/local/lib/ftds/launch-gate"
    before = cluster.lab.ssh(host, f"sha256sum {gate} /etc/sudoers.d/ftds-launch | cut -c1-64",
                             shared=True).stdout.split()
    cluster.lab.ssh(host, f"echo '# edited' >> {gate}; chmod 0644 /etc/sudoers.d/ftds-launch; "
                    "chmod 0600 /etc/systemd/system/ftds-lfd@.service; "
                    "usermod -s /bin/bash ftds-launch; systemctl disable ftds.target",
                    shared=True)
    result = cluster.deploy()
    assert re.search(rf"^{host}\s*:\s*ok=\d+\s+changed=[1-9]", result.stdout, re.M), \
        result.stdout[-3000:]
    after = cluster.lab.ssh(host, f"sha256sum {gate} /etc/sudoers.d/ftds-launch | cut -c1-64; "
                            "stat -c %a /etc/sudoers.d/ftds-launch "
                            "/etc/systemd/system/ftds-lfd@.service; "
                            "getent passwd ftds-launch | cut -d: -f7; "
                            "systemctl is-enabled ftds.target", shared=True).stdout.split()
    assert after == [*before, "440", "644", "/bin/sh", "enabled"], after
    again = cluster.deploy()
    recap = re.findall(r"^(h\d+)\s*:\s*ok=\d+\s+changed=(\d+)", again.stdout, re.M)
    assert recap and all(int(changed) == 0 for _, changed in recap), again.stdout[-3000:]


def test_l_a_ca_rotation_under_load_loses_nothing_and_restarts_nothing(cluster, tmp_path):
    """Mutual TLS is the default. A CA rotation in two runs while clients on h5 write (a
    --check run first only says what it would issue): after the first, every host trusts both
    CAs and every certificate (the clients' and the controller's too) is the new CA's; a
    backup is killed in between (its successor and every link it makes use the new
    certificates); the second drops the old CA. No daemon restarts for it, the clients'
    history is linearizable and loses no acknowledged write (the checker's verdict), and a
    certificate of the old CA no longer gets in."""
    from ftds.config import load_config
    from ftds.rmclient import RMUnreachable, rm_request

    cluster.wait_healthy()
    tls = cluster.config.tls
    assert tls is not None, "the lab was deployed without TLS (the default)"
    # the controller's admin identity before the rotation: the old CA's
    old_identity = tmp_path / "old"
    old_identity.mkdir(mode=0o700)
    for name in ("admin.crt", "admin.key"):
        shutil.copy2(Path(tls.dir) / name, old_identity / name)
    raw = yaml.safe_load(cluster.path.read_text())
    raw["tls"]["dir"] = str(old_identity)
    old_path = tmp_path / "old.yml"
    old_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    old_config = load_config(old_path)
    asyncio.run(rm_request(old_config, b"", "status_req"))  # gets in before the rotation

    pids = cluster.unit_pids()
    bundle = "grep -c BEGIN /etc/ftds/tls/ca.crt"
    cluster.start_clients("R1", sessions=4, rate=60)
    try:
        pki = Path(tls.ca).parent  # the controller's pki directory of this cluster
        assert not (pki / "old").exists(), f"a rotation is under way in {pki}"
        # --check says what the rotation would issue and changes nothing, here or on a host
        before = {p: p.read_bytes() for p in sorted(pki.rglob("*")) if p.is_file()}
        dry = cluster.deploy("--check", "-e", "ftds_common_tls_rotate_ca=true")
        assert "would issue: rotation: the CA moved to old/, CA, " in dry.stdout, \
            dry.stdout[-3000:]
        assert {p: p.read_bytes() for p in sorted(pki.rglob("*")) if p.is_file()} == before
        for h in cluster.lab.addresses:
            assert cluster.lab.ssh(h, bundle, shared=True).stdout.strip() == "1", h
        cluster.deploy("-e", "ftds_common_tls_rotate_ca=true")
        assert (pki / "old" / "ca.crt").exists(), "no rotation"
        for h in cluster.lab.addresses:
            assert cluster.lab.ssh(h, bundle, shared=True).stdout.strip() == "2", h
        assert (Path(tls.dir) / "admin.crt").read_bytes() != \
            (old_identity / "admin.crt").read_bytes(), "the controller's certificate not renewed"
        assert cluster.unit_pids() == pids, "the rotation restarted a daemon"

        status = cluster.wait_healthy()
        victim = next(r for r in sorted(status["replicas"]) if r != status["primary"])
        host = cluster.lab.host_of(victim)
        killed_at = time.time()
        cluster.lab.ssh(host, f"systemctl kill -s KILL ftds-replica@{victim}.service")
        cluster.closed_incident(victim, killed_at)
        cluster.wait_healthy()
        pids[(host, f"ftds-replica@{victim}.service")] = \
            cluster.unit_pid(host, f"ftds-replica@{victim}.service")

        cluster.deploy("-e", "ftds_common_tls_drop_old_ca=true")
        assert not (pki / "old").exists(), "the old CA was not dropped"
        for h in cluster.lab.addresses:
            assert cluster.lab.ssh(h, bundle, shared=True).stdout.strip() == "1", h
        cluster.wait_healthy()
        time.sleep(2.0)  # the clients keep writing under the new CA alone
    finally:
        summary = cluster.stop_clients_and_check()
    assert summary["failed"] == 0 and summary["acked"] > 100, summary
    assert cluster.unit_pids() == pids, "a daemon restarted for the rotation"
    with pytest.raises(RMUnreachable):
        asyncio.run(rm_request(old_config, b"", "status_req"))
    again = cluster.deploy()
    assert len(_recap(again)) == 5 and not any(_recap(again).values()), again.stdout[-3000:]


def test_m_a_revoked_certificate_is_refused_and_its_identity_gets_a_new_key(cluster):
    """-e ftds_common_tls_revoke=[serials] with h5's client certificate and S2's: both go on
    the CRL every host gets; h5's client and S2 get new certificates with new keys (S2's
    daemon restarts with it, nothing else restarts); the old client identity is refused at its
    next connection while the new one reads what was written; the same run again changes
    nothing."""
    from cryptography import x509

    cluster.wait_healthy()
    tls = cluster.config.tls
    assert tls is not None, "the lab was deployed without TLS (the default)"
    pki = Path(tls.ca).parent

    def serial(path: Path) -> int:
        return x509.load_pem_x509_certificate(path.read_bytes()).serial_number

    h5, s2_host = cluster.client_host, cluster.lab.host_of("S2")
    client_crt, s2_crt = pki / h5 / "client.crt", pki / s2_host / "S2.crt"
    old = {"client": serial(client_crt), "S2": serial(s2_crt)}
    old_keys = {"client": (pki / h5 / "client.key").read_bytes(),
                "S2": (pki / s2_host / "S2.key").read_bytes()}
    # h5 keeps its current client identity aside, with a cluster file naming it
    cluster.lab.ssh(h5, "rm -rf /root/old-tls && mkdir -m 0700 /root/old-tls && "
                    "cp /etc/ftds/tls/client.crt /etc/ftds/tls/client.key /root/old-tls/ && "
                    "sed 's|^  dir: .*|  dir: \"/root/old-tls\"|' /etc/ftds/cluster.yml "
                    "> /root/old-tls/cluster.yml", shared=True)
    old_client = "timeout 60 ftds client -q --timeout 8 -c /root/old-tls/cluster.yml get e2e-rev"
    value = _put_and_get_on_the_client_host(cluster, "e2e-rev")
    got = cluster.lab.ssh(h5, old_client, check=False)
    assert got.returncode == 0 and value in got.stdout, got.stdout + got.stderr  # before: in
    pids = cluster.unit_pids()

    revoke = json.dumps({"ftds_common_tls_revoke": [f"{s:x}" for s in old.values()]})
    cluster.deploy("-e", revoke)
    crl = x509.load_pem_x509_crl((pki / "trust.crl").read_bytes())
    for name, number in old.items():
        assert crl.get_revoked_certificate_by_serial_number(number) is not None, name
    assert serial(client_crt) != old["client"] and serial(s2_crt) != old["S2"]
    assert (pki / h5 / "client.key").read_bytes() != old_keys["client"], "the key was kept"
    assert (pki / s2_host / "S2.key").read_bytes() != old_keys["S2"], "the key was kept"
    digest = hashlib.sha256((pki / "trust.crl").read_bytes()).hexdigest()
    for h in cluster.lab.addresses:
        on_host = cluster.lab.ssh(h, "sha256sum /etc/ftds/tls/ca.crl", shared=True).stdout
        assert on_host.split()[0] == digest, f"{h} has another CRL"
    status = cluster.wait_healthy()
    assert all(r["ready"] for r in status["replicas"].values())
    after = cluster.unit_pids()
    s2_unit = (s2_host, "ftds-replica@S2.service")
    assert after[s2_unit] not in (0, pids[s2_unit]), "S2 did not restart with its new key"
    assert {u: p for u, p in after.items() if u != s2_unit} == \
        {u: p for u, p in pids.items() if u != s2_unit}, "another daemon restarted"

    refused = cluster.lab.ssh(h5, old_client, check=False)
    assert refused.returncode != 0 and value not in refused.stdout, refused.stdout
    assert_reads(cluster, "e2e-rev", value)  # h5's new identity

    again = cluster.deploy("-e", revoke)
    assert len(_recap(again)) == 5 and not any(_recap(again).values()), again.stdout[-3000:]
    assert cluster.unit_pids() == after


def test_n_a_hung_primary_is_fenced_by_its_lfd_and_replaced_as_after_a_crash(cluster):
    """With ``fence_hung_primary`` on (a reload: nothing restarts), a primary frozen with
    SIGSTOP is killed by its own LFD, which reports a crash (its process seen gone): the RM
    promotes a backup without waiting out the lease and relaunches the old one as a backup.
    Nothing acknowledged is lost meanwhile."""
    cluster.wait_healthy()
    pids = cluster.unit_pids()
    change = INVENTORY / "group_vars" / "all" / "61-fencing.yml"
    try:
        change.write_text(yaml.safe_dump({"ftds_common_tunables": {"fence_hung_primary": True}}))
        since = cluster.now_on_lab()
        cluster.deploy("--tags", "ftds_configure")
        for rid, host in cluster.lab.replica_hosts.items():
            cluster.wait(lambda h=host, r=rid: "fence_hung_primary: false -> true"
                         in cluster.journal(h, f"ftds-lfd@{r}.service", since),
                         30, f"the LFD of {rid} to take fence_hung_primary")
        assert cluster.unit_pids() == pids, "a daemon was restarted by a tunable's change"

        start = cluster.wait_healthy()
        cluster.start_clients("N1")
        old = start["primary"]
        host = cluster.lab.host_of(old)
        unit = f"ftds-replica@{old}.service"
        pid = cluster.unit_pid(host, unit)
        since = cluster.now_on_lab()
        hung_at = time.time()
        cluster.lab.ssh(host, f"kill -STOP {pid}")
        new = cluster.wait(lambda: (s := cluster.status()) and s["primary"] != old
                           and s["primary"], 30, "a new primary")
        incident = cluster.closed_incident(old, hung_at, timeout=90)
        status = cluster.wait_healthy(90)
        lfd_log = cluster.journal(host, f"ftds-lfd@{old}.service", since)
        assert f"fenced hung primary {old}: killed process {pid}" in lfd_log, lfd_log[-2000:]
        assert incident["cause"].startswith("crash: ") and "killed (fenced)" in incident["cause"] \
            and incident["confirmed_dead"], incident
        assert incident["was_primary"] and incident["new_primary_id"] == new, incident
        assert cluster.unit_pid(host, unit) not in (0, pid), "the frozen process is still there"
        assert status["primary"] == new and status["replicas"][old]["role"] == "backup"
        cluster.stop_clients_and_check()
    finally:
        change.unlink(missing_ok=True)
        cluster.deploy()
