"""How the Replication Manager brings a replica back: local processes or SSH to its host.

Both run off the RM's event loop (a subprocess / a worker thread), so a slow or dead host never
blocks membership decisions. ``start`` is idempotent where the platform is (``systemctl start`` of
a running unit does nothing); ``restart`` replaces a process that is there but not answering.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from ..config import ClusterConfig, ReplicaSpec, SshLauncher, secret_path
from ..local import pid_alive

log = logging.getLogger("ftds.rm")


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


class SshLauncherImpl:
    """Real clusters: ``sudo systemctl start ftds-replica@S2`` on the replica's host over SSH.

    Key authentication only, with connect, banner and auth timeouts (a powered-off host would
    otherwise hang the attempt for minutes). The remote account may run nothing but the
    systemctl verbs its sudoers rule allows.
    """

    kind = "ssh"

    def __init__(self, settings: SshLauncher) -> None:
        self.settings = settings

    async def launch(self, spec: ReplicaSpec, restart: bool) -> str:
        command = self.settings.command.format(id=spec.id)
        if restart:
            command = command.replace(" start ", " restart ")
        host = spec.ssh_host or spec.host
        return await asyncio.to_thread(self._run, host, command)

    def _run(self, host: str, command: str) -> str:
        import paramiko

        s = self.settings
        client = paramiko.SSHClient()
        if s.known_hosts:
            client.load_host_keys(s.known_hosts)
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
        else:
            # The deployment pins host keys through known_hosts; without one (a lab) the key
            # is accepted for this connection only.
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        try:
            client.connect(host, port=s.port, username=s.user,
                           key_filename=secret_path(s.key_file, "ssh_key"),
                           timeout=s.connect_timeout, banner_timeout=s.connect_timeout,
                           auth_timeout=s.connect_timeout, allow_agent=False,
                           look_for_keys=False)
        except OSError as exc:  # refused, timed out, no route: socket errors all
            client.close()
            raise LaunchError(f"ssh {s.user}@{host}: unreachable: {exc}", unreachable=True) \
                from exc
        except paramiko.SSHException as exc:
            client.close()
            raise LaunchError(f"ssh {s.user}@{host}: {exc.__class__.__name__}: {exc}") from exc
        try:
            _stdin, stdout, stderr = client.exec_command(command, timeout=30)
            status = stdout.channel.recv_exit_status()
            err = stderr.read().decode(errors="replace").strip()
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            raise LaunchError(f"ssh {s.user}@{host}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            client.close()
        if status != 0:
            raise LaunchError(f"ssh {s.user}@{host}: '{command}' exited {status}: {err[:300]}")
        return f"ran '{command}' on {host}"


def make_launcher(config: ClusterConfig) -> Launcher:
    if config.launcher == "local":
        return LocalLauncher(config)
    if config.launcher == "ssh":
        return SshLauncherImpl(config.ssh)
    return NoLauncher()
