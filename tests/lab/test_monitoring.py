"""Prometheus on the lab (role ftds_monitoring, on the manager: scripts/lab puts it in the
ftds_monitoring group): it scrapes every ftds daemon, and an alert of the repository's rules
fires on the lab for what it describes: a backup whose restart budget the RM spent.

Run by scripts/test-lab after test_e2e.py; the cluster is left healthy, every budget full.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
import yaml
from helpers import wait_until

from ftds_tools.labenv import INVENTORY

PORT = 9090  # ftds_monitoring_listen_port
ALERT = "FtdsRestartBudgetExhausted"


@pytest.fixture(scope="module")
def prometheus(cluster) -> str:
    """The base URL of the lab's Prometheus (on the manager's address, from the controller)."""
    data = yaml.safe_load((INVENTORY / "hosts.yml").read_text())["all"]
    hosts = (data["children"].get("ftds_monitoring") or {}).get("hosts") or {}
    if not hosts:
        pytest.skip("the lab inventory has no ftds_monitoring group (scripts/lab writes it)")
    return f"http://{cluster.lab.addresses[next(iter(hosts))]}:{PORT}"


def api(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def ftds_targets(base: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["labels"]["job"], t["labels"]["instance"]): t
            for t in api(base, "/api/v1/targets?state=active")["activeTargets"]
            if t["labels"]["job"].startswith("ftds-")}


def alerts(base: str, name: str) -> dict[str | None, dict[str, Any]]:
    """replica -> the pending or firing alert ``name`` about it."""
    return {a["labels"].get("replica"): a for a in api(base, "/api/v1/alerts")["alerts"]
            if a["labels"]["alertname"] == name}


def test_a_prometheus_scrapes_every_ftds_daemon(cluster, prometheus):
    cluster.wait_healthy()
    config = cluster.config
    want = {("ftds-replica", f"{r.host}:{r.metrics_port}") for r in config.replicas
            if r.metrics_port}
    if config.rm_metrics_port:
        want.add(("ftds-rm", f"{config.rm.host}:{config.rm_metrics_port}"))
    assert want, "no ftds daemon serves metrics on the lab"

    def all_up() -> dict[tuple[str, str], dict[str, Any]] | None:
        targets = ftds_targets(prometheus)
        up = set(targets) == want and all(t["health"] == "up" for t in targets.values())
        return targets if up else None

    targets = wait_until(all_up, 30, "every ftds target up in Prometheus",
                         lambda: json.dumps(ftds_targets(prometheus), indent=1), interval=1.0)
    replicas = {t["labels"]["replica"] for (job, _), t in targets.items()
                if job == "ftds-replica"}
    assert replicas == {r.id for r in config.replicas if r.metrics_port}
    rules = {r["name"]: r for g in api(prometheus, "/api/v1/rules?type=alert")["groups"]
             for r in g["rules"]}
    assert ALERT in rules and all(r["health"] != "err" for r in rules.values()), rules


def test_b_a_spent_restart_budget_fires_its_alert_until_reset(cluster, prometheus):
    """Kill a backup (SIGKILL, as a crash) each time the RM has relaunched it, until the RM
    stops relaunching it (EXHAUSTED); the alert fires within its `for:` (30s) plus a scrape and
    an evaluation; `ftds ctl reset-budget` (what the alert says to run) brings the replica
    back and the alert goes."""
    start = cluster.wait_healthy()
    budget = cluster.config.tunables.restart_budget
    if budget > 10:
        pytest.skip(f"restart_budget {budget}: too many crashes to spend it here")
    victim = max(r for r in start["replicas"] if r != start["primary"])
    host, manager = cluster.lab.host_of(victim), cluster.lab.manager
    unit = f"ftds-replica@{victim}.service"
    wait_until(lambda: ftds_targets(prometheus).get(
                   ("ftds-rm", f"{cluster.config.rm.host}:{cluster.config.rm_metrics_port}"),
                   {}).get("health") == "up",
               30, "Prometheus scraping the RM", interval=1.0)
    assert victim not in alerts(prometheus, ALERT), "the alert is on before the test"

    def replica() -> dict[str, Any]:
        status = cluster.status()
        assert status, "the RM does not answer"
        return status["replicas"][victim]

    def relaunched_or_exhausted(restarts: int) -> str | None:
        r = replica()
        if r["budget_exhausted"]:
            return "exhausted"
        return "relaunched" if r["restarts"] > restarts and r["ready"] else None

    try:
        for _ in range(budget + 1):
            before = replica()
            if before["budget_exhausted"]:
                break
            cluster.lab.ssh(host, f"systemctl kill -s KILL {unit}")
            outcome = cluster.wait(lambda n=before["restarts"]: relaunched_or_exhausted(n), 60,
                                   f"the RM to relaunch {victim} or give up on it")
            if outcome == "exhausted":
                break
        now = replica()
        assert now["budget_exhausted"] and not now["present"], now
        exhausted_at = time.monotonic()

        def firing() -> dict[str, Any] | None:
            alert = alerts(prometheus, ALERT).get(victim)
            return alert if alert and alert["state"] == "firing" else None

        alert = wait_until(firing, 120, f"{ALERT} firing for {victim}",
                           lambda: json.dumps(alerts(prometheus, ALERT), indent=1),
                           interval=1.0)
        assert time.monotonic() - exhausted_at >= 25, "fired before its for: 30s"
        assert alert["labels"]["job"] == "ftds-rm"
        assert alert["labels"]["severity"] == "warning"
        assert victim in alert["annotations"]["summary"]
    finally:
        cluster.lab.ssh(manager, f"ftds ctl reset-budget {victim}", shared=True)
        status = cluster.wait_healthy(90)
    # the relaunch the reset allowed spent one attempt; a second reset leaves later tests a
    # full budget
    assert status["replicas"][victim]["budget_left"] == budget - 1, status["replicas"][victim]
    assert not status["replicas"][victim]["budget_exhausted"]
    cluster.lab.ssh(manager, f"ftds ctl reset-budget {victim}", shared=True)
    assert cluster.status()["replicas"][victim]["budget_left"] == budget
    wait_until(lambda: victim not in alerts(prometheus, ALERT), 60,
               f"{ALERT} for {victim} to clear after the reset",
               lambda: json.dumps(alerts(prometheus, ALERT), indent=1), interval=1.0)
