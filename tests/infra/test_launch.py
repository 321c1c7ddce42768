"""The RM's launch account on replica hosts: exactly as narrow as intended."""

from __future__ import annotations

import re

import pytest

LAUNCH = "ftds-launch"


@pytest.fixture
def rid(role) -> str:
    if not role.replica:
        pytest.skip("not a replica host")
    return role.replica_id


def allowed_commands(host) -> list[str]:
    out = host.check_output(f"sudo -l -U {LAUNCH}")
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "may run the following commands" in line)
    rules = [line.strip() for line in lines[start + 1:] if line.strip()]
    commands = []
    for rule in rules:
        match = re.fullmatch(r"\(root\) ((?:[A-Z]+: )+)(.*)", rule)
        assert match, f"unexpected sudo rule: {rule!r}"
        tags = set(match.group(1).replace(":", "").split())
        assert tags == {"NOPASSWD", "NOEXEC"}, rule
        commands += [c.strip() for c in match.group(2).split(",")]
    return commands


def test_sudo_rule_exactly_three_commands(host, rid):
    expected = [f"/usr/bin/systemctl {verb} ftds-replica@{rid}.service"
                for verb in ("start", "restart", "status")]
    assert allowed_commands(host) == expected


@pytest.mark.parametrize("command", [
    "/usr/bin/systemctl stop ftds-replica@{rid}.service",
    "/usr/bin/systemctl start ftds-replica@{rid}.service --no-block",
    "/usr/bin/systemctl start ftds-replica@{other}.service",
    "/usr/bin/systemctl start ftds-lfd@{rid}.service",
    "/usr/bin/systemctl start ftds-replica@{rid}.service ssh.service",
    "/usr/bin/systemctl edit ftds-replica@{rid}.service",
    "/bin/sh",
])
def test_sudo_refuses(host, rid, command):
    other = "S99" if rid != "S99" else "S98"
    cmd = command.format(rid=rid, other=other)
    assert host.run(f"sudo -l -U {LAUNCH} {cmd}").rc != 0, f"sudo would allow: {cmd}"


def test_sudo_allows_the_three(host, rid):
    for verb in ("start", "restart", "status"):
        cmd = f"/usr/bin/systemctl {verb} ftds-replica@{rid}.service"
        assert host.run(f"sudo -l -U {LAUNCH} {cmd}").rc == 0, cmd


def test_sudoers_file(host, rid):
    f = host.file("/etc/sudoers.d/ftds-launch")
    assert (f.user, f.group, f.mode) == ("root", "root", 0o440)
    assert host.run("visudo -cq").rc == 0


def test_authorized_key_restricted(host, rid, config):
    keys = host.file("/var/lib/ftds-launch/.ssh/authorized_keys").content_string
    entries = [line for line in keys.splitlines() if line and not line.startswith("#")]
    assert len(entries) == 1, "exactly one key: the RM's"
    options = entries[0].split(" ", 1)[0]
    assert options.startswith("restrict,")
    assert 'from="' in options and config["rm"]["host"] in options
    assert 'command="/usr/local/lib/ftds/launch-gate"' in options


@pytest.mark.parametrize("original,allowed", [
    ("sudo -n /usr/bin/systemctl status ftds-replica@{rid}.service", True),
    ("sudo -n /usr/bin/systemctl status ftds-replica@{rid}.service; id", False),
    ("sudo -n /usr/bin/systemctl stop ftds-replica@{rid}.service", False),
    ("id", False),
    ("", False),
])
def test_launch_gate(host, rid, original, allowed):
    """The forced command runs the RM's exact commands and refuses anything else."""
    command = original.format(rid=rid)
    result = host.run(f"runuser -u {LAUNCH} -- env SSH_ORIGINAL_COMMAND='{command}' "
                      f"/usr/local/lib/ftds/launch-gate")
    if allowed:
        assert result.rc in (0, 3) and "ftds-replica@" in result.stdout, result.stderr
    else:
        assert result.rc == 126 and "not allowed" in result.stderr
