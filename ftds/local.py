"""The embedded cluster: every role as a plain local process on 127.0.0.1, no root needed.

``ftds local up`` writes a cluster file and a fresh key into a run directory and starts a small
supervisor in the background. The supervisor plays systemd's part: it starts the GFD, the RM, and
each replica with its LFD, and restarts the management daemons when they exit (replicas are
brought back by the RM, as on a real cluster). ``ftds local down`` stops all of it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .procs import pid_alive

DEFAULT_DIR = "run/local"


def ports_free(host: str, ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def plan_ports(replicas: int, base: int) -> dict[str, int]:
    ports = {}
    for k in range(1, replicas + 1):
        ports[f"S{k}.port"] = base + k
        ports[f"S{k}.control_port"] = base + 100 + k
    ports["gfd"] = base + 200
    ports["rm"] = base + 201
    ports["rm_metrics"] = base + 202
    for k in range(1, replicas + 1):  # Prometheus /metrics of each replica
        ports[f"S{k}.metrics_port"] = base + 210 + k
    return ports


def pick_base(replicas: int, start: int = 7000) -> int:
    for base in range(start, 60000, 300):
        if ports_free("127.0.0.1", list(plan_ports(replicas, base).values())):
            return base
    raise RuntimeError("no free port range on 127.0.0.1")


def write_cluster(run_dir: Path, replicas: int = 3, mode: str = "passive",
                  base: int | None = None, replication: str = "sync",
                  tunables: dict[str, float] | None = None,
                  trace: dict[str, object] | None = None, tls: bool = False) -> Path:
    """A cluster file and key for a local cluster in ``run_dir``; returns the file's path.

    With ``tls``, links run mutual TLS instead of the cluster key: a CA in ``run_dir/ca`` (made
    once) and every daemon's certificate in ``run_dir/tls``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "pids").mkdir(exist_ok=True)
    key_file = run_dir / "cluster.key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    base = pick_base(replicas) if base is None else base
    ports = plan_ports(replicas, base)
    data = {
        "name": "local",
        "mode": mode,
        "replication": replication,
        "key_file": str(key_file.resolve()),
        "run_dir": str(run_dir.resolve()),
        "replicas": [
            {"id": f"S{k}", "host": "127.0.0.1", "port": ports[f"S{k}.port"],
             "control_port": ports[f"S{k}.control_port"],
             "metrics_port": ports[f"S{k}.metrics_port"]}
            for k in range(1, replicas + 1)
        ],
        "gfd": {"host": "127.0.0.1", "port": ports["gfd"]},
        "rm": {"host": "127.0.0.1", "port": ports["rm"], "state_dir": str(run_dir.resolve()),
               "metrics_port": ports["rm_metrics"]},
        "launcher": {"kind": "local"},
        "tunables": tunables or {},
        "trace": trace or {},
    }
    if tls:
        ca_dir, tls_dir = (run_dir / "ca").resolve(), (run_dir / "tls").resolve()
        del data["key_file"]
        data["tls"] = {"ca": str(ca_dir / "ca.crt"), "dir": str(tls_dir),
                       "crl": str(ca_dir / "ca.crl")}
    path = run_dir / "cluster.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if tls:
        from . import pki  # the CA's tooling: only a TLS cluster needs it
        from .config import load_config

        if not (ca_dir / "ca.crt").exists():
            pki.create_ca(ca_dir, "local")
        pki.issue_cluster(ca_dir, tls_dir, load_config(path))
    return path


def forget_previous_cluster(run_dir: Path) -> bool:
    """A new embedded cluster in ``run_dir``: the RM's record of the previous one goes.

    The embedded cluster keeps its data in memory, so after ``ftds local down`` nothing of it
    is left to protect; without this, the new RM would (rightly) wait for a holder of the old
    data. Returns whether there was such a record."""
    from .rm.store import FILE_NAME, LEGACY_EPOCH_FILE

    found = False
    for name in (FILE_NAME, LEGACY_EPOCH_FILE):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
            found = True
    return found


def ftds_command() -> list[str]:
    return [sys.executable, "-m", "ftds"]


def spawn(run_dir: Path, name: str, args: list[str], env: dict[str, str] | None = None) -> int:
    """Start ``ftds <args>`` detached, logging to logs/<name>.log; returns its pid.

    It runs in ``run_dir``: paths in ``args`` must be absolute."""
    log_path = run_dir / "logs" / f"{name}.log"
    with open(log_path, "ab", buffering=0) as log_file:
        proc = subprocess.Popen(
            [*ftds_command(), *args], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=run_dir,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
    (run_dir / "pids" / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def read_pid(run_dir: Path, name: str) -> int | None:
    try:
        pid = int((run_dir / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


@dataclass
class Program:
    name: str
    args: list[str]
    restart: bool  # like systemd Restart=always
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path = field(default_factory=Path)


class Supervisor:
    """Keeps the management daemons up, as systemd does on a real host.

    SIGHUP (``ftds local reload``) is what a deploy's reload handler is on a cluster: every
    daemon re-reads the cluster file; a replica added to the file gets its LFD (and the RM,
    finding the replica missing, starts it), a replica removed from it is stopped.
    """

    def __init__(self, run_dir: Path, with_managers: bool = True) -> None:
        self.run_dir = run_dir
        self.with_managers = with_managers
        self.config = str(run_dir / "cluster.yml")
        self.programs: list[Program] = []
        if with_managers:
            self.programs.append(Program("RM", ["rm", "--config", self.config], True))
            self.programs.append(Program("GFD", ["gfd", "--config", self.config], True))
        for rid in self._replica_ids() or []:
            self.programs.extend(self._replica_programs(rid))
        self.stopping = False
        self.reload_requested = False

    def _replica_ids(self) -> list[str] | None:
        try:
            data = yaml.safe_load((self.run_dir / "cluster.yml").read_text())
            return [r["id"] for r in data["replicas"]]
        except (OSError, yaml.YAMLError, KeyError, TypeError):
            return None  # the daemons say what is wrong with the file; keep what runs

    def _replica_programs(self, rid: str) -> list[Program]:
        # The first start of a replica is the boot; afterwards the RM relaunches it.
        programs = [Program(rid, ["replica", "--config", self.config, "--id", rid], False)]
        if self.with_managers:
            programs.append(Program(f"LFD{rid[1:]}",
                                    ["lfd", "--config", self.config, "--id", rid], True))
        return programs

    def _reload(self) -> None:
        self.reload_requested = False
        for prog in self.programs:
            if prog.proc is not None and prog.proc.poll() is None:
                prog.proc.send_signal(signal.SIGHUP)
        ids = self._replica_ids()
        if ids is None:
            return
        known = {p.args[-1] for p in self.programs if p.args[0] in ("replica", "lfd")}
        for rid in ids:
            if rid not in known:
                # A new replica's LFD starts here; the replica itself is the RM's to start
                # (it finds it missing), so two starters never race for its ports.
                programs = self._replica_programs(rid)
                if self.with_managers:
                    programs = [p for p in programs if p.args[0] == "lfd"]
                for prog in programs:
                    self.programs.append(prog)
                    self._start(prog)
        removed = {p.args[-1] for p in self.programs
                   if p.args[0] in ("replica", "lfd") and p.args[-1] not in ids}
        for prog in [p for p in self.programs if p.args[-1] in removed]:
            self.programs.remove(prog)
            if prog.proc is not None and prog.proc.poll() is None:
                prog.proc.terminate()
        for rid in removed:
            pid = read_pid(self.run_dir, rid)  # the RM started it: its pid file says where
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)

    def _start(self, prog: Program) -> None:
        prog.log_path = self.run_dir / "logs" / f"{prog.name}.log"
        with open(prog.log_path, "ab", buffering=0) as log_file:
            prog.proc = subprocess.Popen(
                [*ftds_command(), *prog.args], stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, cwd=self.run_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        (self.run_dir / "pids" / f"{prog.name}.pid").write_text(f"{prog.proc.pid}\n")

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        (self.run_dir / "pids" / "supervisor.pid").write_text(f"{os.getpid()}\n")
        for prog in self.programs:
            self._start(prog)
        while not self.stopping:
            time.sleep(0.05)
            if self.reload_requested:
                self._reload()
            now = time.monotonic()
            for prog in self.programs:
                if prog.proc is None or prog.proc.poll() is None:
                    continue
                if not prog.restart:
                    prog.proc = None  # reaped; the RM relaunches replicas
                    continue
                if not prog.next_start:
                    prog.next_start = now + 0.1  # RestartSec=100ms
                elif now >= prog.next_start:
                    prog.next_start = 0.0
                    prog.restarts += 1
                    self._start(prog)
        self._stop_all()
        return 0

    def _on_term(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload_requested = True

    def _stop_all(self) -> None:
        end_processes([p.proc for p in self.programs if p.proc is not None])


def end_processes(procs: list[subprocess.Popen[bytes]], *, resume: bool = False,
                  grace: float = 5.0) -> None:
    """SIGTERM to each running process, SIGKILL to what is left after ``grace`` seconds.
    ``resume``: SIGCONT first (a stopped process would not act on SIGTERM)."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            if resume:
                proc.send_signal(signal.SIGCONT)
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.1, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop_cluster(run_dir: Path, timeout: float = 10.0) -> list[str]:
    """Stop the supervisor and every daemon of the cluster in ``run_dir``; returns names.

    Like systemd stopping a unit's whole control group, this does not trust pid files alone: a
    launcher killed between starting a replica and writing its file, or a second start that
    overwrote it, leaves a daemon no file names. Every process running an ftds daemon with this
    cluster's file is stopped too."""
    pids_dir = run_dir / "pids"
    stopped = []
    if not pids_dir.is_dir():
        return stopped
    sup = read_pid(run_dir, "supervisor")
    if sup is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sup, signal.SIGTERM)
        _wait_gone([sup], timeout)
        stopped.append("supervisor")
    leftovers = _daemons_of(run_dir / "cluster.yml")
    for pid_file in pids_dir.glob("*.pid"):
        pid = read_pid(run_dir, pid_file.stem)
        if pid is not None:
            leftovers[pid] = pid_file.stem
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _wait_gone(list(leftovers), timeout)
    for pid in leftovers:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stopped.extend(sorted(set(leftovers.values())))
    for pid_file in pids_dir.glob("*.pid"):
        pid_file.unlink(missing_ok=True)
    return stopped


DAEMONS = ("replica", "lfd", "gfd", "rm")


def _daemons_of(config: Path) -> dict[int, str]:
    """pid -> name of every running ``ftds <daemon> --config <config>`` (relative paths are
    taken from the process's working directory)."""
    wanted = os.path.realpath(config)
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        name = _daemon_name(argv)
        path = _option(argv, "--config")
        if name and path and os.path.realpath(os.path.join(cwd, path)) == wanted:
            found[int(entry)] = name
    return found


def _daemon_name(argv: list[str]) -> str | None:
    """"S2", "LFD2", "GFD" or "RM" for ``python -m ftds <daemon> ...``, else None."""
    for i in range(len(argv) - 2):
        if argv[i:i + 2] == ["-m", "ftds"] and argv[i + 2] in DAEMONS:
            daemon = argv[i + 2]
            rid = _option(argv, "--id") or "?"
            return {"replica": rid, "lfd": f"LFD{rid[1:]}"}.get(daemon, daemon.upper())
    return None


def _option(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


def _wait_gone(pids: list[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
