"""The cluster file: one YAML document describing every role's address, the mode and the tunables.

Every daemon reads the same file plus its own id. Validation is strict and each error names the
file and the field, e.g. ``cluster.yml: replicas[1].port: must be 1-65535``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from .tls import LinkTls

MODES = ("passive", "active")
REPLICATION = ("sync", "async")
LAUNCHERS = ("local", "ssh", "none")
ID_RE = re.compile(r"^S[1-9][0-9]{0,3}$")


class ConfigError(ValueError):
    """A cluster file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class ReplicaSpec:
    id: str
    host: str
    port: int
    control_port: int
    ssh_host: str = ""  # where the RM reaches the replica's host over SSH ("" = host)
    # Its Prometheus /metrics on ``host`` (0 = off). Not compared: no daemon talks to it, so a
    # change must not look like a new address (the RM would reconnect to the replica).
    metrics_port: int = field(default=0, compare=False)

    @property
    def index(self) -> int:
        return int(self.id[1:])

    @property
    def lfd_id(self) -> str:
        return f"LFD{self.index}"


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


@dataclass(frozen=True)
class SshLauncher:
    user: str = "ftds-launch"
    port: int = 22
    key_file: str = "/etc/ftds/rm_ssh_key"  # root-only; the unit passes it as a credential
    # The replica hosts' pinned host keys (OpenSSH format): any other key is refused.
    known_hosts: str = "/etc/ftds/known_hosts"
    connect_timeout: float = 3.0  # each of: TCP connect, banner, key exchange, authentication
    command_timeout: float = 15.0  # the command, from opening its channel to its exit status
    command: str = "sudo -n /usr/bin/systemctl start ftds-replica@{id}.service"


@dataclass(frozen=True)
class Tunables:
    heartbeat_interval: float = 0.1
    heartbeat_misses: int = 3
    gfd_heartbeat_interval: float = 0.1
    gfd_heartbeat_misses: int = 3
    checkpoint_interval: float = 1.0
    lease: float = 0.5
    request_timeout: float = 1.0
    connect_timeout: float = 1.0
    view_change_timeout: float = 1.0
    max_frame: int = 16 * 1024 * 1024
    restart_budget: int = 5
    restart_window: float = 300.0
    relaunch_backoff: float = 0.2
    relaunch_backoff_max: float = 5.0
    relaunch_timeout: float = 5.0
    # Strangers on a listening port: a hello within hello_timeout (and 64 KiB before it), and
    # at most this many connections per port and per source address (see docs/design.md).
    hello_timeout: float = 2.0
    max_conns_per_port: int = 1024
    max_conns_per_source: int = 256
    # A hung primary is killed by its LFD and reported as a crash: no lease wait (docs/design.md).
    fence_hung_primary: bool = False


@dataclass(frozen=True)
class TlsSettings:
    """Mutual TLS on every link (see ftds.tls): the CA bundle, revocations, and where each
    daemon's ``<name>.crt`` and ``<name>.key`` are (S1, LFD1, GFD, RM, admin, client)."""

    ca: str
    dir: str
    crl: str = ""  # PEM CRL(s) of the CAs; "" = no revocation list

    def cert(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.crt")

    def key(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.key")


@dataclass(frozen=True)
class Trace:
    requests: bool = True
    heartbeats: bool = False
    executions: bool = False  # one EXEC line per applied entry (chaos runs check them)
    color: str = "auto"  # auto | always | never


@dataclass(frozen=True)
class ClusterConfig:
    path: str
    name: str
    mode: str
    replication: str
    key_file: str
    replicas: tuple[ReplicaSpec, ...]
    gfd: Endpoint
    rm: Endpoint
    rm_state_dir: str
    launcher: str
    ssh: SshLauncher
    tunables: Tunables
    trace: Trace
    run_dir: str = ""
    rm_metrics_port: int = 0  # Prometheus /metrics of the RM; 0 = off
    rm_metrics_address: str = ""  # where it listens ("" = rm.host; 0.0.0.0 = everywhere)
    rm_metrics_web_config: str = ""  # exporter-toolkit web config: TLS, basic auth ("" = none)
    tls: TlsSettings | None = None  # None: frames authenticated with the cluster key (HMAC)

    def replica(self, replica_id: str) -> ReplicaSpec:
        for spec in self.replicas:
            if spec.id == replica_id:
                return spec
        known = ", ".join(r.id for r in self.replicas)
        raise ConfigError(f"{self.path}: no replica {replica_id!r} (replicas: {known})")

    @property
    def replica_ids(self) -> list[str]:
        return [r.id for r in self.replicas]

    def read_key(self) -> bytes:
        """The cluster key that authenticates frames; b"" under TLS, where links carry no MAC."""
        if self.tls is not None:
            return b""
        return read_key_file(secret_path(self.key_file, "cluster.key"), self.path)

    def link_tls(self, name: str) -> LinkTls | None:
        """The TLS contexts of the daemon or tool called ``name`` (None without TLS)."""
        if self.tls is None:
            return None
        from .tls import load_link_tls

        return load_link_tls(self.tls, name, self.path)


def secret_path(configured: str, credential: str) -> str:
    """Where to read a secret: systemd's credential when the unit passed one, else the file.

    Units hand secrets over with ``LoadCredential=`` so the files on disk stay root-only and
    each daemon gets a private copy under $CREDENTIALS_DIRECTORY.
    """
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if directory:
        candidate = os.path.join(directory, credential)
        if os.path.exists(candidate):
            return candidate
    return configured


def read_key_file(key_file: str, source: str = "cluster.yml") -> bytes:
    try:
        raw = Path(key_file).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"{source}: key_file: cannot read {key_file}: {exc.strerror}") from exc
    if len(raw) < 16:
        raise ConfigError(f"{source}: key_file: {key_file} holds {len(raw)} bytes, need >= 16")
    return raw


class _Checker:
    """Collects the first error with its field path, in the file's own terms."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(where, "must be a mapping")
        return value

    def no_unknown(self, data: dict[str, Any], allowed: set[str], where: str) -> None:
        for key in data:
            if key not in allowed:
                prefix = f"{where}." if where else ""
                hint = ", ".join(sorted(allowed))
                raise self.fail(f"{prefix}{key}", f"unknown field (known: {hint})")

    def string(self, value: Any, where: str, *, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be a non-empty string")
        if choices and value not in choices:
            raise self.fail(where, f"must be one of {', '.join(choices)} (got {_shown(value)})")
        return value

    def port(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(where, "must be 1-65535")
        return value

    def host(self, value: Any, where: str) -> str:
        host = self.string(value, where)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", host):
                raise self.fail(where, f"not an IP address or host name: {_shown(host)}") from None
        return host

    def number(self, value: Any, where: str, *, low: float, high: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, "must be a number")
        if not low <= value <= high:
            raise self.fail(where, f"must be between {low:g} and {high:g} (got {value:g})")
        return float(value)

    def integer(self, value: Any, where: str, *, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, "must be an integer")
        if not low <= value <= high:
            raise self.fail(where, f"must be {low}-{high} (got {_shown(value)})")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value


# (low, high) for every numeric tunable; integers are the ones whose default is an int.
TUNABLE_LIMITS: dict[str, tuple[float, float]] = {
    "heartbeat_interval": (0.005, 60),
    "heartbeat_misses": (1, 100),
    "gfd_heartbeat_interval": (0.005, 60),
    "gfd_heartbeat_misses": (1, 100),
    "checkpoint_interval": (0.01, 3600),
    "lease": (0.05, 60),
    "request_timeout": (0.01, 600),
    "connect_timeout": (0.05, 600),
    "view_change_timeout": (0.05, 600),
    "max_frame": (1024, 1 << 30),
    "restart_budget": (1, 1000),
    "restart_window": (1, 86400),
    "relaunch_backoff": (0.01, 600),
    "relaunch_backoff_max": (0.01, 3600),
    "relaunch_timeout": (0.1, 3600),
    "hello_timeout": (0.05, 600),
    "max_conns_per_port": (1, 1_000_000),
    "max_conns_per_source": (1, 1_000_000),
}


def _tunables(check: _Checker, data: dict[str, Any]) -> Tunables:
    defaults = Tunables()
    names = {f.name for f in fields(Tunables)}
    check.no_unknown(data, names, "tunables")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        where = f"tunables.{name}"
        if isinstance(getattr(defaults, name), bool):
            values[name] = check.boolean(raw, where)
            continue
        low, high = TUNABLE_LIMITS[name]
        if isinstance(getattr(defaults, name), int):
            values[name] = check.integer(raw, where, low=int(low), high=int(high))
        else:
            values[name] = check.number(raw, where, low=low, high=high)
    tun = replace(defaults, **values)
    if tun.relaunch_backoff_max < tun.relaunch_backoff:
        raise check.fail("tunables.relaunch_backoff_max", "must be >= relaunch_backoff")
    if tun.lease <= tun.heartbeat_interval:
        raise check.fail("tunables.lease", "must be longer than heartbeat_interval")
    return tun


def _replicas(check: _Checker, raw: Any) -> tuple[ReplicaSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise check.fail("replicas", "must be a non-empty list")
    seen_ids: set[str] = set()
    seen_addr: dict[tuple[str, int], str] = {}
    specs = []
    for i, item in enumerate(raw):
        where = f"replicas[{i}]"
        item = check.mapping(item, where)
        check.no_unknown(item, {"id", "host", "port", "control_port", "ssh_host",
                                "metrics_port"}, where)
        for required in ("id", "host", "port", "control_port"):
            if required not in item:
                raise check.fail(f"{where}.{required}", "is required")
        rid = check.string(item["id"], f"{where}.id")
        if not ID_RE.match(rid):
            raise check.fail(f"{where}.id", f"must look like S1, S2, ... (got {_shown(rid)})")
        if rid in seen_ids:
            raise check.fail(f"{where}.id", f"duplicate replica id {rid}")
        seen_ids.add(rid)
        host = check.host(item["host"], f"{where}.host")
        port = check.port(item["port"], f"{where}.port")
        control = check.port(item["control_port"], f"{where}.control_port")
        ssh_host = check.host(item.get("ssh_host", host), f"{where}.ssh_host")
        metrics = item.get("metrics_port", 0)
        if isinstance(metrics, bool) or not isinstance(metrics, int) \
                or not 0 <= metrics <= 65535:
            raise check.fail(f"{where}.metrics_port", "must be 0 (off) or 1-65535")
        for name, number in (("port", port), ("control_port", control),
                             ("metrics_port", metrics)):
            if not number:
                continue
            owner = seen_addr.get((host, number))
            if owner is not None:
                raise check.fail(f"{where}.{name}", f"{host}:{number} already used by {owner}")
            seen_addr[(host, number)] = f"{where}.{name}"
        specs.append(ReplicaSpec(rid, host, port, control, ssh_host, metrics))
    return tuple(specs)


def _replica_metrics_ports(check: _Checker, replicas: tuple[ReplicaSpec, ...],
                           managers: dict[str, tuple[str, int]]) -> None:
    """A replica's metrics port must not be a port the GFD or RM listens on at its host."""
    for i, spec in enumerate(replicas):
        for name, address in managers.items():
            if spec.metrics_port and address == (spec.host, spec.metrics_port):
                raise check.fail(f"replicas[{i}].metrics_port",
                                 f"{spec.host}:{spec.metrics_port} already used by {name}")


def _metrics_port(check: _Checker, value: Any, rm: Endpoint, gfd: Endpoint) -> int:
    """The RM's Prometheus port: 0 (off) or a port of the RM's host that nothing else uses."""
    if value == 0 and not isinstance(value, bool):
        return 0
    port = check.port(value, "rm.metrics_port")
    for name, other in (("rm.port", rm), ("gfd.port", gfd)):
        if other.host == rm.host and other.port == port:
            raise check.fail("rm.metrics_port", f"{rm.host}:{port} already used by {name}")
    return port


def _endpoint(check: _Checker, data: Any, where: str) -> Endpoint:
    data = check.mapping(data, where)
    for required in ("host", "port"):
        if required not in data:
            raise check.fail(f"{where}.{required}", "is required")
    host = check.host(data["host"], f"{where}.host")
    return Endpoint(host, check.port(data["port"], f"{where}.port"))


def _ssh(check: _Checker, data: dict[str, Any]) -> SshLauncher:
    defaults = SshLauncher()
    check.no_unknown(data, {f.name for f in fields(SshLauncher)}, "launcher.ssh")
    values: dict[str, Any] = {}
    for name, raw in data.items():
        where = f"launcher.ssh.{name}"
        if name == "port":
            values[name] = check.port(raw, where)
        elif name == "connect_timeout":
            values[name] = check.number(raw, where, low=0.1, high=120)
        elif name == "command_timeout":
            values[name] = check.number(raw, where, low=0.1, high=3600)
        elif name == "known_hosts" and raw == "":
            # It used to mean "accept any host key": now the keys are always pinned.
            raise check.fail(where, "must name the file of the replica hosts' pinned SSH host "
                                    "keys (the ftds_rm role writes /etc/ftds/known_hosts; by "
                                    "hand: `ssh-keyscan -t ed25519 HOST >> FILE` once its "
                                    "fingerprint is checked); unknown host keys are refused")
        else:
            values[name] = check.string(raw, where)
    ssh = replace(defaults, **values)
    if "{id}" not in ssh.command:
        raise check.fail("launcher.ssh.command", "must contain {id} (the replica to start)")
    return ssh


def parse_config(data: Any, source: str = "cluster.yml") -> ClusterConfig:
    check = _Checker(source)
    root = check.mapping(data, "(top level)")
    allowed = {
        "name", "mode", "replication", "key_file", "replicas", "gfd", "rm", "launcher",
        "tunables", "trace", "run_dir", "tls",
    }
    check.no_unknown(root, allowed, "")
    for required in ("replicas", "gfd", "rm"):
        if required not in root:
            raise check.fail(required, "is required")
    tls = _tls(check, root["tls"]) if root.get("tls") is not None else None
    if tls is None and "key_file" not in root:
        raise check.fail("key_file", "is required (or a tls section)")
    name = check.string(root.get("name", "ftds"), "name")
    mode = check.string(root.get("mode", "passive"), "mode", choices=MODES)
    replication = check.string(root.get("replication", "sync"), "replication", choices=REPLICATION)
    key_file = check.string(root["key_file"], "key_file") if "key_file" in root else ""
    replicas = _replicas(check, root["replicas"])
    gfd = _endpoint(check, root["gfd"], "gfd")
    rm_raw = check.mapping(root["rm"], "rm")
    metrics_fields = ("metrics_port", "metrics_address", "metrics_web_config")
    check.no_unknown(rm_raw, {"host", "port", "state_dir", *metrics_fields}, "rm")
    rm = _endpoint(check, {k: v for k, v in rm_raw.items()
                           if k not in ("state_dir", *metrics_fields)}, "rm")
    rm_state_dir = check.string(rm_raw.get("state_dir", "/var/lib/ftds-rm"), "rm.state_dir")
    rm_metrics_port = _metrics_port(check, rm_raw.get("metrics_port", 0), rm, gfd)
    managers = {"gfd.port": (gfd.host, gfd.port), "rm.port": (rm.host, rm.port)}
    if rm_metrics_port:
        managers["rm.metrics_port"] = (rm.host, rm_metrics_port)
    _replica_metrics_ports(check, replicas, managers)
    rm_metrics_address = rm_raw.get("metrics_address") or ""
    if rm_metrics_address:
        rm_metrics_address = check.host(rm_metrics_address, "rm.metrics_address")
    rm_metrics_web_config = rm_raw.get("metrics_web_config") or ""
    if rm_metrics_web_config:
        rm_metrics_web_config = check.string(rm_metrics_web_config, "rm.metrics_web_config")
    launcher_raw = check.mapping(root.get("launcher"), "launcher")
    check.no_unknown(launcher_raw, {"kind", "ssh"}, "launcher")
    launcher = check.string(launcher_raw.get("kind", "ssh"), "launcher.kind", choices=LAUNCHERS)
    ssh = _ssh(check, check.mapping(launcher_raw.get("ssh"), "launcher.ssh"))
    tunables = _tunables(check, check.mapping(root.get("tunables"), "tunables"))
    trace_raw = check.mapping(root.get("trace"), "trace")
    check.no_unknown(trace_raw, {"requests", "heartbeats", "executions", "color"}, "trace")
    trace = Trace(
        requests=check.boolean(trace_raw.get("requests", True), "trace.requests"),
        heartbeats=check.boolean(trace_raw.get("heartbeats", False), "trace.heartbeats"),
        executions=check.boolean(trace_raw.get("executions", False), "trace.executions"),
        color=check.string(
            trace_raw.get("color", "auto"), "trace.color", choices=("auto", "always", "never")
        ),
    )
    run_dir = root.get("run_dir", "")
    if run_dir:
        run_dir = check.string(run_dir, "run_dir")
    return ClusterConfig(
        path=source, name=name, mode=mode, replication=replication, key_file=key_file,
        replicas=replicas, gfd=gfd, rm=rm, rm_state_dir=rm_state_dir, launcher=launcher,
        ssh=ssh, tunables=tunables, trace=trace, run_dir=run_dir,
        rm_metrics_port=rm_metrics_port, rm_metrics_address=rm_metrics_address,
        rm_metrics_web_config=rm_metrics_web_config, tls=tls,
    )


def _tls(check: _Checker, raw: Any) -> TlsSettings:
    data = check.mapping(raw, "tls")
    check.no_unknown(data, {"ca", "dir", "crl"}, "tls")
    for required in ("ca", "dir"):
        if required not in data:
            raise check.fail(f"tls.{required}", "is required")
    crl = data.get("crl") or ""
    return TlsSettings(ca=check.string(data["ca"], "tls.ca"),
                       dir=check.string(data["dir"], "tls.dir"),
                       crl=check.string(crl, "tls.crl") if crl else "")


def _shown(value: Any) -> str:
    """A value as an error message shows it: its repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an integer past Python's 4,300 digits
        return "a number of thousands of digits"
    return text if len(text) <= 40 else f"{text[:37]}..."


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    source = str(path)
    name = os.path.basename(source)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start}); save it as UTF-8") \
            from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{name}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from exc
    except RecursionError:
        raise ConfigError(f"{name}: not a cluster file: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's 4,300 digits
        raise ConfigError(f"{name}: not a cluster file: {exc}") from None
    config = parse_config(data, name)
    web_config = config.rm_metrics_web_config
    if web_config and not os.path.isabs(web_config):  # beside the cluster file, not the cwd
        web_config = os.path.join(os.path.dirname(os.path.abspath(source)), web_config)
    tls = config.tls
    if tls is not None:  # relative paths are beside the cluster file, not the cwd
        here = os.path.dirname(os.path.abspath(source))
        tls = TlsSettings(*(os.path.join(here, p) if p else p for p in (tls.ca, tls.dir, tls.crl)))
    return replace(config, path=source, rm_metrics_web_config=web_config, tls=tls)


def describe_changes(old: ClusterConfig, new: ClusterConfig) -> list[str]:
    """Human-readable list of what differs between two configs (for SIGHUP reload logs)."""
    changes = []
    for f in fields(Tunables):
        a, b = getattr(old.tunables, f.name), getattr(new.tunables, f.name)
        if a != b:
            shown = (str(a).lower(), str(b).lower()) if isinstance(a, bool) \
                else (f"{a:g}", f"{b:g}")
            changes.append(f"tunables.{f.name}: {shown[0]} -> {shown[1]}")
    if old.replicas != new.replicas:
        a_ids = ",".join(old.replica_ids)
        b_ids = ",".join(new.replica_ids)
        changes.append(f"replicas: {a_ids} -> {b_ids}" if a_ids != b_ids else "replicas: changed")
    old_ports = {r.id: r.metrics_port for r in old.replicas}
    for spec in new.replicas:  # not part of a spec's equality: said here
        if spec.id in old_ports and old_ports[spec.id] != spec.metrics_port:
            changes.append(f"replicas[{spec.id}].metrics_port: {old_ports[spec.id]} -> "
                           f"{spec.metrics_port}")
    for name in ("mode", "replication", "key_file", "tls", "gfd", "rm", "rm_metrics_port",
                 "rm_metrics_address", "rm_metrics_web_config", "launcher", "ssh", "trace"):
        if getattr(old, name) != getattr(new, name):
            changes.append(f"{name}: changed")
    return changes


__all__ = [
    "ClusterConfig",
    "ConfigError",
    "Endpoint",
    "ReplicaSpec",
    "SshLauncher",
    "TlsSettings",
    "Trace",
    "Tunables",
    "describe_changes",
    "load_config",
    "parse_config",
    "read_key_file",
]

# Fields the runtime can change on SIGHUP without a restart; the rest need one.
RELOADABLE = frozenset({"tunables", "replicas", "trace", "launcher", "ssh"})
