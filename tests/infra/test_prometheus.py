"""Prometheus from the optional role ftds_monitoring: running and enabled on the hosts of the
inventory's ftds_monitoring group, scraping the RM and every replica as the cluster file says
and with the ftds alert rules loaded; not running on any other host (the lab's template has the
package on every host, disabled).

Which hosts are monitoring hosts comes from the inventory, so these tests need the ansible
backend (--connection=ansible); with another backend they skip."""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml
from conftest import FTDS_PYTHON

GROUP = "ftds_monitoring"
UNIT = "prometheus.service"
CONFIG = "/etc/prometheus/prometheus.yml"
RULES = "/etc/prometheus/ftds-alerts.yml"
REPO_RULES = Path(__file__).resolve().parents[2] / "monitoring" / "ftds-alerts.yml"


@pytest.fixture
def monitoring(host) -> bool:
    """Whether the inventory puts this host in the ftds_monitoring group."""
    if host.backend.NAME != "ansible":
        pytest.skip(f"the {GROUP} group comes from the inventory: use --connection=ansible")
    return GROUP in host.ansible.get_variables().get("group_names", [])


@pytest.fixture
def monitoring_host(monitoring) -> None:
    if not monitoring:
        pytest.skip(f"not in the {GROUP} group")


def listen_address(host) -> str:
    """host:port of the API, from Prometheus's command line (/etc/default/prometheus)."""
    text = host.file("/etc/default/prometheus").content_string
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ARGS=")]
    (args,) = shlex.split(line.removeprefix("ARGS="))
    (listen,) = [a.split("=", 1)[1] for a in args.split()
                 if a.startswith("--web.listen-address=")]
    address, port = listen.rsplit(":", 1)
    if address in ("", "0.0.0.0", "[::]"):
        address = "localhost"
    return f"{address}:{port}"


def api(host, path: str) -> dict:
    """GET Prometheus's HTTP API on the host itself (its own network namespace)."""
    url = f"http://{listen_address(host)}{path}"
    out = host.check_output(
        f"{FTDS_PYTHON} -c 'import sys, urllib.request; sys.stdout.write(urllib.request"
        f".urlopen(\"{url}\", timeout=5).read().decode())'")
    answer = json.loads(out)
    assert answer["status"] == "success", answer
    return answer["data"]


def test_prometheus_runs_on_the_monitoring_hosts_only(host, monitoring):
    service = host.service(UNIT)
    if monitoring:
        assert service.is_enabled, f"{UNIT} is not enabled (it must start at boot)"
        assert service.is_running, f"{UNIT} is not running"
    else:
        assert not service.is_running, f"{UNIT} runs on a host outside the {GROUP} group"
        assert not service.is_enabled, f"{UNIT} is enabled outside the {GROUP} group"


def test_the_configuration_and_rules_are_the_roles(host, monitoring_host):
    for path in (CONFIG, RULES):
        f = host.file(path)
        assert (f.user, f.group, f.mode) == ("root", "prometheus", 0o640), path
    assert host.file(RULES).content_string == REPO_RULES.read_text(), \
        f"{RULES} is not the repository's monitoring/ftds-alerts.yml"
    check = host.run(f"promtool check config {CONFIG}")
    assert check.rc == 0, check.stdout + check.stderr


def test_every_ftds_daemon_with_metrics_is_a_scrape_target(host, monitoring_host, config):
    prometheus = yaml.safe_load(host.file(CONFIG).content_string)
    assert RULES in prometheus["rule_files"]
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}

    def targets(job: str) -> set[tuple[str, str | None]]:
        return {(t, sc.get("labels", {}).get("replica"))
                for sc in jobs.get(job, {}).get("static_configs", []) for t in sc["targets"]}

    def hostport(address: str, port: int) -> str:
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    rm = config["rm"]
    if rm.get("metrics_port"):
        bind = rm.get("metrics_address") or ""
        address = rm["host"] if bind in ("", "0.0.0.0", "::") else bind
        assert targets("ftds-rm") == {(hostport(address, rm["metrics_port"]), None)}
    else:
        assert "ftds-rm" not in jobs
    assert targets("ftds-replica") == {(hostport(r["host"], r["metrics_port"]), r["id"])
                                       for r in config["replicas"] if r.get("metrics_port")}


def test_every_ftds_target_is_up(host, monitoring_host):
    """As Prometheus sees them (/api/v1/targets): a deployment that just started Prometheus
    has its first scrapes within one scrape interval."""
    deadline = time.monotonic() + 30
    while True:
        active = api(host, "/api/v1/targets?state=active")["activeTargets"]
        ftds = {(t["labels"]["job"], t["labels"]["instance"]): t for t in active
                if t["labels"]["job"].startswith("ftds-")}
        down = {key: t.get("lastError") or t["health"] for key, t in ftds.items()
                if t["health"] != "up"}
        if ftds and not down:
            break
        assert time.monotonic() < deadline, f"targets not up: {down or 'no ftds targets'}"
        time.sleep(1)
    assert {job for job, _ in ftds} <= {"ftds-rm", "ftds-replica"}
    replicas = {t["labels"].get("replica") for (job, _), t in ftds.items()
                if job == "ftds-replica"}
    assert None not in replicas


def test_the_alert_rules_are_loaded_and_evaluate(host, monitoring_host):
    groups = api(host, "/api/v1/rules?type=alert")["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    wanted = set(re.findall(r"^\s*- alert: (\w+)", REPO_RULES.read_text(), re.M))
    assert wanted and set(loaded) == wanted
    broken = {name: r.get("lastError") for name, r in loaded.items() if r["health"] == "err"}
    assert not broken, broken
