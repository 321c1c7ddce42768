"""The deployed lab as the end-to-end tests drive it: status, clients on h5, checks."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from helpers import wait_until

from ftds import ctl
from ftds.config import load_config
from ftds.rmclient import rm_request
from ftds_tools.chaos.checks import check_counters, check_epochs, parse_replica_logs
from ftds_tools.chaos.history import load
from ftds_tools.chaos.linearizability import check
from ftds_tools.labenv import REPO, Lab


class LabCluster:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.work = work
        self.refetch()
        self.client_host = lab.clients[0]
        self._workload: subprocess.Popen[str] | None = None
        self._started = ""

    def refetch(self) -> None:
        """Take the deployed cluster file and key again (after a deploy that changed them)."""
        self.path = self.lab.fetch_cluster(self.work / "cluster")
        self.config = load_config(self.path)
        self.key = self.config.read_key()

    # -- observing ---------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        try:
            return asyncio.run(rm_request(self.config, self.key, "status_req", timeout=2.0))
        except (OSError, TimeoutError, ConnectionError):
            return None

    def incidents(self) -> list[dict[str, Any]]:
        return asyncio.run(rm_request(self.config, self.key, "incidents_req"))["incidents"]

    def healthy(self) -> dict[str, Any] | None:
        s = self.status()
        if s and s["primary"] and s["gfd_stable"] and not s.get("failover_pending") and \
                all(r["ready"] for r in s["replicas"].values()):
            return s
        return None

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout, what,
                          lambda: json.dumps(self.status(), indent=1), interval=0.1)

    def wait_healthy(self, timeout: float = 60) -> dict[str, Any]:
        return self.wait(self.healthy, timeout, "a healthy cluster")

    def closed_incident(self, replica: str, since: float, timeout: float = 60) -> dict[str, Any]:
        def find() -> list[dict[str, Any]]:
            return [i for i in self.incidents() if i["replica"] == replica and i["closed"]
                    and i["detected"] >= since - 1]
        return self.wait(find, timeout, f"the incident of {replica} to close")[-1]

    def unit_pid(self, host: str, unit: str) -> int:
        out = self.lab.ssh(host, f"systemctl show -p MainPID --value {unit}", shared=True)
        return int(out.stdout.strip())

    def journal(self, host: str, unit: str, since: str) -> str:
        return self.lab.ssh(host, f"journalctl -u {unit} --since '{since}' -o cat --no-pager",
                            shared=True).stdout

    def now_on_lab(self) -> str:
        return self.lab.ssh(self.lab.manager, "date '+%Y-%m-%d %H:%M:%S'",
                            shared=True).stdout.strip()

    # -- clients -----------------------------------------------------------------------
    def start_clients(self, name: str = "C1", sessions: int = 4, rate: float = 60) -> None:
        self._started = self.now_on_lab()
        self._history = f"/tmp/ftds-e2e-{name}.jsonl"
        self.lab.ssh(self.client_host, f"rm -f {self._history}", shared=True)
        command = (f"exec /opt/ftds/bin/ftds workload --config /etc/ftds/cluster.yml --id {name}"
                   f" --clients {sessions} --rate {rate} --duration 86400 --keys 4 --mix rw"
                   f" --prefix {name}-{time.time_ns()}-"
                   f" --history {self._history} --json -q")
        self._workload = subprocess.Popen(
            ["ssh", "-F", str(self.lab.ssh_config), "-o", "ControlMaster=no", "-o",
             "ControlPath=none", self.client_host, command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)

    def stop_clients_and_check(self) -> dict[str, Any]:
        """Stop the clients; check linearizability, counters, epochs and digests."""
        assert self._workload is not None
        self.lab.ssh(self.client_host, "pkill -INT -f 'ftds workload' || true", check=False)
        out, err = self._workload.communicate(timeout=120)
        summary = json.loads(out) if out.strip() else {}
        history = self.work / Path(self._history).name
        history.write_text(self.lab.ssh(self.client_host, f"cat {self._history}",
                                        timeout=120).stdout)
        ops = load([history])
        assert sum(1 for o in ops if o.outcome == "ok") > 50, (summary, err[-500:])
        bad = [v.explanation for v in check(ops) if not v.ok]
        assert not bad, f"not linearizable: {bad[0]}"
        counters = sorted({o.key for o in ops if o.f == "incr"})
        final = asyncio.run(self._read(counters))
        problems = check_counters(ops, final)
        assert not problems, problems[0].text
        logs = {rid: self.journal(host, f"ftds-replica@{rid}.service", self._started)
                for rid, host in self.lab.replica_hosts.items()}
        _, takeovers = parse_replica_logs(logs)
        problems = check_epochs(takeovers, ops)
        assert not problems, problems[0].text
        statuses = self.converged()
        digests = {s["digest"] for s in statuses.values() if s}
        assert len(digests) == 1, f"digests differ: {statuses}"
        return summary

    async def _read(self, keys: list[str]) -> dict[str, Any]:
        from ftds.client import Client

        client = Client(self.config, self.key, f"e2e-reader-{time.time_ns()}", trace=False)
        await client.start()
        try:
            await client.wait_connected(20, count=1)
            await asyncio.sleep(0.2)
            return {k: (await asyncio.wait_for(client.call({"op": "get", "key": k}), 30))
                    ["res"]["value"] for k in keys}
        finally:
            await client.close()

    def converged(self, timeout: float = 30) -> dict[str, dict[str, Any]]:
        def same() -> dict[str, dict[str, Any]] | None:
            status = asyncio.run(ctl.statuses(self.config, self.key, timeout=2.0))
            if all(s and s["i_am_ready"] for s in status.values()) and \
                    len({s["seq"] for s in status.values()}) == 1:  # type: ignore[index]
                return status  # type: ignore[return-value]
            return None
        return self.wait(same, timeout, "the replicas to converge")

    # -- deploying ---------------------------------------------------------------------
    def deploy(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(REPO / "scripts" / "deploy"), *args], capture_output=True,
                                text=True, timeout=900, cwd=REPO)
        if check:
            assert result.returncode == 0, \
                f"deploy failed:\n{result.stdout[-3000:]}\n{result.stderr}"
        return result

    def unit_pids(self) -> dict[tuple[str, str], int]:
        """The main PID of every ftds unit on the lab (0 for one that is not running)."""
        units = {(h, f"ftds-{kind}@{r}.service") for r, h in self.lab.replica_hosts.items()
                 for kind in ("replica", "lfd")}
        units |= {(self.lab.manager, "ftds-gfd.service"), (self.lab.manager, "ftds-rm.service")}
        return {u: self.unit_pid(*u) for u in sorted(units)}
