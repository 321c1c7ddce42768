"""The RM's SSH launcher against a real SSH server: paramiko's server side on 127.0.0.1.

The server accepts the RM's key, runs nothing, and answers each command as the test says: exit
0, fail, or never (a host cut off mid-command); another one takes connections and never speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest

from ftds import local
from ftds.config import ConfigError, ReplicaSpec, SshLauncher, load_config, parse_config
from ftds.rm.launcher import LaunchError, SshLauncherImpl
from ftds.rm.relaunch import Relauncher

HOST = "127.0.0.1"


class Host(paramiko.ServerInterface):
    """One SSH host: ``answer(command)`` says "ok", "fail" or "hang" (no exit status, ever)."""

    def __init__(self, host_key: paramiko.PKey, rm_key: paramiko.PKey,
                 answer: Callable[[str], str]) -> None:
        self.host_key = host_key
        self.rm_key = rm_key
        self.answer = answer
        self.commands: list[str] = []
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self._transports: list[paramiko.Transport] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(self.host_key)
            self._transports.append(transport)
            with contextlib.suppress(paramiko.SSHException, EOFError, OSError):
                transport.start_server(server=self)

    # -- paramiko.ServerInterface --------------------------------------------------------
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        ok = username == "ftds-launch" and key == self.rm_key
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode()
        self.commands.append(text)
        outcome = self.answer(text)
        if outcome != "hang":
            threading.Thread(target=self._reply, args=(channel, outcome), daemon=True).start()
        return True

    @staticmethod
    def _reply(channel: paramiko.Channel, outcome: str) -> None:
        time.sleep(0.01)
        if outcome == "fail":
            channel.send_stderr(b"Job for ftds-replica@S2.service failed.\n")
            channel.send_exit_status(5)
        else:
            channel.send_exit_status(0)
        channel.close()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for transport in self._transports:
            transport.close()


class Mute:
    """A host that takes TCP connections and never says a word (no SSH banner)."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.conns.append(self.listener.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture(scope="module")
def keys() -> tuple[paramiko.PKey, paramiko.PKey]:
    return paramiko.ECDSAKey.generate(), paramiko.ECDSAKey.generate()


@pytest.fixture
def site(tmp_path: Path, keys: tuple[paramiko.PKey, paramiko.PKey]) -> Iterator[dict]:
    """An RM identity, a host, its pinned key; ``make(answer)`` for more hosts."""
    host_key, rm_key = keys
    key_file = tmp_path / "rm_ssh_key"
    rm_key.write_private_key_file(str(key_file))
    hosts: list[Host | Mute] = []

    def make(answer: Callable[[str], str] = lambda _c: "ok") -> Host:
        host = Host(host_key, rm_key, answer)
        hosts.append(host)
        return host

    def pin(port: int, key: paramiko.PKey = host_key) -> Path:
        path = tmp_path / f"known_hosts_{port}"
        path.write_text(f"[{HOST}]:{port} {key.get_name()} {key.get_base64()}\n")
        return path

    def settings(port: int, known_hosts: Path, **changes: object) -> SshLauncher:
        base = SshLauncher(port=port, key_file=str(key_file), known_hosts=str(known_hosts),
                           connect_timeout=1.0, command_timeout=1.0)
        return replace(base, **changes)  # type: ignore[arg-type]

    def mute() -> Mute:
        host = Mute()
        hosts.append(host)
        return host

    yield {"make": make, "pin": pin, "settings": settings, "mute": mute, "host_key": host_key}
    for host in hosts:
        host.close()


def spec(rid: str = "S2") -> ReplicaSpec:
    return ReplicaSpec(rid, HOST, 7100, 7101, HOST)


def launch(settings: SshLauncher, rid: str = "S2", restart: bool = False) -> str:
    return asyncio.run(SshLauncherImpl(settings).launch(spec(rid), restart))


def test_a_start_runs_the_unit_command_on_the_pinned_host(site):
    host = site["make"]()
    result = launch(site["settings"](host.port, site["pin"](host.port)))
    assert host.commands == ["sudo -n /usr/bin/systemctl start ftds-replica@S2.service"]
    assert result.startswith("ran 'sudo -n /usr/bin/systemctl start ftds-replica@S2.service'")
    launch(site["settings"](host.port, site["pin"](host.port)), restart=True)
    assert host.commands[-1] == "sudo -n /usr/bin/systemctl restart ftds-replica@S2.service"


def test_a_failing_command_reports_its_exit_status_and_stderr(site):
    host = site["make"](lambda _c: "fail")
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port)))
    assert "exited 5" in str(err.value) and "Job for ftds-replica@S2.service failed" in \
        str(err.value)
    assert not err.value.unreachable  # the host ran it: this attempt counts


def test_an_unknown_host_key_is_refused_with_how_to_pin_it(site, tmp_path):
    host = site["make"]()
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, empty))
    message = str(err.value)
    assert host.commands == []  # never logged in
    assert f"is not pinned in {empty}" in message and "refusing to log in" in message
    assert "SHA256:" in message and f"ssh-keyscan -p {host.port} -t ecdsa {HOST}" in message
    assert "ssh-keygen -lf /etc/ssh/ssh_host_ecdsa_key.pub" in message


def test_a_changed_host_key_is_refused(site):
    host = site["make"]()
    other = paramiko.ECDSAKey.generate()
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port, other)))
    assert "host key of 127.0.0.1 changed" in str(err.value) and host.commands == []


def test_a_missing_known_hosts_file_says_how_to_pin(site, tmp_path):
    host = site["make"]()
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, tmp_path / "absent"))
    assert "cannot read the pinned host keys" in str(err.value)
    assert "ssh-keyscan" in str(err.value) and host.commands == []


def test_an_empty_known_hosts_setting_is_a_config_error():
    data = {"key_file": "k", "replicas": [{"id": "S1", "host": "10.0.0.1", "port": 7100,
                                           "control_port": 7101}],
            "gfd": {"host": "10.0.0.4", "port": 7200}, "rm": {"host": "10.0.0.4", "port": 7201},
            "launcher": {"kind": "ssh", "ssh": {"known_hosts": ""}}}
    with pytest.raises(ConfigError, match=r"launcher\.ssh\.known_hosts: must name the file"):
        parse_config(data)
    del data["launcher"]
    assert parse_config(data).ssh.known_hosts == "/etc/ftds/known_hosts"


def test_a_host_that_never_sends_its_banner_is_given_up_on_in_time(site):
    mute = site["mute"]()
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](mute.port, site["pin"](mute.port), connect_timeout=0.3))
    took = time.monotonic() - start
    assert err.value.unreachable and took < 3, (took, str(err.value))


def test_a_host_cut_mid_command_is_given_up_on_after_command_timeout(site):
    host = site["make"](lambda _c: "hang")
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port), command_timeout=0.5))
    took = time.monotonic() - start
    assert host.commands and err.value.unreachable  # not counted against the budget
    assert "no exit status within 0.5s" in str(err.value) or "no progress" in str(err.value)
    assert 0.4 < took < 3, took


def test_a_relaunch_hung_on_a_cut_host_blocks_neither_another_replica_nor_the_next_try(
        site, tmp_path):
    """S1's host is cut off mid-command, S2's answers: S2 is started while S1's attempt hangs,
    and S1's next attempt follows the first one's timeout instead of waiting on it."""
    host = site["make"](lambda c: "hang" if "@S1." in c else "ok")
    path = local.write_cluster(tmp_path / "c", 3, base=41300, tunables={
        "relaunch_timeout": 5.0, "relaunch_backoff": 0.05, "relaunch_backoff_max": 0.05})
    config = load_config(path)
    config = replace(config, launcher="ssh", replicas=tuple(
        replace(r, ssh_host=HOST) for r in config.replicas))
    launcher = SshLauncherImpl(site["settings"](host.port, site["pin"](host.port),
                                                command_timeout=0.6))
    issued: list[tuple[str, float]] = []
    relauncher = Relauncher(config, launcher, lambda rid, at: issued.append((rid, at)))

    async def main() -> tuple[dict[str, float], str]:
        seen: dict[str, float] = {}
        first_try = ""
        start = time.monotonic()
        while time.monotonic() - start < 4 and len(seen) < 2:
            relauncher.tick(["S1", "S2"])
            if "S2" not in seen and relauncher.states["S2"].last_result.startswith("ran "):
                seen["S2"] = time.monotonic() - start
            if "S1 again" not in seen and relauncher.states["S1"].total >= 2:
                seen["S1 again"] = time.monotonic() - start
                first_try = relauncher.states["S1"].last_result
            await asyncio.sleep(0.01)
        await relauncher.stop()
        return seen, first_try

    seen, first_try = asyncio.run(main())
    assert seen.get("S2", 99) < 0.6, seen  # started while S1's attempt hung
    assert 0.5 < seen.get("S1 again", 99) < 3, seen  # not held beyond its command_timeout
    assert "gave no exit status within 0.6s" in first_try, first_try
    # A host cut off says nothing about the replica: that attempt is not counted.
    assert relauncher.budget_left("S1") == config.tunables.restart_budget - 1
