"""The CLI as an operator meets it: one line on stderr for every operator error, exit codes that
mean something, arguments checked before anything is contacted (issue 12).

Each command runs in a subprocess, as typed. "RM down" / "no replica" is a cluster file whose
ports nobody listens on; where an answer is needed, a fake RM or replica on a free loopback
port speaks the wire protocol with canned replies.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ftds.cli import build_parser
from ftds.status import health
from ftds.wire import FrameDecoder, WireError, encode, envelope

Answer = Callable[[dict[str, Any]], list[tuple[str, dict[str, Any]]]]


# ========================================================================== helpers ====
def free_ports(count: int) -> list[int]:
    """Ports nobody listens on: bound together (so distinct), then released."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def ftds(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FTDS_CONFIG": str(cwd / "absent-default.yml")}
    return subprocess.run([sys.executable, "-m", "ftds", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def check(result: subprocess.CompletedProcess[str], code: int,
          one_line: bool = True) -> subprocess.CompletedProcess[str]:
    """Exact exit code, never a traceback; an error is one line on stderr."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    if code != 0 and one_line:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result


KEY = secrets.token_hex(32).encode()  # the cluster key of every file written here


class Cluster:
    """A cluster file (and key) in ``dir``; replicas and RM on the ports given, else dead ones."""

    def __init__(self, dir: Path, replica_ports: dict[str, int] | None = None,
                 rm_port: int | None = None, mode: str = "passive") -> None:
        dead = free_ports(8)
        (dir / "cluster.key").write_bytes(KEY + b"\n")
        ports = {"S1": dead[0], "S2": dead[1], "S3": dead[2], **(replica_ports or {})}
        self.rm_port = rm_port or dead[6]
        data = {
            "name": "test", "mode": mode, "key_file": str(dir / "cluster.key"),
            "replicas": [{"id": rid, "host": "127.0.0.1", "port": port,
                          "control_port": dead[3 + i]}
                         for i, (rid, port) in enumerate(sorted(ports.items()))],
            "gfd": {"host": "127.0.0.1", "port": dead[7]},
            "rm": {"host": "127.0.0.1", "port": self.rm_port, "state_dir": str(dir)},
            "launcher": {"kind": "none"},
            "trace": {"requests": False, "color": "never"},
        }
        self.path = dir / "cluster.yml"
        self.path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.control_ports = dead[3:6]

    @property
    def c(self) -> str:
        return str(self.path)


class Listener:
    """A port that listens but never accepts: shows whether anything tried to connect."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def contacted(self) -> bool:
        # The kernel completes a handshake on a listening socket: any attempt is queued here.
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        self.sock.close()


class FakePeer:
    """A loopback server on the cluster key: records what it receives, answers with ``answer``."""

    def __init__(self, answer: Answer, key: bytes = KEY) -> None:
        self.key = key
        self.answer = answer
        self.received: list[dict[str, Any]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(self.key, 1 << 20)
        conn.settimeout(0.05)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                try:
                    messages = decoder.feed(data)
                except WireError:
                    return  # like a real peer: a frame on another key ends the connection
                for msg in messages:
                    self.received.append(msg)
                    for kind, fields in self.answer(msg):
                        conn.sendall(encode(envelope(kind, "fake", 0, fields), self.key))

    def kinds(self) -> list[str]:
        return [m["t"] for m in self.received]

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.fixture
def servers() -> Iterator[list[Any]]:
    """Fake peers and listeners made by a test, closed after it."""
    made: list[Any] = []
    yield made
    for server in made:
        server.close()


def fake_rm(servers: list[Any], kind: str, fields: dict[str, Any],
            key: bytes = KEY) -> FakePeer:
    """An RM that welcomes an admin and answers any request with (kind, fields)."""
    def answer(msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if msg["t"] == "hello":
            return [("welcome", {"epoch": 1})]
        return [(kind, fields)]

    peer = FakePeer(answer, key)
    servers.append(peer)
    return peer


def fake_replica(servers: list[Any], result: dict[str, Any] | None) -> FakePeer:
    """A replica that welcomes a client and answers each request with ``result`` (None: never)."""
    def answer(msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if msg["t"] == "hello":
            return [("welcome", {"ready": True, "watermark": 0})]
        if msg["t"] == "req" and result is not None:
            return [("reply", {"reps": [{"c": r["c"], "r": r["r"], "res": result}
                                        for r in msg["reqs"]]})]
        return []

    peer = FakePeer(answer)
    servers.append(peer)
    return peer


def listener(servers: list[Any]) -> Listener:
    sock = Listener()
    servers.append(sock)
    return sock


def replica_status(**fields: Any) -> dict[str, Any]:
    return {"present": True, "connected": True, "ready": True, "role": "backup",
            "i_am_ready": 1, "seq": 10, "checkpoint_count": 2, "epoch": 1, "pid": 1,
            "heartbeat_age": 0.01, "heartbeat_interval": 0.1, "restarts": 0, "budget_left": 5,
            "budget_exhausted": False, "relaunch": "", "decision": "", **fields}


def rm_status(primary: str | None = "S1", mode: str = "passive",
              **replicas: dict[str, Any]) -> dict[str, Any]:
    """The RM's status (ftds/rm/manager.py status()): S1..S3, each overridable."""
    reps = {rid: replica_status(**{"role": "primary" if rid == primary else "backup",
                                   **replicas.get(rid, {})})
            for rid in ("S1", "S2", "S3")}
    return {"mode": mode, "epoch": 1, "view_version": 0, "primary": primary,
            "members": [r for r, s in reps.items() if s["ready"]],
            "membership": list(reps), "membership_view": 3, "gfd_stable": True,
            "gfd_connected": True, "failover_pending": None, "last_decision": "",
            "replicas": reps}


# ===================================================== 1. no traceback, one line ====
def test_reset_budget_with_the_rm_down(tmp_path):
    cluster = Cluster(tmp_path)
    result = check(ftds("ctl", "reset-budget", "S2", "-c", cluster.c, cwd=tmp_path), 3)
    assert f"the RM at 127.0.0.1:{cluster.rm_port} does not answer" in result.stderr
    assert result.stderr.startswith("ftds ctl reset-budget: ")


def test_incidents_with_the_rm_down(tmp_path):
    cluster = Cluster(tmp_path)
    check(ftds("incidents", "-c", cluster.c, "--timeout", "1", cwd=tmp_path), 3)


def test_client_with_no_replica_reachable(tmp_path):
    cluster = Cluster(tmp_path)
    started = time.monotonic()
    result = check(ftds("client", "-c", cluster.c, "-q", "--timeout", "0.5", "get", "x",
                        cwd=tmp_path), 3)
    assert time.monotonic() - started < 10
    assert "no replica" in result.stderr and result.stdout == ""


def test_workload_with_no_replica_reachable(tmp_path):
    cluster = Cluster(tmp_path)
    result = check(ftds("workload", "-c", cluster.c, "-q", "--connect-timeout", "0.5",
                        "--duration", "1", cwd=tmp_path), 3)
    assert "no replica" in result.stderr


def test_ctl_status_and_bootstrap_with_no_replica(tmp_path):
    cluster = Cluster(tmp_path)
    status = check(ftds("ctl", "status", "-c", cluster.c, cwd=tmp_path), 3)
    assert "unreachable" in status.stdout  # the table still says who
    check(ftds("ctl", "bootstrap", "-c", cluster.c, cwd=tmp_path), 1)
    check(ftds("ctl", "checkpoint", "-c", cluster.c, cwd=tmp_path), 1)
    check(ftds("ctl", "view", "--epoch", "2", "--primary", "S1", "--members", "S1,S2",
               "-c", cluster.c, cwd=tmp_path), 3)  # nobody took it: not "done"


def test_keygen_refuses_an_existing_path(tmp_path):
    (tmp_path / "k").write_text("precious\n")
    result = check(ftds("keygen", "k", cwd=tmp_path), 1)
    assert "k: File exists" in result.stderr
    assert (tmp_path / "k").read_text() == "precious\n"
    check(ftds("keygen", "no/such/dir/k", cwd=tmp_path), 1)
    check(ftds("keygen", "fresh", cwd=tmp_path), 0)


@pytest.mark.parametrize("text, words", [
    (None, "cannot read"),
    ("replicas: [\n", "not valid YAML"),
    ("replicas: []\ngfd: {host: 127.0.0.1, port: 1}\nrm: {host: 127.0.0.1, port: 2}\n"
     "key_file: k\n", "replicas: must be a non-empty list"),
])
@pytest.mark.parametrize("command", [["client", "get", "x"], ["ctl", "status"],
                                     ["check-config"], ["replica", "--id", "S1"]])
def test_a_missing_or_invalid_config_file(tmp_path, text, words, command):
    path = tmp_path / "cluster.yml"
    if text is not None:
        path.write_text(text)
    result = check(ftds(*command, "-c", str(path), cwd=tmp_path), 2)
    assert words in result.stderr and "--config" in result.stderr


def test_a_config_that_is_a_directory_or_without_its_key(tmp_path):
    check(ftds("check-config", "-c", str(tmp_path), cwd=tmp_path), 2)
    cluster = Cluster(tmp_path)
    (tmp_path / "cluster.key").unlink()
    result = check(ftds("ctl", "reset-budget", "S1", "-c", cluster.c, cwd=tmp_path), 2)
    assert "key_file" in result.stderr


def test_the_default_config_missing(tmp_path):
    result = check(ftds("client", "get", "x", cwd=tmp_path), 2)
    assert "absent-default.yml" in result.stderr  # $FTDS_CONFIG is the default


@pytest.mark.parametrize("command", [
    ["replica", "--id", "S9"],
    ["lfd", "--id", "S9"],
    ["ctl", "reset-budget", "S9"],
    ["ctl", "force-primary", "S9", "--accept-data-loss"],
    ["ctl", "promote", "S9"],
    ["ctl", "promote", "--exclude", "S9"],
    ["ctl", "members", "S1,S9"],
    ["ctl", "view", "--epoch", "2", "--primary", "S9", "--members", "S1,S9"],
    ["ctl", "view", "--epoch", "2", "--primary", "S2", "--members", "S1"],
])
def test_an_unknown_replica_id_is_refused_before_anything_is_contacted(tmp_path, servers,
                                                                       command):
    rm = listener(servers)
    s1 = listener(servers)
    cluster = Cluster(tmp_path, {"S1": s1.port}, rm.port)
    result = check(ftds(*command, "-c", cluster.c, cwd=tmp_path), 2)
    assert "S9" in result.stderr or "S2" in result.stderr
    assert not rm.contacted() and not s1.contacted()


@pytest.mark.parametrize("command, code", [
    (["status", "-c", "CFG", "--timeout", "0"], 3),  # ftds status: no verdict is UNKNOWN
    (["status", "-c", "CFG", "--bogus"], 3),
    (["client", "-c", "CFG", "--timeout", "-1", "get", "x"], 2),
    (["client", "-c", "CFG", "--timeout", "nan", "get", "x"], 2),
    (["client", "-c", "CFG", "frob", "x"], 2),
    (["client", "-c", "CFG"], 2),
    (["client", "-c", "CFG", "--bogus", "get", "x"], 2),
    (["incidents", "-c", "CFG", "--last", "-1"], 2),
    (["workload", "-c", "CFG", "--clients", "0"], 2),
    (["workload", "-c", "CFG", "--clients", "2000000"], 2),  # was 18 s of set-up, 0 sent, exit 0
    (["workload", "-c", "CFG", "--mix", "frob"], 2),
    (["workload", "-c", "CFG", "--history", "no/such/dir/h.jsonl"], 2),
    (["workload", "-c", "CFG", "--id", "two words"], 2),
    (["client", "-c", "CFG", "--id", "C1\nEXEC S1 seq=1 e=1 <C2, 1>", "get", "x"], 2),
    (["ctl", "-c", "CFG", "view", "--epoch", "0", "--primary", "S1", "--members", "S1"], 2),
    (["ctl", "-c", "CFG", "members", ","], 2),
    (["ctl", "-c", "CFG", "members", "S1,S1"], 2),  # was sent: a view "ready S1, S1"
    (["ctl", "-c", "CFG", "view", "--epoch", "99999999999999999999999", "--primary", "S1",
      "--members", "S1"], 2),  # was a traceback from the codec
    (["ctl", "-c", "CFG", "promote", ""], 2),
    (["ctl", "-c", "CFG"], 2),
    (["local", "up", "--replicas", "0"], 2),
    (["local", "up", "--base-port", "99999"], 2),
    (["frob"], 2),
    ([], 2),
])
def test_bad_arguments_are_one_line_usage_errors(tmp_path, command, code):
    cluster = Cluster(tmp_path)
    result = check(ftds(*[cluster.c if a == "CFG" else a for a in command], cwd=tmp_path),
                   code)
    assert result.stderr.startswith("ftds") and result.stdout == ""


# ================================================== 2. --version, -c anywhere ====
def test_version(tmp_path):
    result = check(ftds("--version", cwd=tmp_path), 0)
    assert result.stdout.strip() == f"ftds {importlib.metadata.version('ftds')}"


@pytest.mark.parametrize("argv", [
    ["--config", "CFG", "status"],
    ["status", "--config", "CFG"],
    ["-c", "CFG", "status"],
    ["status", "-c", "CFG"],
    ["--config", "CFG", "ctl", "reset-budget", "S1"],
    ["ctl", "--config", "CFG", "reset-budget", "S1"],
    ["ctl", "reset-budget", "S1", "--config", "CFG"],
])
def test_config_before_or_after_the_command(tmp_path, servers, argv):
    # The file names an RM that answers: reaching it proves this file was read.
    def answer(msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        if msg["t"] == "hello":
            return [("welcome", {})]
        if msg["t"] == "status_req":
            return [("status", rm_status())]
        return [("ok", {"replica": "S1"})]

    rm = FakePeer(answer)
    servers.append(rm)
    cluster = Cluster(tmp_path, rm_port=rm.port)
    check(ftds(*[cluster.c if a == "CFG" else a for a in argv], cwd=tmp_path), 0)
    assert rm.kinds()[0] == "hello"


def test_config_after_a_nested_command_wins_over_one_before(tmp_path):
    cluster = Cluster(tmp_path)
    result = check(ftds("-c", "absent.yml", "ctl", "status", "-c", cluster.c, cwd=tmp_path), 3)
    assert "absent.yml" not in result.stderr  # the later one was used: its replicas are down


# ========================================== 3. arguments checked before connecting ====
@pytest.mark.parametrize("request_args", [
    ["put", "x"],
    ["put", "x", "1", "2"],
    ["incr", "x", "notanumber"],
    ["incr", "x", "1", "2"],
    ["get", "x", "extra"],
    ["delete", "x", "extra"],
    ["cas", "x", "1"],
    ["put", "x", "99999999999999999999999"],  # beyond 64 bits: the replicas would refuse it
    ["put", "k" * 300, "1"],  # key too long
    ["put", "x", "1e400"],  # JSON, but no finite number: it was stored as null
    ["cas", "x", "1", "[1, -1e999]"],
    ["put", "x", "[" * 3000 + "]" * 3000],  # nested past the parser: was a traceback
    ["put", "x", "9" * 5000],  # past Python's digit limit: was a traceback
])
def test_client_arguments_are_checked_before_connecting(tmp_path, servers, request_args):
    replica = listener(servers)
    cluster = Cluster(tmp_path, {"S1": replica.port})
    result = check(ftds("client", "-c", cluster.c, "-q", *request_args, cwd=tmp_path), 2)
    assert result.stderr.startswith("ftds client: ")
    assert not replica.contacted()


def test_usage_errors_come_before_config_errors(tmp_path):
    # No cluster file at all: the arguments alone are wrong, and that is what is said.
    result = check(ftds("client", "-c", "absent.yml", "incr", "x", "y", cwd=tmp_path), 2)
    assert "DELTA" in result.stderr


# ============================================== 4. client --timeout and exit codes ====
def test_client_success_is_0(tmp_path, servers):
    replica = fake_replica(servers, {"ok": True, "value": 42})
    cluster = Cluster(tmp_path, {"S1": replica.port})
    result = check(ftds("client", "-c", cluster.c, "-q", "incr", "x", "2", cwd=tmp_path), 0)
    assert result.stdout.strip() == '{"ok": true, "value": 42}'
    sent = next(m for m in replica.received if m["t"] == "req")["reqs"][0]["op"]
    assert sent == {"op": "incr", "key": "x", "delta": 2}


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "[NaN]"])
def test_a_value_that_is_not_json_is_sent_as_the_string_it_is(tmp_path, servers, text):
    """Python's parser takes NaN and Infinity, which are not JSON, as floats, and the wire
    carries those as null: ``put x NaN`` stored null and said ok."""
    replica = fake_replica(servers, {"ok": True})
    cluster = Cluster(tmp_path, {"S1": replica.port})
    check(ftds("client", "-c", cluster.c, "-q", "put", "x", "--", text, cwd=tmp_path), 0)
    sent = next(m for m in replica.received if m["t"] == "req")["reqs"][0]["op"]
    assert sent == {"op": "put", "key": "x", "value": text}


def test_client_error_reply_is_1(tmp_path, servers):
    replica = fake_replica(servers, {"ok": False, "error": "value of 'x' is not "
                                                                     "an integer"})
    cluster = Cluster(tmp_path, {"S2": replica.port})
    result = check(ftds("client", "-c", cluster.c, "-q", "incr", "x", cwd=tmp_path), 1,
                   one_line=False)
    assert '"ok": false' in result.stdout


def test_client_without_a_reply_in_time_is_3(tmp_path, servers):
    replica = fake_replica(servers, None)  # welcomes, never answers
    cluster = Cluster(tmp_path, {"S1": replica.port})
    started = time.monotonic()
    result = check(ftds("client", "-c", cluster.c, "-q", "--timeout", "1", "put", "x", "5",
                        cwd=tmp_path), 3)
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 8, elapsed
    assert "no reply within 1s" in result.stderr and "may or may not" in result.stderr
    assert "req" in replica.kinds() and result.stdout == ""


def test_client_timeout_defaults_to_5_and_help_names_the_exit_codes(tmp_path):
    args = build_parser().parse_args(["client", "get", "x"])
    assert args.timeout == 5.0
    help_text = check(ftds("client", "--help", cwd=tmp_path), 0).stdout
    for line in ("0  the request succeeded", "1  the request is known to have failed",
                 "2  usage error", "3  outcome unknown"):
        assert line in help_text


# ================================================================ 5. status codes ====
@pytest.mark.parametrize("status, code, words", [
    (rm_status(), 0, "primary S1"),
    (rm_status(S2={"present": False, "ready": False, "role": "down"}), 1, "S2 down"),
    (rm_status(S3={"ready": False}), 1, "S3 not ready"),
    (rm_status(S2={"budget_exhausted": True, "budget_left": 0}), 1, "S2 restart budget"),
    (rm_status(S1={"budget_exhausted": True}), 1, "S1 restart budget"),
    (rm_status(primary=None), 2, "no primary"),
    (rm_status(mode="active", primary=None), 2, "no sequencer"),
    (rm_status(S1={"present": False, "ready": False}), 2, "primary S1 is not present"),
    (rm_status(S1={"ready": False}), 2, "primary S1 is not ready"),
    (rm_status(primary="S7"), 2, "primary S7 is not present"),
    ({**rm_status(S1={"present": False}), "unavailable": "S2 lacks writes S1 acknowledged"},
     2, "primary S1 is not present (the RM waits: S2 lacks writes S1 acknowledged)"),
])
def test_health_verdicts(status, code, words):
    verdict, why = health(status)
    assert verdict == code and words in why, (verdict, why)


@pytest.mark.parametrize("status, code, verdict", [
    (rm_status(), 0, "OK"),
    (rm_status(S3={"present": False, "ready": False, "role": "down"}), 1, "DEGRADED"),
    (rm_status(S1={"ready": False}), 2, "CRITICAL"),
])
@pytest.mark.parametrize("as_json", [False, True])
def test_status_exit_codes(tmp_path, servers, status, code, verdict, as_json):
    rm = fake_rm(servers, "status", status)
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("status", "-c", cluster.c, *(["--json"] if as_json else []),
                        cwd=tmp_path), code, one_line=False)
    assert result.stderr == ""
    if not as_json:
        assert result.stdout.strip().splitlines()[-1].startswith(f"{verdict}: ")


def test_status_with_the_rm_down_is_3(tmp_path):
    cluster = Cluster(tmp_path)
    result = check(ftds("status", "-c", cluster.c, "--timeout", "1", cwd=tmp_path), 3)
    assert f":{cluster.rm_port} does not answer" in result.stderr


def test_status_with_a_bad_config_is_3(tmp_path):
    check(ftds("status", "-c", "absent.yml", cwd=tmp_path), 3)


def test_status_help_names_the_exit_codes(tmp_path):
    help_text = check(ftds("status", "--help", cwd=tmp_path), 0).stdout
    for words in ("0  OK", "1  DEGRADED", "2  CRITICAL", "3  UNKNOWN"):
        assert words in help_text


# ============================================================= 6. force-primary ====
def test_force_primary_refuses_without_accept_data_loss(tmp_path, servers):
    rm = listener(servers)
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("ctl", "force-primary", "S2", "-c", cluster.c, cwd=tmp_path), 2)
    assert "--accept-data-loss" in result.stderr
    assert not rm.contacted()


def test_force_primary_prints_the_rms_message(tmp_path, servers):
    message = "operator forced S2 (seq 7) to be the primary of epoch 4; writes lost"
    rm = fake_rm(servers, "ok", {"replica": "S2", "epoch": 4, "message": message})
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("ctl", "force-primary", "S2", "--accept-data-loss", "-c", cluster.c,
                        cwd=tmp_path), 0)
    assert result.stdout.strip() == message
    asked = [m for m in rm.received if m["t"] == "force_primary"]
    assert len(asked) == 1
    assert asked[0]["replica"] == "S2" and asked[0]["accept_data_loss"] is True
    assert rm.kinds() == ["hello", "force_primary"]  # the admin connection, as reset-budget


@pytest.mark.parametrize("code, message", [
    ("not_present", "S2 is not up (or has not reported yet); start it first"),
    ("unknown_type", "'force_primary' is not an RM command"),
])
def test_force_primary_refused_by_the_rm_is_1(tmp_path, servers, code, message):
    rm = fake_rm(servers, "error", {"code": code, "message": message})
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("ctl", "force-primary", "S2", "--accept-data-loss", "-c", cluster.c,
                        cwd=tmp_path), 1)
    assert message in result.stderr and result.stdout == ""


def test_force_primary_with_the_rm_down_is_3(tmp_path):
    cluster = Cluster(tmp_path)
    check(ftds("ctl", "force-primary", "S2", "--accept-data-loss", "-c", cluster.c,
               cwd=tmp_path), 3)


def test_force_primary_without_a_reply_is_3(tmp_path, servers):
    rm = FakePeer(lambda m: [("welcome", {})] if m["t"] == "hello" else [])
    servers.append(rm)
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("ctl", "force-primary", "S2", "--accept-data-loss", "--timeout", "0.5",
                        "-c", cluster.c, cwd=tmp_path), 3)
    assert "did not reply within 0.5s" in result.stderr


def test_an_rm_on_another_key_is_3_not_a_traceback(tmp_path, servers):
    rm = fake_rm(servers, "ok", {}, key=b"another-cluster-key-entirely")
    cluster = Cluster(tmp_path, rm_port=rm.port)
    result = check(ftds("ctl", "reset-budget", "S1", "-c", cluster.c, cwd=tmp_path), 3)
    assert "cluster key" in result.stderr


def test_reset_budget_refused_by_the_rm_is_1(tmp_path, servers):
    rm = fake_rm(servers, "error", {"code": "unknown_replica", "message": "no S1"})
    cluster = Cluster(tmp_path, rm_port=rm.port)
    check(ftds("ctl", "reset-budget", "S1", "-c", cluster.c, cwd=tmp_path), 1)


# ====================================================================== 7. help ====
def _actions(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _actions(child, f"{path} {name}")
        else:
            yield path, action


def test_every_option_has_help():
    missing = [f"{path} {action.option_strings or action.dest}"
               for path, action in _actions(build_parser(), "ftds")
               # chaos check belongs to a change of its own, under way elsewhere
               if not action.help and not path.startswith("ftds chaos check")]
    assert missing == []


def test_check_config_of_a_tls_cluster_loads_every_identity_of_the_host(tmp_path):
    from ftds import local

    path = local.write_cluster(tmp_path / "c", 3, base=46100, tls=True)
    result = ftds("check-config", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "TLS identities here: GFD, LFD1, LFD2, LFD3, RM, S1, S2, S3, admin, client" in \
        result.stdout
    (tmp_path / "c" / "tls" / "S2.key").unlink()
    result = check(ftds("check-config", "-c", str(path), cwd=tmp_path), 2)
    assert "S2's certificate" in result.stderr and "S2.key" in result.stderr
