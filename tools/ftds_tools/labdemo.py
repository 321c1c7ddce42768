"""The lab demo: clients running on h5, a replica stopped with systemctl, the RM bringing it back.

Run by ``scripts/demo`` after the lab is up and deployed. It leaves the lab running.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ftds.config import load_config
from ftds.rmclient import rm_request
from ftds.status import incidents_text, status_text

from .labenv import Lab


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 72 - len(text)), flush=True)


def stream(proc: subprocess.Popen[str], prefix: str, keep: list[str],
           quiet: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        keep.append(line)
        if not quiet.is_set():
            print(f"{prefix}{line.rstrip()}", flush=True)


def main() -> int:
    lab = Lab()
    work = Path(tempfile.mkdtemp(prefix="ftds-demo-"))
    config = load_config(lab.fetch_cluster(work))
    key = config.read_key()

    def status() -> dict[str, Any] | None:
        try:
            return asyncio.run(rm_request(config, key, "status_req", timeout=2.0))
        except (OSError, TimeoutError, ConnectionError):
            return None

    def wait_healthy(timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = status()
            if s and s["primary"] and s["gfd_stable"] and \
                    all(r["ready"] for r in s["replicas"].values()):
                return s
            time.sleep(0.1)
        raise SystemExit("the cluster did not become healthy; see `ftds status` on "
                         f"{lab.manager}")

    hosts = ", ".join(f"{r} on {h}" for r, h in sorted(lab.replica_hosts.items()))
    banner(f"The lab: {hosts}; GFD and RM on {lab.manager}; clients on {lab.clients[0]}")
    s = wait_healthy()
    print(status_text(s))

    banner(f"Clients C1, C2, C3 on {lab.clients[0]} (every request to every replica)")
    procs, readers = [], []
    lines: list[str] = []
    quiet = threading.Event()
    for name in ("C1", "C2", "C3"):
        client_cmd = (f"exec /opt/ftds/bin/ftds workload --config /etc/ftds/cluster.yml "
                      f"--id {name} --clients 1 --rate 2 --duration 86400 --keys 3 --json")
        proc = subprocess.Popen(["ssh", "-F", str(lab.ssh_config), "-o", "ControlMaster=no",
                                 "-o", "ControlPath=none", lab.clients[0], client_cmd],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=stream, daemon=True,
                                  args=(proc, f"  {lab.clients[0]} {name} | ", lines, quiet))
        reader.start()
        procs.append(proc)
        readers.append(reader)
    time.sleep(4)

    victim = next(r for r in sorted(s["replicas"]) if r != s["primary"])
    host = lab.host_of(victim)
    since = lab.ssh(lab.manager, "date '+%Y-%m-%d %H:%M:%S'", shared=True).stdout.strip()
    banner(f"On {host}: systemctl stop ftds-replica@{victim}   (the clients keep going)")
    stopped = time.monotonic()
    lab.ssh(host, f"systemctl stop ftds-replica@{victim}.service")
    time.sleep(0.5)
    s = wait_healthy()
    took = time.monotonic() - stopped
    time.sleep(1)
    quiet.set()
    banner(f"The RM brought {victim} back over SSH; ready again after {took:.1f}s")
    journal = lab.ssh(lab.manager, f"journalctl -u ftds-rm -u ftds-gfd --since '{since}' "
                                   "-o cat --no-pager", shared=True).stdout
    for line in journal.splitlines():
        if any(w in line for w in ("members", "RM: ", "GFD:")):
            print(f"  {lab.manager} | {line}")
    banner(f"ftds status (on {lab.manager})")
    print(lab.ssh(lab.manager, "ftds status", check=False, shared=True).stdout.rstrip())
    banner(f"ftds incidents (on {lab.manager})")
    print(incidents_text(asyncio.run(rm_request(config, key, "incidents_req"))["incidents"]))

    lab.ssh(lab.clients[0], "pkill -INT -f 'ftds workload' || true", check=False)
    summaries = []
    for proc, reader in zip(procs, readers, strict=True):
        out, _ = proc.communicate(timeout=60)
        reader.join(5)
        summaries.append(json.loads(out) if out.strip() else {})
    banner("The clients")
    for name, summary in zip(("C1", "C2", "C3"), summaries, strict=True):
        if summary:
            print(f"  {name}: {summary['acked']} requests acknowledged, {summary['failed']} "
                  f"failed, {summary['retries']} retried with the same request_num, "
                  f"{summary['duplicates']} duplicate replies discarded")
    primary, primary_host = s["primary"], lab.host_of(s["primary"])
    print(f"""
The lab keeps running. Try:
  ssh -F inventory/lab/ssh_config {lab.manager} ftds status
  ssh -F inventory/lab/ssh_config {primary_host} systemctl stop ftds-replica@{primary}
  scripts/lab crash {primary_host}; scripts/lab start {primary_host}
  scripts/lab partition {primary_host}; scripts/lab heal
  ftds chaos run --target lab --faults 10      (after deploying with executions traced)
Take it down with: scripts/lab down""")
    return 0 if all(s and s.get("failed", 1) == 0 for s in summaries) else 1


if __name__ == "__main__":
    sys.exit(main())
