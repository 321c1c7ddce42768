"""Software, configuration, secrets and service accounts on every ftds host."""

from __future__ import annotations

from conftest import CONFIG, FTDS


def test_venv_installed(host):
    ftds = host.file(FTDS)
    assert ftds.exists and ftds.mode & 0o111, f"{FTDS} is not installed"
    assert host.run(f"{FTDS} --help").rc == 0
    marker = host.file("/opt/ftds/.package-id")
    assert marker.exists and len(marker.content_string.strip()) == 64


def test_pinned_dependencies_only(host):
    """The venv holds exactly the wheelhouse's pinned versions (no index was used)."""
    reqs = host.file("/var/cache/ftds/wheelhouse/requirements.txt").content_string
    pinned = {}
    for line in reqs.splitlines():
        if line and not line.startswith("#"):
            name, version = line.split()[0].split("==")
            pinned[name.lower()] = version
    frozen = host.run("/opt/ftds/bin/pip freeze --all --disable-pip-version-check")
    assert frozen.rc == 0
    installed = {}
    for line in frozen.stdout.splitlines():
        if "==" in line:
            name, version = line.split("==")
            installed[name.lower().replace("_", "-")] = version
    for name, version in pinned.items():
        assert installed.get(name) == version, f"{name}: pinned {version}, installed " \
                                               f"{installed.get(name)}"


def test_config_dir(host):
    d = host.file("/etc/ftds")
    assert d.is_directory and d.user == "root" and d.group == "root" and d.mode == 0o755


def test_cluster_file(host, config):
    f = host.file(CONFIG)
    assert f.user == "root" and f.group == "root" and f.mode == 0o644
    if "tls" in config:  # mutual TLS (ftds_tls): no cluster key in the file (test_tls.py)
        assert "key_file" not in config
    else:
        assert config["key_file"] == "/etc/ftds/cluster.key"
    assert config["launcher"]["kind"] == "ssh"
    assert config["launcher"]["ssh"]["known_hosts"] == "/etc/ftds/known_hosts"
    assert config["rm"]["state_dir"] == "/var/lib/ftds-rm"


def test_cluster_key_root_only(host, role, config):
    key = host.file("/etc/ftds/cluster.key")
    if "tls" in config:  # nothing reads it: no host of a TLS cluster keeps one
        assert not key.exists, "a host of a TLS cluster holds the cluster key"
        return
    assert key.exists
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert key.size >= 33  # >= 32 characters and a newline


def test_config_valid(host):
    result = host.run(f"{FTDS} check-config --config {CONFIG}")
    assert result.rc == 0, result.stderr


def test_tools_on_path(host, role):
    if not (role.client or role.manager):
        return
    link = host.file("/usr/local/bin/ftds")
    assert link.is_symlink and link.linked_to == FTDS


def _locked(host, user: str) -> bool:
    """No usable password: the shadow field is empty of a hash ('!...' or '*')."""
    shadow = host.run(f"getent shadow {user}").stdout.split(":")
    return len(shadow) > 1 and (shadow[1].startswith("!") or shadow[1] == "*")


def test_service_user(host, role):
    user = host.user("ftds")
    if not role.runs_daemons:
        assert not user.exists, "ftds runs no daemon here: no service user needed"
        return
    assert user.exists and user.shell == "/usr/sbin/nologin"
    assert user.home == "/nonexistent" and not host.file("/nonexistent").exists
    assert _locked(host, "ftds")


def test_rm_user(host, role):
    user = host.user("ftds-rm")
    if not role.manager:
        assert not user.exists
        return
    assert user.exists and user.shell == "/usr/sbin/nologin"
    assert "ftds" not in user.groups, "the RM's user must not share the ftds group"
    assert _locked(host, "ftds-rm")


def test_launch_account(host, role):
    user = host.user("ftds-launch")
    if not role.replica:
        assert not user.exists, "only replica hosts have the launch account"
        return
    # sshd runs commands through the account's shell, so it has one; the forced command and
    # sudoers limit what it may run (test_launch.py).
    assert user.exists and user.shell == "/bin/sh"
    assert _locked(host, "ftds-launch"), "the launch account must have no password"
    for path in (user.home, f"{user.home}/.ssh", f"{user.home}/.ssh/authorized_keys"):
        f = host.file(path)
        assert f.user == "root" and not f.mode & 0o022, f"{path}: must be root-owned, " \
                                                        "not writable by the account"


def test_rm_secrets(host, role, config):
    if not role.manager:
        assert not host.file("/etc/ftds/rm_ssh_key").exists
        return
    key = host.file("/etc/ftds/rm_ssh_key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    known = host.file("/etc/ftds/known_hosts")
    assert known.mode == 0o644
    names = set()
    for line in known.content_string.splitlines():
        if line and not line.startswith("#"):
            names.update(line.split()[0].split(","))
    for r in config["replicas"]:
        assert r["ssh_host"] in names, f"no pinned host key for {r['id']} ({r['ssh_host']})"
    state = host.file("/var/lib/ftds-rm")
    assert state.is_directory and state.user == "ftds-rm" and state.mode == 0o700
