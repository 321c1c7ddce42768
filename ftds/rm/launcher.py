"""How the Replication Manager brings a replica back: local processes or SSH to its host.

Both run off the RM's event loop (a subprocess / a thread of each attempt's own), so a slow or
dead host never blocks membership decisions. ``start`` is idempotent where the platform is
(``systemctl start`` of a running unit does nothing); ``restart`` replaces a process that is
there but not answering.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ..config import ClusterConfig, ReplicaSpec, SshLauncher, secret_path
from ..procs import pid_alive

log = logging.getLogger("ftds.rm")
# A failed attempt is one LaunchError line in the RM's log; paramiko's transport thread would
# add its own lines and tracebacks for the same failure.
logging.getLogger("paramiko").setLevel(logging.CRITICAL)
# How often the RM's loop looks at an SSH attempt's deadline, which its thread moves on at each
# phase, and how long past it the loop gives up: the thread's own timeouts fire at the deadline
# and say more precisely what did not come, so they get that long to report first.
WATCH_TICK = 0.05
WATCH_GRACE = 0.1


class LaunchError(Exception):
    """A relaunch that did not happen; the message says why, for the log and the status.

    ``unreachable``: the host could not be reached at all (it says nothing about the replica).
    """

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class Launcher(Protocol):
    kind: str

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        """Start (or restart) a replica; returns what was done. Raises LaunchError."""
        ...


class NoLauncher:
    kind = "none"

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        raise LaunchError("relaunch disabled (launcher.kind: none)")


class LocalLauncher:
    """Embedded mode: the replica is a child process of the RM on this machine."""

    kind = "local"

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.run_dir = Path(config.run_dir or ".")
        self._children: set[asyncio.subprocess.Process] = set()

    def _pid_file(self, spec: ReplicaSpec) -> Path:
        return self.run_dir / "pids" / f"{spec.id}.pid"

    def _running_pid(self, spec: ReplicaSpec) -> int | None:
        try:
            pid = int(self._pid_file(spec).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        pid = self._running_pid(spec)
        if pid is not None:
            if not restart:
                return f"{spec.id} already running (pid {pid})"
            os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                if not pid_alive(pid):
                    break
                await asyncio.sleep(0.01)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "pids").mkdir(parents=True, exist_ok=True)
        # A local append-only log file: opening it does not wait on anything remote.
        log_file = open(self.run_dir / "logs" / f"{spec.id}.log", "ab")  # noqa: SIM115, ASYNC230
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ftds", "replica", "--config", self.config.path,
                "--id", spec.id, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.run_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        except OSError as exc:
            raise LaunchError(f"cannot start {spec.id}: {exc}") from exc
        finally:
            log_file.close()
        self._pid_file(spec).write_text(f"{proc.pid}\n")
        self._children.add(proc)
        # Reap it when it exits so no zombie lingers (the LFD counts a zombie as dead anyway).
        task = asyncio.get_running_loop().create_task(proc.wait())
        task.add_done_callback(lambda _t: self._children.discard(proc))
        return f"{'restarted' if restart else 'started'} {spec.id} (pid {proc.pid})"


class UnknownHostKey(Exception):
    """A host offered a key that known_hosts does not pin (raised inside paramiko's connect)."""

    def __init__(self, hostname: str, key_type: str, fingerprint: str) -> None:
        super().__init__(f"{hostname}: {key_type} {fingerprint} not pinned")
        self.hostname = hostname
        self.key_type = key_type
        self.fingerprint = fingerprint


def _fingerprint(key: Any) -> str:
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


class _Unpinned:
    """paramiko's missing-host-key policy: refuse, with what is needed to pin the key."""

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        raise UnknownHostKey(hostname, key.get_name(), _fingerprint(key))


class _SshAttempt:
    """One login and one command on one host, run in a thread of its own.

    It goes through phases (connect, login, command), each with a deadline the RM's loop
    watches; past it the loop shuts the socket down, which ends whatever paramiko was blocked
    in, and gives up on the attempt. paramiko's own timeouts bound the steps it offers them for
    (TCP connect, banner, key exchange, authentication, channel open); the deadlines bound the
    rest (an exec request or an exit status that never comes from a host cut mid-command).
    """

    def __init__(self, settings: SshLauncher, host: str, command: str) -> None:
        self.settings = settings
        self.host = host
        self.command = command
        self.target = f"{settings.user}@{host}"
        self.phase = ""
        self.budget = 0.0
        self.deadline = 0.0
        self.aborted = False
        self._sock: socket.socket | None = None
        self._enter("connect", settings.connect_timeout)

    def _enter(self, phase: str, budget: float) -> None:
        self.phase = phase
        self.budget = budget
        self.deadline = time.monotonic() + budget

    def abort(self) -> None:
        """From the RM's loop: make the thread's blocking call fail now."""
        self.aborted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def run(self) -> str:
        import paramiko

        s = self.settings
        fail = self.error
        key_file = secret_path(s.key_file, "ssh_key")
        key = self._load_key(key_file)  # at every attempt: a key replaced since applies at once
        client = paramiko.SSHClient()
        try:
            # Read at every attempt (a key pinned since applies at once); never written to.
            client.get_host_keys().load(s.known_hosts)
        except OSError as exc:
            raise fail(f"cannot read the pinned host keys {s.known_hosts} "
                       f"(launcher.ssh.known_hosts): {exc.strerror}; {self._how_to_pin()}"
                       ) from exc
        client.set_missing_host_key_policy(_Unpinned())
        # The TCP connect has connect_timeout of its own, whatever reading the key took (an
        # RSA key takes tens of milliseconds of CPU, more on a busy RM).
        self._enter("connect", s.connect_timeout)
        try:
            try:
                sock = socket.create_connection((self.host, s.port), timeout=s.connect_timeout)
            except OSError as exc:  # refused, timed out, no route
                raise fail(f"unreachable: {exc}", unreachable=True) from exc
            self._sock = sock
            if self.aborted:
                raise fail("given up", unreachable=True)
            # Banner, key exchange and authentication each have connect_timeout.
            self._enter("login", 3 * s.connect_timeout)
            self._login(client, sock, key, key_file)
            self._enter("command", s.command_timeout)
            return self._exec(client)
        finally:
            client.close()
            if self._sock is not None:
                self._sock.close()

    def _load_key(self, key_file: str) -> Any:
        """The RM's private key, whatever its type; one line naming the file if unusable.

        Loaded here rather than handed to paramiko as ``key_filename``: paramiko then tries
        each key class in turn on the file and reports the last one's parse error, which hides
        the real outcome of the login (a timeout, a refusal) of the class that did fit.
        """
        import paramiko

        fail = self.error
        try:
            return paramiko.PKey.from_path(key_file)
        except OSError as exc:
            raise fail(f"cannot read the RM's SSH key {key_file}: {exc.strerror}") from exc
        except (TypeError, paramiko.PasswordRequiredException) as exc:
            # cryptography's TypeError: "password was not given but private key is encrypted"
            raise fail(f"the RM's SSH key {key_file} is encrypted: the RM has no passphrase "
                       "for it, it needs a key without one (launcher.ssh.key_file)") from exc
        except Exception as exc:  # ValueError, SSHException, UnknownKeyType, UnsupportedAlgorithm
            detail = "unsupported key type" if isinstance(exc, paramiko.UnknownKeyType) else \
                (str(exc).split(" See ")[0].splitlines() or [exc.__class__.__name__])[0][:120]
            raise fail(f"the RM's SSH key {key_file} is not a private key the RM can use "
                       f"({detail}): it needs an ed25519, ECDSA or RSA private key in OpenSSH "
                       "or PEM format (launcher.ssh.key_file)") from exc

    def _login(self, client: Any, sock: socket.socket, key: Any, key_file: str) -> None:
        import paramiko

        s = self.settings
        fail = self.error
        try:
            client.connect(self.host, port=s.port, username=s.user, pkey=key, sock=sock,
                           timeout=s.connect_timeout, banner_timeout=s.connect_timeout,
                           auth_timeout=s.connect_timeout, channel_timeout=s.command_timeout,
                           allow_agent=False, look_for_keys=False)
        except UnknownHostKey as exc:
            raise fail(f"host key {exc.key_type} {exc.fingerprint} of {exc.hostname} is not "
                       f"pinned in {s.known_hosts}: refusing to log in. "
                       f"{self._how_to_pin(exc.key_type)}") from None
        except paramiko.BadHostKeyException as exc:
            raise fail(f"host key of {self.host} changed: it offers {exc.key.get_name()} "
                       f"{_fingerprint(exc.key)}, {s.known_hosts} pins "
                       f"{_fingerprint(exc.expected_key)}. Someone may be impersonating it; "
                       "if the host was reinstalled, replace its line there (re-run the "
                       "playbook)") from None
        except paramiko.AuthenticationException as exc:
            if str(exc).startswith("Authentication timeout"):  # paramiko's auth_timeout
                # The host took the connection and the key exchange, then never answered the
                # login: cut off or overloaded, like a silent host; not a refused key.
                raise fail(f"no answer to the login within {s.connect_timeout:g}s "
                           "(launcher.ssh.connect_timeout); the host may be cut off",
                           unreachable=True) from exc
            # the key by its fingerprint: under systemd key_file is a credential copy, with
            # no .pub beside it
            raise fail(f"authentication refused ({exc}): is the RM's public key "
                       f"({key.get_name()} {_fingerprint(key)}, of {key_file}) in "
                       f"{s.user}'s authorized_keys on {self.host}?") from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            # The host took the connection but did not complete a login: cut off, or sshd
            # not answering. Either way it says nothing about the replica.
            transport = client.get_transport()
            cause = (transport.get_exception() if transport is not None else None) or exc
            if str(cause) == "No existing session":  # paramiko's words for a slow handshake
                cause = f"no SSH banner and key exchange within {s.connect_timeout:g}s"
            raise fail(f"login failed: {cause}", unreachable=True) from exc

    def _exec(self, client: Any) -> str:
        import paramiko

        fail = self.error
        try:
            transport = client.get_transport()
            channel = transport.open_session(timeout=self.budget)
            channel.settimeout(max(0.01, self.deadline - time.monotonic()))
            channel.exec_command(self.command)
            if not channel.status_event.wait(max(0.0, self.deadline - time.monotonic())):
                raise fail(f"'{self.command}' gave no exit status within "
                           f"{self.settings.command_timeout:g}s (launcher.ssh.command_timeout);"
                           " the host may be cut off", unreachable=True)
            status = channel.exit_status
            err = b""
            with contextlib.suppress(OSError, TimeoutError):
                while channel.recv_stderr_ready() and len(err) < 4096:
                    err += channel.recv_stderr(4096)
        except LaunchError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise fail(f"running '{self.command}': {exc.__class__.__name__}: {exc}",
                       unreachable=True) from exc
        if status != 0:
            detail = err.decode(errors="replace").strip()[:300]
            raise fail(f"'{self.command}' exited {status}: {detail}")
        return f"ran '{self.command}' on {self.host}"

    def error(self, what: str, unreachable: bool = False) -> LaunchError:
        return LaunchError(f"ssh {self.target}: {what}", unreachable=unreachable)

    def _how_to_pin(self, key_type: str = "ssh-ed25519") -> str:
        s = self.settings
        short = next((t for t in ("ed25519", "ecdsa", "rsa") if t in key_type), key_type)
        port = f"-p {s.port} " if s.port != 22 else ""
        return (f"Pin the host's key: re-run the playbook (the ftds_rm role writes the replica "
                f"hosts' keys to {s.known_hosts}), or check its fingerprint on the host "
                f"(`ssh-keygen -lf /etc/ssh/ssh_host_{short}_key.pub`) and append the output "
                f"of `ssh-keyscan {port}-t {short} {self.host}` to that file")


class SshLauncherImpl:
    """Real clusters: ``sudo systemctl start ftds-replica@S2`` on the replica's host over SSH.

    Key authentication only, against pinned host keys (``launcher.ssh.known_hosts``; any
    other key is refused, with how to pin it). Each attempt runs in a thread of its own, never
    a shared pool, and every step of it has a timeout (see ``_SshAttempt``), so a host cut off
    mid-command holds neither another replica's relaunch nor this one's next attempt beyond
    that. The remote account may run nothing but the systemctl verbs its sudoers rule allows.
    """

    kind = "ssh"

    def __init__(self, settings: SshLauncher) -> None:
        self.settings = settings

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        command = self.settings.command.format(id=spec.id)
        if restart:
            command = command.replace(" start ", " restart ")
        attempt = _SshAttempt(self.settings, spec.ssh_host or spec.host, command)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()
        # The loop may give up on the attempt (its deadline, a cancellation) before the thread
        # ends; the thread's late failure then lands on a future nobody awaits. Read it here,
        # or asyncio logs it as "Future exception was never retrieved".
        done.add_done_callback(lambda f: f.cancelled() or f.exception())

        def settle(result: str | None, exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is not None:
                done.set_exception(exc)
            else:
                done.set_result(result or "")

        def work() -> None:
            try:
                result, exc = attempt.run(), None
            except BaseException as error:  # handed to the loop, which decides
                result, exc = None, error
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, result, exc)

        threading.Thread(target=work, name=f"ssh-{spec.id}", daemon=True).start()
        try:
            while not done.done():
                left = attempt.deadline + WATCH_GRACE - time.monotonic()
                if left <= 0:
                    attempt.abort()
                    raise attempt.error(f"{attempt.phase}: no progress within "
                                        f"{attempt.budget:g}s; given up (the host may be cut "
                                        "off)", unreachable=True)
                # Not the whole of ``left``: the thread may enter a shorter phase meanwhile.
                await asyncio.wait({done}, timeout=min(left, WATCH_TICK))
        except asyncio.CancelledError:
            attempt.abort()
            raise
        return done.result()


def make_launcher(config: ClusterConfig) -> Launcher:
    if config.launcher == "local":
        return LocalLauncher(config)
    if config.launcher == "ssh":
        return SshLauncherImpl(config.ssh)
    return NoLauncher()
