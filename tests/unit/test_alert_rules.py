"""The monitoring pack (``monitoring/``): the alert rules pass ``promtool check rules`` and their
own ``promtool test rules``, every alert is tested firing and quiet, and the rules and the
Grafana dashboard name only metrics the RM exports, so renaming a metric breaks this test.

promtool (Debian's ``prometheus``; ``FTDS_PROMTOOL`` or PATH) is required under CI (``CI`` set):
there a missing promtool fails the tests that need it instead of skipping them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import STATUS

from ftds.rm.incidents import Incident
from ftds.rm.metrics import RmMetrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "ftds-alerts.yml"
RULE_TESTS = MONITORING / "ftds-alerts.test.yml"
DASHBOARD = MONITORING / "ftds-dashboard.json"
# Series Prometheus makes itself, not the RM.
SCRAPE_SERIES = {"up"}


def promtool() -> str:
    """promtool's path; without it, skip locally and fail under CI."""
    path = os.environ.get("FTDS_PROMTOOL") or shutil.which("promtool")
    if path:
        return path
    message = "promtool not found (FTDS_PROMTOOL or PATH; Debian: apt-get install prometheus)"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message}, and CI requires it", pytrace=False)
    pytest.skip(message)


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


# -- the names the RM exports ------------------------------------------------------------------

def exported_names() -> set[str]:
    """Every sample name of the RM's page, with an incident opened and closed so that the
    labelled counter and histograms have samples too."""
    async def main() -> bytes:
        async def snapshot() -> dict[str, Any]:
            return STATUS

        exporter = RmMetrics(snapshot)
        incident = Incident(1, "S2", "crash", was_primary=True, confirmed_dead=True,
                            detected=100.0, removed=100.005, new_primary=100.014,
                            relaunch_issued=100.02, ready=100.3)
        exporter.incident_opened(incident)
        exporter.incident_closed(incident)
        await exporter.refresh()
        return exporter.page

    page = asyncio.run(main()).decode()
    return {s.name for family in text_string_to_metric_families(page) for s in family.samples}


# -- metric names in PromQL --------------------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
WORD = re.compile(r"(?<![\w.$:])([A-Za-z_:][\w:]*)\s*(\()?")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not a function or
    aggregation (followed by a parenthesis), a keyword, a label (in braces or a grouping), a
    duration (in brackets, after offset) or part of a number."""
    text = STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\boffset\s+-?[\w$]+", " ", text)
    return {word for word, call in WORD.findall(text)
            if not call and word.lower() not in KEYWORDS}


def test_metric_names_finds_the_selected_metrics_only():
    expr = ('max by (job, instance) (a_b{job="x", le=~"0.5"}) - on (job) group_right '
            'c:rec[5m] offset 1h and sum(rate(d_total{p="q"}[$__rate_interval])) > 1e3 '
            'unless histogram_quantile(0.99, sum without (le) (e_bucket)) > bool 0.5')
    assert metric_names(expr) == {"a_b", "c:rec", "d_total", "e_bucket"}


def rule_exprs() -> dict[str, str]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule.get("alert") or rule["record"]: rule["expr"]
            for group in rules["groups"] for rule in group["rules"]}


def alerts() -> dict[str, dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"]
            if "alert" in rule}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row keeps its panels inside
    return out


def dashboard_exprs() -> dict[str, str]:
    """Every PromQL expression of the dashboard: panel targets, annotations, and the metric
    of each templating label_values() query."""
    board = dashboard()
    exprs = {f"panel {p['id']} ({p['title']}) {t['refId']}": t["expr"]
             for p in panels(board) for t in p.get("targets", [])}
    for a in board["annotations"]["list"]:
        if "expr" in a:
            exprs[f"annotation {a['name']}"] = a["expr"]
    for var in board["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query.strip())
        assert m, f"variable {var['name']}: not a label_values(metric, label) query: {query}"
        exprs[f"variable {var['name']}"] = m.group(1)
    return exprs


@pytest.mark.parametrize("source", ["alert rules", "dashboard"])
def test_every_expression_names_only_metrics_the_rm_exports(source):
    exported = exported_names() | SCRAPE_SERIES
    exprs = rule_exprs() if source == "alert rules" else dashboard_exprs()
    assert exprs
    unknown = {where: sorted(metric_names(expr) - exported) for where, expr in exprs.items()}
    unknown = {where: names for where, names in unknown.items() if names}
    assert not unknown, f"{source} name metrics the RM does not export: {unknown}"
    assert all(metric_names(expr) for expr in exprs.values())


# -- the alert rules ---------------------------------------------------------------------------

def test_promtool_check_rules_is_clean():
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "WARNING" not in result.stdout + result.stderr


def test_promtool_test_rules_passes():
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_for_a_severity_and_says_what_to_do():
    for name, rule in alerts().items():
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        notes = rule["annotations"]
        assert notes["summary"].strip() and notes["description"].strip(), name
        assert re.search(r"`(ftds |journalctl |systemctl )", notes["description"]), \
            f"{name}: the description names no command to run"


def test_every_alert_is_tested_firing_and_quiet():
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fires == set(alerts()), "alerts never tested firing: " \
        f"{set(alerts()) - fires}"
    assert quiet == set(alerts()), f"alerts never tested quiet: {set(alerts()) - quiet}"


# -- the dashboard -----------------------------------------------------------------------------

def test_the_dashboard_imports_with_a_prometheus_datasource_input():
    board = dashboard()
    assert [(i["name"], i["type"], i["pluginId"]) for i in board["__inputs"]] == \
        [("DS_PROMETHEUS", "datasource", "prometheus")]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(board):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]


def test_the_dashboard_shows_what_an_operator_looks_for():
    exprs = " ".join(dashboard_exprs().values())
    used = metric_names(exprs)
    for name in ("ftds_epoch", "ftds_replica_primary", "ftds_ready_members",
                 "ftds_replica_ready", "ftds_replica_applied_seq",
                 "ftds_replica_heartbeat_age_seconds", "ftds_replica_relaunches_total",
                 "ftds_replica_restart_budget_left", "ftds_replica_restart_budget_exhausted",
                 "ftds_recovery_seconds_bucket", "ftds_incidents_total"):
        assert name in used, name
    for q in ("0.5", "0.99"):
        assert re.search(rf"histogram_quantile\({q}, sum by \(le, phase\) \(\w+\("
                         r"ftds_recovery_seconds_bucket", exprs), q


def test_promtool_parses_every_dashboard_expression(tmp_path):
    """Each expression, with Grafana's variables given values, as a recording rule."""
    values = {"$__rate_interval": "1m", "$__range": "1h", "$job": "ftds-rm",
              "$instance": ".*"}
    rules = []
    for n, expr in enumerate(dashboard_exprs().values()):
        for var, value in values.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:expr_{n}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
