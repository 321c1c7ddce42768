"""Shared helpers for the loopback integration tests: real processes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ftds import ctl, local
from ftds.config import ClusterConfig, load_config

ROOT = Path(__file__).resolve().parents[1]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def wait_until(predicate: Any, timeout: float, what: str, context: Any = None,
               interval: float = 0.05) -> Any:
    """Poll ``predicate()`` until it returns something truthy; fail naming ``what`` (and the
    state ``context()`` describes) when ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            state = f"; state: {context()}" if context else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{state}")
        time.sleep(interval)


class LocalCluster:
    """Replicas as separate processes; views by ``ftds ctl`` (the RM's part, by hand)."""

    def __init__(self, run_dir: Path, replicas: int = 3, mode: str = "passive",
                 tunables: dict[str, float] | None = None, trace: bool = False,
                 env: dict[str, dict[str, str]] | None = None, tls: bool = False) -> None:
        self.dir = run_dir
        self.path = local.write_cluster(run_dir, replicas, mode, tunables=tunables,
                                        trace={"requests": trace}, tls=tls)
        self.config: ClusterConfig = load_config(self.path)
        self.key = self.config.read_key()
        self.env = env or {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.clients: list[subprocess.Popen[bytes]] = []

    # -- processes -------------------------------------------------------------------------
    def start(self, rid: str) -> None:
        log = open(self.dir / "logs" / f"{rid}.log", "ab")  # noqa: SIM115
        self.procs[rid] = subprocess.Popen(
            [sys.executable, "-m", "ftds", "replica", "--config", str(self.path), "--id", rid],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env.get(rid, {})})
        log.close()
        self.wait(lambda: self.status_of(rid) is not None, 15, f"{rid} to listen")

    def kill(self, rid: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(rid)
        proc.send_signal(sig)
        proc.wait(10)

    def stop_all(self) -> None:
        self.kill_clients()
        for rid in list(self.procs):
            with contextlib.suppress(Exception):
                self.kill(rid, signal.SIGTERM)

    def kill_clients(self) -> None:
        """Clients a failed test left running must not outlive it."""
        for proc in self.clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    # -- state -----------------------------------------------------------------------------
    def statuses(self) -> dict[str, dict[str, Any] | None]:
        return run(ctl.statuses(self.config, self.key, timeout=1.0))

    def status_of(self, rid: str) -> dict[str, Any] | None:
        spec = self.config.replica(rid)
        return run(ctl._ask(self.config, self.key, spec, "status_req", None, 1.0))

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout, what, self.statuses)

    def bootstrap(self, members: list[str] | None = None) -> None:
        from ftds.view import View

        ids = members or self.config.replica_ids
        run(ctl.send_view(self.config, self.key, View(1, 0, ids[0], tuple(ids))))
        self.wait(lambda: all((self.status_of(r) or {}).get("i_am_ready") for r in ids), 10,
                  "bootstrap")

    def converged(self, ids: list[str]) -> dict[str, dict[str, Any]] | None:
        """Statuses when every replica in ``ids`` is ready at the same seq, else None."""
        status = {r: self.status_of(r) for r in ids}
        if not all(s and s["i_am_ready"] for s in status.values()):
            return None
        if len({s["seq"] for s in status.values()}) != 1:  # type: ignore[index]
            return None
        return status  # type: ignore[return-value]

    def wait_converged(self, ids: list[str], timeout: float = 15) -> dict[str, dict[str, Any]]:
        return self.wait(lambda: self.converged(ids), timeout, f"{ids} to converge")

    # -- clients ---------------------------------------------------------------------------
    def workload(self, name: str, history: Path, *, clients: int = 2, rate: float = 100,
                 duration: float = 3.0, keys: int = 3, mix: str = "incr") -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftds", "workload", "--config", str(self.path), "--id", name,
             "--clients", str(clients), "--rate", str(rate), "--duration", str(duration),
             "--keys", str(keys), "--mix", mix, "--history", str(history), "--json", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.clients.append(proc)
        return proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"workload failed ({proc.returncode}): {err.decode()[-2000:]}"
    return json.loads(out)


def read_history(*paths: Path) -> list[dict[str, Any]]:
    events = []
    for path in paths:
        with open(path, "rb") as fh:
            events.extend(json.loads(line) for line in fh)
    return events


def acked_increments(events: list[dict[str, Any]]) -> Counter[str]:
    """Per key, how many incr operations were acknowledged."""
    counts: Counter[str] = Counter()
    for e in events:
        if e["type"] == "ok" and e["op"]["op"] == "incr":
            counts[e["op"]["key"]] += e["op"].get("delta", 1)
    return counts


def unknown_increments(events: list[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for e in events:
        if e["type"] == "info" and e["op"]["op"] == "incr":
            counts[e["op"]["key"]] += e["op"].get("delta", 1)
    return counts


async def read_keys(config: ClusterConfig, key: bytes, keys: list[str],
                    name: str = "checker") -> dict[str, Any]:
    from ftds.client import Client

    client = Client(config, key, name, trace=False)
    await client.start()
    try:
        await client.wait_connected(10, count=1)
        await asyncio.sleep(0.1)
        values = {}
        for k in keys:
            reply = await asyncio.wait_for(client.call({"op": "get", "key": k}), 20)
            values[k] = reply["res"]["value"]
        return values
    finally:
        await client.close()


def scrape(host: str, port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's parser (a malformed page fails)."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class ManagedCluster(LocalCluster):
    """``ftds local up``: replicas, LFDs, GFD and RM under the local supervisor."""

    def __init__(self, run_dir: Path, replicas: int = 3, mode: str = "passive",
                 tunables: dict[str, float] | None = None, trace: bool = False,
                 env: dict[str, str] | None = None, base_port: int | None = None,
                 replication: str = "sync", tls: bool = False) -> None:
        self.dir = run_dir
        self.path = local.write_cluster(run_dir, replicas, mode, base=base_port,
                                        tunables=tunables, trace={"requests": trace},
                                        replication=replication, tls=tls)
        self.config = load_config(self.path)
        self.key = self.config.read_key()
        self.env = {}
        self.procs = {}
        self.clients = []
        self.sup_env = {**os.environ, **(env or {})}

    def up(self, timeout: float = 30, wait: bool = True) -> dict[str, Any] | None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ftds", "local", "supervise", "--dir", str(self.dir)],
            stdout=open(self.dir / "logs" / "supervisor.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.sup_env,
            start_new_session=True)
        (self.dir / "pids" / "supervisor.pid").write_text(f"{proc.pid}\n")
        self.supervisor = proc
        return self.wait_healthy(timeout) if wait else None

    def down(self) -> None:
        local.stop_cluster(self.dir)
        with contextlib.suppress(Exception):
            self.supervisor.wait(10)

    def stop_all(self) -> None:
        self.kill_clients()
        self.down()

    def pid(self, name: str) -> int:
        pid = local.read_pid(self.dir, name)
        assert pid is not None, f"{name} is not running"
        return pid

    def signal(self, name: str, sig: int) -> int:
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    def rm_status(self) -> dict[str, Any] | None:
        from ftds.rmclient import rm_request

        try:
            return run(rm_request(self.config, self.key, "status_req", timeout=2.0))
        except (OSError, TimeoutError, ConnectionError):
            return None

    def incidents(self) -> list[dict[str, Any]]:
        from ftds.rmclient import rm_request

        return run(rm_request(self.config, self.key, "incidents_req"))["incidents"]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The RM's Prometheus exposition, scraped and parsed: {(sample, labels): value}."""
        return scrape(self.config.rm.host, self.config.rm_metrics_port)

    def healthy(self) -> dict[str, Any] | None:
        """RM status when every configured replica is up and ready under a primary."""
        status = self.rm_status()
        if not status or not status["primary"] or status.get("failover_pending"):
            return None
        if not all(r["ready"] for r in status["replicas"].values()):
            return None
        return status

    def wait_healthy(self, timeout: float = 30) -> dict[str, Any]:
        return self.wait(self.healthy, timeout, "a healthy cluster")

    def primary(self) -> str:
        status = self.rm_status()
        assert status and status["primary"]
        return status["primary"]


def check_counters(cluster: LocalCluster, histories: list[Path], *,
                   ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every acknowledged increment is in the final state exactly once; digests agree."""
    events = read_history(*histories)
    acked = acked_increments(events)
    unknown = unknown_increments(events)
    assert acked, "the workload acknowledged nothing"
    status = cluster.wait_converged(ids)
    digests = {s["digest"] for s in status.values()}
    assert len(digests) == 1, f"replicas diverged: {status}"
    values = run(read_keys(cluster.config, cluster.key, sorted(acked)))
    for key, count in acked.items():
        assert count <= values[key] <= count + unknown[key], (
            f"{key}: {count} acknowledged increments (+{unknown[key]} unknown) "
            f"but the value is {values[key]}")
    return status
