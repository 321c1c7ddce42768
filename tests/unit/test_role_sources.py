"""The Ansible roles: unit templates that honour the role variables, and the tunables written
once (the Python definition) with the roles' defaults, integer list and argument_specs checked
against it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import jinja2
import pytest
import yaml

from ftds.config import Trace, Tunables

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
UNIT_TEMPLATES = [*sorted(ROLES.glob("*/templates/*.service.j2")),
                  ROLES / "ftds_common" / "templates" / "ftds.target.j2"]

# Every variable a unit depends on, set away from its default.
VARIABLES = {
    "ansible_managed": "managed by Ansible",
    "ftds_common_venv": "/srv/ftds-venv",
    "ftds_common_user": "svc-ftds",
    "ftds_common_log_level": "warning",
    "ftds_rm_user": "svc-rm",
    "ftds_rm_ssh_key": "/srv/keys/rm",
    "ftds_common_units": ["ftds-replica@S7.service", "ftds-lfd@S7.service"],
    "ftds_replica_id": "S7",
}
# The key each unit gets as a credential: its own TLS key (the default), or the cluster key.
TLS_KEYS = {"ftds-replica@.service.j2": "S7", "ftds-lfd@.service.j2": "LFD7",
            "ftds-gfd.service.j2": "GFD", "ftds-rm.service.j2": "RM"}
DEFAULTS_WRITTEN_OUT = ["/opt/ftds", "User=ftds\n", "Group=ftds\n", "User=ftds-rm",
                        "/etc/ftds/rm_ssh_key"]


def render(path: Path, **extra: object) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["regex_replace"] = lambda value, pattern, repl: re.sub(pattern, repl, value)
    return env.from_string(path.read_text()).render(**VARIABLES, **extra)


def test_every_unit_is_a_template_of_its_role():
    names = {p.name for p in UNIT_TEMPLATES}
    assert names == {"ftds-replica@.service.j2", "ftds-lfd@.service.j2", "ftds-gfd.service.j2",
                     "ftds-rm.service.j2", "ftds.target.j2"}
    assert not (ROLES.parents[1] / "systemd").exists(), "unit files outside the roles"


@pytest.mark.parametrize("path", UNIT_TEMPLATES, ids=lambda p: p.name)
def test_unit_templates_honour_the_role_variables(path: Path):
    text = render(path)
    for literal in DEFAULTS_WRITTEN_OUT:
        assert literal not in text, f"{path.name} hard-codes {literal.strip()!r}"
    if path.name.endswith(".service.j2"):
        exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        assert exec_start.startswith("ExecStart=/srv/ftds-venv/bin/ftds "), exec_start
        assert "--log-level warning" in exec_start
        user = "svc-rm" if path.name == "ftds-rm.service.j2" else "svc-ftds"
        assert f"\nUser={user}\n" in text and f"\nGroup={user}\n" in text
    if path.name == "ftds-rm.service.j2":
        assert "LoadCredential=ssh_key:/srv/keys/rm" in text


@pytest.mark.parametrize("tls", [None, True, False], ids=["default", "tls", "key"])
@pytest.mark.parametrize("name", sorted(TLS_KEYS))
def test_each_unit_loads_the_key_of_its_mode_and_no_other(name: str, tls: bool | None):
    """Mutual TLS unless ftds_tls is false: the unit's own TLS key, and no cluster key; with
    the key, the cluster key and no TLS key."""
    text = render(ROLES / ("ftds_replica" if "@" in name else name.split(".")[0].replace(
        "-", "_")) / "templates" / name, **({} if tls is None else {"ftds_tls": tls}))
    credentials = {line.split("=", 1)[1].split(":")[0] for line in text.splitlines()
                   if line.startswith("LoadCredential=") and "ssh_key" not in line}
    want = f"{TLS_KEYS[name]}.key" if tls in (None, True) else "cluster.key"
    assert credentials == {want}, (name, credentials)


def test_the_target_wants_exactly_the_hosts_units():
    text = render(ROLES / "ftds_common" / "templates" / "ftds.target.j2")
    wants = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith("Wants=")]
    assert wants == VARIABLES["ftds_common_units"]


def _yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_tunables_defaults_are_the_codes():
    defaults = _yaml(ROLES / "ftds_common" / "defaults" / "main.yml")
    code = {f.name: f.default for f in dataclasses.fields(Tunables)}
    assert defaults["ftds_common_tunables_defaults"] == code
    trace = {f.name: f.default for f in dataclasses.fields(Trace)}
    assert defaults["ftds_common_trace_defaults"] == trace


def test_integer_tunables_are_the_codes_int_fields():
    role_vars = _yaml(ROLES / "ftds_common" / "vars" / "main.yml")
    ints = {f.name for f in dataclasses.fields(Tunables) if f.type in (int, "int")}
    assert set(role_vars["ftds_common_integer_tunables"]) == ints
    bools = {f.name for f in dataclasses.fields(Tunables) if f.type in (bool, "bool")}
    assert set(role_vars["ftds_common_boolean_tunables"]) == bools


def test_argument_specs_describe_every_tunable_with_its_type():
    specs = _yaml(ROLES / "ftds_common" / "meta" / "argument_specs.yml")
    options = specs["argument_specs"]["main"]["options"]["ftds_common_tunables"]["options"]
    types = {f.name: ("bool" if f.type in (bool, "bool") else
                      "int" if f.type in (int, "int") else "float")
             for f in dataclasses.fields(Tunables)}
    assert {name: spec["type"] for name, spec in options.items()} == types
