"""The optional role ftds_monitoring: its prometheus.yml, rendered with Ansible's templating for
a lab-like inventory, scrapes the RM and every replica (labelled with its id) where the cluster
file says they serve metrics, loads the alert rules under the job name they select, and passes
``promtool check config``; its command line names flags Prometheus knows; its argument_specs
document every default with its type; its tasks use FQCN modules and fetch nothing when
Prometheus is installed.

promtool and prometheus (Debian's ``prometheus``) are needed by some tests: as in
test_alert_rules.py they skip locally without it and fail under CI."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.playbook.task import Task
from ansible.template import Templar, trust_as_template
from test_alert_rules import RULES, promtool, rule_exprs, run_promtool

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "ansible" / "roles"
ROLE = ROLES / "ftds_monitoring"
SITE = REPO / "ansible" / "site.yml"

# The lab's layout (scripts/lab): S1..S3 on h1..h3, GFD and RM on h4 (also the monitoring
# host), clients on h5. h3's replica serves its metrics on a port of its own.
INVENTORY: dict[str, dict[str, Any]] = {
    "h1": {"ansible_host": "10.77.0.11", "ftds_replica_id": "S1"},
    "h2": {"ansible_host": "10.77.0.12", "ftds_replica_id": "S2"},
    "h3": {"ansible_host": "10.77.0.13", "ftds_replica_id": "S3",
           "ftds_common_replica_metrics_port": 7302},
    "h4": {"ansible_host": "10.77.0.14"},
    "h5": {"ansible_host": "10.77.0.15"},
}
GROUPS = {"all": sorted(INVENTORY), "ftds_replicas": ["h1", "h2", "h3"],
          "ftds_managers": ["h4"], "ftds_clients": ["h5"], "ftds_monitoring": ["h4"]}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _trusted(value: Any) -> Any:
    """Role defaults are templates Ansible trusts; values from YAML here are not until told."""
    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    return value


def render(template: str, host: str = "h4", inventory: dict[str, dict[str, Any]] | None = None,
           groups: dict[str, list[str]] | None = None, **extra: Any) -> str:
    """Render one of the role's templates for ``host`` as the play would: ftds_common's and the
    role's defaults and vars, overridden by the host's inventory variables and ``extra``
    (group_vars/all); hostvars hold inventory variables only, as in a play."""
    inventory = INVENTORY if inventory is None else inventory
    variables: dict[str, Any] = {}
    for path in (ROLES / "ftds_common" / "defaults" / "main.yml",
                 ROLE / "defaults" / "main.yml", ROLE / "vars" / "main.yml"):
        variables.update(_trusted(_yaml(path)))
    hostvars = {h: {**extra, **hv} for h, hv in inventory.items()}
    variables.update(hostvars[host])
    variables.update(inventory_hostname=host, groups=GROUPS if groups is None else groups,
                     hostvars=hostvars, ansible_managed="Ansible managed",
                     playbook_dir=str(REPO / "ansible"))
    templar = Templar(loader=DataLoader(), variables=variables)
    return templar.template(trust_as_template((ROLE / "templates" / template).read_text()))


def config(**kwargs: Any) -> dict[str, Any]:
    return yaml.safe_load(render("prometheus.yml.j2", **kwargs))


def jobs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = [j["job_name"] for j in cfg["scrape_configs"]]
    assert len(names) == len(set(names)), names
    return {j["job_name"]: j for j in cfg["scrape_configs"]}


def targets(job: dict[str, Any]) -> list[tuple[str, dict[str, str]]]:
    return [(t, sc.get("labels", {})) for sc in job["static_configs"] for t in sc["targets"]]


# -- prometheus.yml ----------------------------------------------------------------------------

def test_the_rm_and_every_replica_are_scraped_with_the_replicas_ids():
    cfg = config()
    assert cfg["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    by_name = jobs(cfg)
    assert list(by_name) == ["prometheus", "ftds-rm", "ftds-replica"]  # the GFD exports none
    assert targets(by_name["prometheus"]) == [("10.77.0.14:9090", {})]
    assert targets(by_name["ftds-rm"]) == [("10.77.0.14:7202", {})]
    assert targets(by_name["ftds-replica"]) == [
        ("10.77.0.11:7102", {"replica": "S1"}),
        ("10.77.0.12:7102", {"replica": "S2"}),
        ("10.77.0.13:7302", {"replica": "S3"}),
    ]
    # the replicas' series carry their own replica label: kept, not renamed exported_replica
    assert by_name["ftds-replica"].get("honor_labels") is True
    assert "honor_labels" not in by_name["ftds-rm"]
    assert cfg["rule_files"] == ["/etc/prometheus/ftds-alerts.yml"]
    assert "alerting" not in cfg


def test_replicas_are_listed_in_id_order_whatever_the_inventory_order():
    groups = {**GROUPS, "ftds_replicas": ["h3", "h1", "h2"]}
    inventory = {**INVENTORY, "h1": {**INVENTORY["h1"], "ftds_replica_id": "S10"}}
    replicas = targets(jobs(config(groups=groups, inventory=inventory))["ftds-replica"])
    assert [labels["replica"] for _, labels in replicas] == ["S2", "S3", "S10"]


def test_every_job_the_alert_rules_select_is_a_scrape_job():
    selected = set()
    for expr in rule_exprs().values():
        selected |= set(re.findall(r'\bjob\s*=\s*"([^"]*)"', expr))
    assert selected == {"ftds-rm"}
    assert selected <= set(jobs(config()))


def test_a_metrics_port_of_0_is_not_scraped():
    assert "ftds-rm" not in jobs(config(ftds_common_rm_metrics_port=0))
    inventory = {**INVENTORY, "h2": {**INVENTORY["h2"], "ftds_common_replica_metrics_port": 0}}
    replicas = targets(jobs(config(inventory=inventory))["ftds-replica"])
    assert [labels["replica"] for _, labels in replicas] == ["S1", "S3"]
    off = {h: {k: v for k, v in hv.items() if k != "ftds_common_replica_metrics_port"}
           for h, hv in INVENTORY.items()}
    assert list(jobs(config(inventory=off, ftds_common_replica_metrics_port=0))) == \
        ["prometheus", "ftds-rm"]


def test_addresses_and_ports_are_the_cluster_files():
    """A host's ftds_common_address (its service address) over its ansible_host; the RM's
    metrics on ftds_common_rm_metrics_address when that is one address; IPv6 in brackets."""
    inventory = {**INVENTORY,
                 "h1": {**INVENTORY["h1"], "ftds_common_address": "192.168.5.1"},
                 "h2": {**INVENTORY["h2"], "ftds_common_address": "fd00::2"},
                 "h4": {**INVENTORY["h4"], "ftds_common_address": "192.168.5.4",
                        "ftds_common_rm_metrics_port": 9202}}
    by_name = jobs(config(inventory=inventory, ftds_common_replica_metrics_port=7402))
    assert [t for t, _ in targets(by_name["ftds-replica"])] == \
        ["192.168.5.1:7402", "[fd00::2]:7402", "10.77.0.13:7302"]
    assert targets(by_name["ftds-rm"]) == [("192.168.5.4:9202", {})]
    assert targets(by_name["prometheus"]) == [("192.168.5.4:9090", {})]
    for bind, target in (("0.0.0.0", "10.77.0.14:7202"), ("::", "10.77.0.14:7202"),
                         ("10.1.2.3", "10.1.2.3:7202")):
        rm = jobs(config(ftds_common_rm_metrics_address=bind))["ftds-rm"]
        assert targets(rm) == [(target, {})], bind


def test_a_monitoring_host_outside_the_cluster_scrapes_the_same_targets():
    inventory = {**INVENTORY, "mon1": {"ansible_host": "10.77.0.30"}}
    groups = {**GROUPS, "all": sorted(inventory), "ftds_monitoring": ["mon1"]}
    here, there = config(), config(host="mon1", inventory=inventory, groups=groups)
    for job in ("ftds-rm", "ftds-replica"):
        assert jobs(here)[job] == jobs(there)[job]
    assert targets(jobs(there)["prometheus"]) == [("10.77.0.30:9090", {})]


def test_listening_on_every_address_scrapes_itself_on_localhost():
    cfg = config(ftds_monitoring_listen_address="0.0.0.0", ftds_monitoring_listen_port=9191)
    assert targets(jobs(cfg)["prometheus"]) == [("localhost:9191", {})]


SETTINGS = {
    "ftds_monitoring_rm_scrape_settings": {
        "scheme": "https", "tls_config": {"ca_file": "/etc/prometheus/ftds-ca.pem"},
        "basic_auth": {"username": "prometheus",
                       "password_file": "/etc/prometheus/ftds-rm.pass"}},
    "ftds_monitoring_extra_scrape_configs": [
        {"job_name": "node", "static_configs": [{"targets": ["10.77.0.11:9100",
                                                             "10.77.0.12:9100"]}]},
        {"job_name": "blackbox", "metrics_path": "/probe",
         "static_configs": [{"targets": ["10.77.0.14:9115"]}]}],
    "ftds_monitoring_alertmanagers": ["10.77.0.20:9093"],
    "ftds_monitoring_scrape_interval": "15s",
    "ftds_monitoring_evaluation_interval": "10s",
}


def test_the_optional_settings_land_where_prometheus_reads_them():
    cfg = config(**SETTINGS)
    by_name = jobs(cfg)
    assert list(by_name) == ["prometheus", "ftds-rm", "ftds-replica", "node", "blackbox"]
    rm = by_name["ftds-rm"]
    assert {k: rm[k] for k in SETTINGS["ftds_monitoring_rm_scrape_settings"]} == \
        SETTINGS["ftds_monitoring_rm_scrape_settings"]
    assert targets(rm) == [("10.77.0.14:7202", {})]
    for extra in SETTINGS["ftds_monitoring_extra_scrape_configs"]:
        assert by_name[extra["job_name"]] == extra
    assert cfg["alerting"] == {"alertmanagers": [{"static_configs": [
        {"targets": ["10.77.0.20:9093"]}]}]}
    assert cfg["global"] == {"scrape_interval": "15s", "evaluation_interval": "10s"}


@pytest.mark.parametrize("settings", [{}, SETTINGS], ids=["defaults", "every-option"])
def test_promtool_check_config_passes(tmp_path, settings):
    """The rendered file with the repository's rules (as the role's validate step checks it);
    the TLS and password files it names exist as they would on the host."""
    text = render("prometheus.yml.j2", **settings)
    rules = tmp_path / "ftds-alerts.yml"
    shutil.copy(RULES, rules)
    text = text.replace("/etc/prometheus/", f"{tmp_path}/")
    (tmp_path / "ftds-ca.pem").write_text("")
    (tmp_path / "ftds-rm.pass").write_text("secret\n")
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = run_promtool("check", "config", str(path))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out and "WARNING" not in out, out


def test_promtool_rejects_a_broken_config(tmp_path):
    """The check above can fail: a scrape job twice is refused."""
    cfg = config(ftds_monitoring_extra_scrape_configs=[
        {"job_name": "ftds-rm", "static_configs": [{"targets": ["x:1"]}]}])
    cfg["rule_files"] = [str(RULES)]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    result = run_promtool("check", "config", str(path))
    assert result.returncode != 0
    assert "ftds-rm" in result.stdout + result.stderr


# -- /etc/default/prometheus -------------------------------------------------------------------

def args(**kwargs: Any) -> list[str]:
    text = render("prometheus.default.j2", **kwargs)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1 and lines[0].startswith("ARGS="), text
    (value,) = shlex.split(lines[0].removeprefix("ARGS="))
    return value.split()  # systemd's $ARGS: split at whitespace


def test_the_command_line_sets_listen_address_and_retention():
    assert args() == ["--web.listen-address=10.77.0.14:9090",
                      "--storage.tsdb.retention.time=7d"]
    assert args(ftds_monitoring_listen_address="fd00::4", ftds_monitoring_retention="30d",
                ftds_monitoring_extra_args=["--web.enable-lifecycle"]) == \
        ["--web.listen-address=[fd00::4]:9090", "--storage.tsdb.retention.time=30d",
         "--web.enable-lifecycle"]
    assert args(ftds_monitoring_listen_address="0.0.0.0")[0] == \
        "--web.listen-address=0.0.0.0:9090"


def test_prometheus_knows_every_flag_of_the_command_line():
    binary = shutil.which("prometheus") or str(Path(promtool()).with_name("prometheus"))
    if not Path(binary).exists():
        pytest.skip("no prometheus binary beside promtool")
    flags = args(ftds_monitoring_extra_args=["--web.enable-lifecycle"])
    ok = subprocess.run([binary, *flags, "--version"], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([binary, *flags, "--web.no-such-flag=1", "--version"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0  # so a flag it does not know would fail the check above


# -- the role's sources ------------------------------------------------------------------------

ANSIBLE_TYPES = {str: {"str", "path"}, int: {"int"}, bool: {"bool"}, dict: {"dict"},
                 list: {"list"}, float: {"float"}}


def spec_problems(defaults: dict[str, Any], options: dict[str, Any]) -> list[str]:
    """What argument_specs options get wrong about the defaults."""
    problems = [f"{name}: not in argument_specs" for name in defaults if name not in options]
    problems += [f"{name}: no such default" for name in options if name not in defaults]
    for name in set(defaults) & set(options):
        value, spec = defaults[name], options[name]
        if spec.get("type") not in ANSIBLE_TYPES[type(value)]:
            problems.append(f"{name}: type {spec.get('type')}, default a {type(value).__name__}")
        if spec.get("default") != value:
            problems.append(f"{name}: default {spec.get('default')!r}, not {value!r}")
        if not spec.get("description"):
            problems.append(f"{name}: no description")
        if spec.get("type") == "list" and not spec.get("elements"):
            problems.append(f"{name}: no elements type")
    return problems


def test_argument_specs_document_every_default_with_its_type():
    defaults = _yaml(ROLE / "defaults" / "main.yml")
    options = _yaml(ROLE / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    assert defaults and not spec_problems(defaults, options)


def test_the_argument_specs_check_finds_what_is_wrong():
    defaults = {"a_port": 9090, "a_list": [], "a_name": "x"}
    options = {"a_port": {"type": "str", "default": 9090, "description": "d"},
               "a_list": {"type": "list", "default": [], "description": "d"},
               "a_gone": {"type": "str", "description": "d"}}
    assert sorted(spec_problems(defaults, options)) == [
        "a_gone: no such default", "a_list: no elements type", "a_name: not in argument_specs",
        "a_port: type str, default a int"]


def _tasks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for item in items:
        out.append(item)
        for key in ("block", "rescue", "always"):
            out.extend(_tasks(item.get(key, [])))
    return out


TASK_KEYWORDS = set(Task.fattributes) | {"block", "rescue", "always", "local_action"}


def module_of(task: dict[str, Any]) -> str:
    """The module a task calls: its one key that is not a task keyword."""
    modules = [k for k in task if k not in TASK_KEYWORDS and not k.startswith("with_")]
    assert len(modules) == 1, f"{task.get('name')}: {modules}"
    return modules[0]


def test_module_of_names_a_short_module_name():
    task = {"name": "x", "copy": {"src": "a", "dest": "b"}, "when": "c", "notify": "d",
            "register": "e", "check_mode": False, "loop": [1]}
    assert module_of(task) == "copy"


def test_every_task_and_handler_uses_an_fqcn_module():
    files = [*sorted((ROLE / "tasks").glob("*.yml")), ROLE / "handlers" / "main.yml"]
    assert {p.name for p in files} == {"main.yml", "install.yml", "configure.yml", "run.yml"}
    modules = [(path.name, module_of(task)) for path in files
               for task in _tasks(_yaml(path)) if "block" not in task]
    assert len(modules) >= 10
    short = [m for m in modules if not m[1].startswith("ansible.builtin.")]
    assert not short, f"not FQCN: {short}"


def test_main_dispatches_install_configure_run_under_their_tags():
    read, *steps = _yaml(ROLE / "tasks" / "main.yml")
    # first the one read of what the role manages, under every step's tag
    assert read["ansible.builtin.import_role"] == {"name": "ftds_common",
                                                   "tasks_from": "read_state"}
    assert read["tags"] == ["ftds_install", "ftds_configure", "ftds_run"]
    assert read["vars"]["ftds_common_read_packages"] == ["prometheus"]
    assert [(t["ansible.builtin.import_tasks"], t["tags"]) for t in steps] == [
        ("install.yml", ["ftds_install"]), ("configure.yml", ["ftds_configure"]),
        ("run.yml", ["ftds_run"])]


def test_an_installed_prometheus_is_not_fetched_again():
    """The hosts may reach no package mirror: apt (and its index update) only runs when the
    role's read says dpkg does not have the package installed."""
    (install,) = _yaml(ROLE / "tasks" / "install.yml")
    apt = install["ansible.builtin.apt"]
    assert apt["name"] == "prometheus" and apt["state"] == "present"
    assert install["when"] == ("ftds_common_host_state.packages.prometheus | default('') "
                               "!= 'installed'")


def test_config_and_rules_are_checked_before_they_are_installed():
    tasks = {t["name"]: t for t in _yaml(ROLE / "tasks" / "configure.yml")}
    modules = [next(v for k, v in t.items() if k.startswith("ansible.builtin."))
               for t in tasks.values()]
    validated = {m["dest"].rsplit("/", 1)[-1]: m.get("validate") for m in modules}
    assert validated["ftds-alerts.yml"] == "promtool check rules %s"
    assert validated["prometheus.yml"] == "promtool check config %s"
    names = [m["dest"].rsplit("/", 1)[-1] for m in modules]
    assert names.index("ftds-alerts.yml") < names.index("prometheus.yml")  # config names it


def test_site_runs_the_role_on_the_monitoring_group_after_the_rm():
    plays = _yaml(SITE)
    monitoring = [i for i, p in enumerate(plays) if p["hosts"] == "ftds_monitoring"]
    assert len(monitoring) == 1
    play = plays[monitoring[0]]
    assert play["roles"] == [{"role": "ftds_monitoring"}] and play["become"] is True
    rm_run = max(i for i, p in enumerate(plays)
                 if any(t.get("ansible.builtin.import_role", {}).get("name") == "ftds_rm"
                        and t["ansible.builtin.import_role"].get("tasks_from") == "run"
                        for t in p.get("tasks", [])))
    assert monitoring[0] > rm_run
