"""The RM's SSH launcher against a real SSH server: paramiko's server side on 127.0.0.1.

The server accepts the RM's key, runs nothing, and answers each command as the test says: exit
0, fail, never (a host cut off mid-command) or not even the exec request; it can also stall on the
login (a host cut off after the key exchange). Another one takes connections and never speaks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ftds import local
from ftds.config import ConfigError, ReplicaSpec, SshLauncher, load_config, parse_config
from ftds.rm.launcher import LaunchError, SshLauncherImpl
from ftds.rm.relaunch import Relauncher

HOST = "127.0.0.1"


class Host(paramiko.ServerInterface):
    """One SSH host: ``answer(command)`` says "ok", "fail", "hang" (no exit status, ever) or
    "stall" (the exec request itself is never answered). ``stall_auth``: the login is never
    answered (TCP, banner and key exchange are fine)."""

    def __init__(self, host_key: paramiko.PKey, rm_key: paramiko.PKey,
                 answer: Callable[[str], str], stall_auth: bool = False) -> None:
        self.host_key = host_key
        self.rm_key = rm_key
        self.answer = answer
        self.stall_auth = stall_auth
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
        if self.stall_auth:
            self._stop.wait()  # until the test ends: the host never answers the login
            return paramiko.AUTH_FAILED
        ok = username == "ftds-launch" and key == self.rm_key
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        text = command.decode()
        self.commands.append(text)
        outcome = self.answer(text)
        if outcome == "stall":
            self._stop.wait()  # until the test ends: the exec request is never answered
            return False
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


KEY_TYPES = ("ed25519", "ecdsa", "rsa")  # ed25519: what the deployment generates


def write_rm_key(path: Path, kind: str) -> paramiko.PKey:
    """A new RM identity of type ``kind`` in ``path`` (unencrypted, as ssh-keygen writes it)."""
    if kind == "ed25519":
        path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
        return paramiko.Ed25519Key(filename=str(path))
    key: paramiko.PKey = paramiko.ECDSAKey.generate() if kind == "ecdsa" else \
        paramiko.RSAKey.generate(2048)
    key.write_private_key_file(str(path))
    return key


@pytest.fixture
def site(tmp_path: Path, keys: tuple[paramiko.PKey, paramiko.PKey]) -> Iterator[dict]:
    """An RM identity, a host, its pinned key; ``make(answer)`` for more hosts."""
    host_key, rm_key = keys
    key_file = tmp_path / "rm_ssh_key"
    rm_key.write_private_key_file(str(key_file))
    hosts: list[Host | Mute] = []

    def make(answer: Callable[[str], str] = lambda _c: "ok", accepts: paramiko.PKey = rm_key,
             stall_auth: bool = False) -> Host:
        host = Host(host_key, accepts, answer, stall_auth)
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


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_a_host_that_stalls_the_login_is_unreachable_not_a_refused_key(site, tmp_path, kind):
    """TCP, banner and key exchange are fine, then the host never answers the login: a cut
    host, not a key missing from authorized_keys, so the attempt is not charged."""
    key_file = tmp_path / f"rm_{kind}"
    rm_key = write_rm_key(key_file, kind)
    host = site["make"](accepts=rm_key, stall_auth=True)
    start = time.monotonic()
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port), key_file=str(key_file),
                                connect_timeout=0.5))
    took = time.monotonic() - start
    message = str(err.value)
    assert err.value.unreachable, message
    assert "refused" not in message and "authorized_keys" not in message, message
    assert "expected" not in message, message  # not another key type's parse error
    assert "no answer to the login within 0.5s" in message, message
    assert took < 3, took


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_a_key_the_host_refuses_is_reported_as_refused(site, tmp_path, kind):
    key_file = tmp_path / f"rm_{kind}"
    write_rm_key(key_file, kind)
    host = site["make"]()  # accepts the fixture's key only
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port), key_file=str(key_file)))
    message = str(err.value)
    assert not err.value.unreachable, message  # the host answered: this attempt counts
    assert "authentication refused" in message, message
    public = paramiko.PKey.from_path(str(key_file))  # named as ssh-keygen -lf shows it
    digest = base64.b64encode(hashlib.sha256(public.asbytes()).digest()).decode().rstrip("=")
    assert f"({public.get_name()} SHA256:{digest}, of {key_file}) in ftds-launch's " \
        "authorized_keys" in message, message
    assert host.commands == []


def _encrypted_key(path: Path) -> None:
    paramiko.ECDSAKey.generate().write_private_key_file(str(path), password="secret")


def _public_key_only(path: Path) -> None:
    key = paramiko.ECDSAKey.generate()
    path.write_text(f"{key.get_name()} {key.get_base64()} rm@controller\n")


@pytest.mark.parametrize("make_file, says", [
    (None, "cannot read the RM's SSH key {path}: No such file or directory"),
    (lambda p: p.mkdir(), "cannot read the RM's SSH key {path}: Is a directory"),
    (lambda p: p.write_text("not a key\n"), "the RM's SSH key {path} is not a private key"),
    (lambda p: p.write_text(""), "the RM's SSH key {path} is not a private key"),
    (_public_key_only, "the RM's SSH key {path} is not a private key"),
    (_encrypted_key, "the RM's SSH key {path} is encrypted"),
], ids=["missing", "directory", "garbage", "empty", "public-key", "encrypted"])
def test_an_unusable_key_file_is_one_line_naming_it(site, tmp_path, make_file, says):
    host = site["make"]()
    path = tmp_path / "bad_key"
    if make_file is not None:
        make_file(path)
    with pytest.raises(LaunchError) as err:
        launch(site["settings"](host.port, site["pin"](host.port), key_file=str(path)))
    message = str(err.value)
    assert says.format(path=path) in message, message
    assert "\n" not in message and len(message) < 300, message
    assert host.commands == []


def test_an_abandoned_attempt_leaves_no_unretrieved_exception(site):
    """The loop gives up on an exec request that is never answered; the attempt's thread fails
    later, when the loop has moved on: its exception must not be logged as never retrieved."""
    host = site["make"](lambda _c: "stall")
    settings = site["settings"](host.port, site["pin"](host.port), command_timeout=0.3)
    reported: list[dict] = []

    async def main() -> tuple[str, bool, float]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        start = time.monotonic()
        try:
            await SshLauncherImpl(settings).launch(spec(), False)
        except LaunchError as exc:
            outcome = str(exc), exc.unreachable, time.monotonic() - start
        else:
            raise AssertionError("the stalled exec request was not given up on")
        # The thread is unblocked by the give-up and hands its own failure to the loop.
        for _ in range(300):
            if not any(t.name == "ssh-S2" for t in threading.enumerate()):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # its call_soon_threadsafe has run
        gc.collect()  # the abandoned future is gone: it would complain now
        await asyncio.sleep(0.05)
        return outcome

    message, unreachable, took = asyncio.run(main())
    assert host.commands and unreachable and "no progress within 0.3s" in message, message
    # Given up at the command phase's deadline, not at an earlier phase's longer one.
    assert 0.25 < took < 0.9, took
    assert not any(t.name == "ssh-S2" for t in threading.enumerate())
    assert reported == [], [c.get("message") for c in reported]


def test_a_tcp_connect_never_answered_is_given_up_on_within_connect_timeout(site):
    """A listener whose accept queue is full (nothing accepts): Linux drops the SYNs, so the
    TCP connect itself gets no answer, like a host cut off or behind a dropping firewall."""
    listener = socket.create_server((HOST, 0), backlog=0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(8):
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect((HOST, port))
            except TimeoutError:
                probe.close()
                break
            fillers.append(probe)
        else:
            pytest.skip("this kernel answers connects past a full accept queue")
        start = time.monotonic()
        with pytest.raises(LaunchError) as err:
            launch(site["settings"](port, site["pin"](port), connect_timeout=0.3))
        took = time.monotonic() - start
    finally:
        for conn in fillers:
            conn.close()
        listener.close()
    assert err.value.unreachable, str(err.value)
    assert "unreachable" in str(err.value) or "connect: no progress" in str(err.value)
    assert 0.25 < took < 1.5, took
