"""The authorisation table (ftds.authz) against the rules it states and the handlers' code."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

import ftds
from ftds.authz import (
    CERT_ROLES,
    FIRST,
    HELLO,
    HELLO_ROLES,
    PORTS,
    SENDS,
    may_claim,
    may_send,
    refusal,
)

SRC = Path(ftds.__file__).resolve().parent
# The handlers of what arrives on each listening port: (file, Class.method).
PORT_HANDLERS = {
    "replica_client": [("replica/server.py", "ReplicaDaemon._on_client_message")],
    "replica_control": [("replica/server.py", "ReplicaDaemon._on_control_message"),
                        ("replica/core.py", "Replica._handle_fetched")],
    "gfd": [("gfd.py", "GlobalFaultDetector._on_message")],
    "rm": [("rm/manager.py", "ReplicationManager._on_message"),
           ("rm/manager.py", "ReplicationManager._on_admin")],
}
# What arrives on links the daemons dial: not in the table, but a hostile peer may send it.
DIALED_HANDLERS = [
    ("rm/manager.py", "ReplicationManager._on_replica_message"),
    ("gfd.py", "GlobalFaultDetector._on_rm_message"),
    ("lfd.py", "LocalFaultDetector._on_replica_message"),
    ("lfd.py", "LocalFaultDetector._on_gfd_message"),
    ("replica/core.py", "Replica.on_upstream_message"),
    ("replica/core.py", "Replica._handle_upstream"),
    ("client.py", "ReplicaLink._on_message"),
]
HELLO_ROLE_NAMES = sorted({r for roles in SENDS.values() for r in roles})
ROLES: list[str | None] = [None, *HELLO_ROLE_NAMES, "nobody"]


# ======================================================= the types a handler dispatches on ====
def _is_type(node: ast.AST) -> bool:
    """``msg["t"]`` or ``msg.get("t")``."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "t"
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr == "get" and bool(node.args) \
        and isinstance(node.args[0], ast.Constant) and node.args[0].value == "t"


def _strings(node: ast.AST | None) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return {s for elt in node.elts for s in _strings(elt)}
    if isinstance(node, ast.Dict):  # a dispatch dict: its keys
        return {s for key in node.keys for s in _strings(key)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args \
            and node.func.id in ("frozenset", "set", "tuple"):
        return _strings(node.args[0])
    return set()


def _pattern(node: ast.pattern) -> set[str]:
    if isinstance(node, ast.MatchValue):
        return _strings(node.value)
    if isinstance(node, ast.MatchOr):
        return {s for p in node.patterns for s in _pattern(p)}
    return set()


def dispatched(source: str, qualname: str) -> set[str]:
    """The message types ``qualname`` compares ``msg["t"]`` with (==, !=, in, match) or looks
    up in a dispatch dict, literally or by a name (or ``self.name``) bound in the module, its
    class or the function."""
    tree = ast.parse(source)
    scopes: list[ast.AST] = [tree]
    for part in qualname.split("."):
        found = [n for n in ast.iter_child_nodes(scopes[-1])
                 if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                 and n.name == part]
        assert found, f"no {qualname} (renamed? update PORT_HANDLERS / DIALED_HANDLERS)"
        scopes.append(found[0])
    func = scopes[-1]
    bound = {t.id: n.value
             for n in [*(c for s in scopes[:-1] for c in ast.iter_child_nodes(s)),
                       *ast.walk(func)]
             if isinstance(n, ast.Assign | ast.AnnAssign) and n.value is not None
             for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
             if isinstance(t, ast.Name)}
    names = {t.id for n in ast.walk(func) if isinstance(n, ast.Assign) and _is_type(n.value)
             for t in n.targets if isinstance(t, ast.Name)}

    def is_kind(node: ast.AST) -> bool:
        return _is_type(node) or (isinstance(node, ast.Name) and node.id in names)

    def table(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Name | ast.Attribute):
            return _strings(bound.get(node.id if isinstance(node, ast.Name) else node.attr))
        return _strings(node)

    found_types: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Compare) and is_kind(node.left):
            found_types |= {s for c in node.comparators for s in table(c)}
        elif isinstance(node, ast.Compare) and any(is_kind(c) for c in node.comparators):
            found_types |= _strings(node.left)  # "x" == kind, kind in a set
        elif isinstance(node, ast.Match) and is_kind(node.subject):
            found_types |= {s for case in node.cases for s in _pattern(case.pattern)}
        elif isinstance(node, ast.Subscript) and is_kind(node.slice):
            found_types |= table(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "get" and node.args and is_kind(node.args[0]):
            found_types |= table(node.func.value)
    return found_types


def handled(handlers: list[tuple[str, str]]) -> set[str]:
    return {t for path, qualname in handlers
            for t in dispatched((SRC / path).read_text(), qualname)}


KNOWN_TYPES = sorted(
    handled([h for hs in PORT_HANDLERS.values() for h in hs] + DIALED_HANDLERS)
    | {t for roles in SENDS.values() for types in roles.values() for t in types}
    | {"error", "format_disk"})


def test_the_collector_sees_every_form_of_dispatch():
    source = '''
HANDLERS = {"by_module_dict": 1}
KINDS = ("by_module_tuple",)
class D:
    TABLE: dict = {"by_class_dict": 1}
    def on(self, conn, msg):
        kind = msg["t"]
        if kind == "eq" or kind != "ne" or "flipped" == kind or msg.get("t") == "via_get":
            pass
        elif kind in ("in_tuple", "in_tuple2") or kind not in {"not_in_set"}:
            pass
        match kind:
            case "case1" | "case2":
                pass
        {"inline_dict": 1}[kind]
        HANDLERS.get(kind)
        self.TABLE[kind]
        if kind in KINDS or kind in frozenset({"in_frozenset"}):
            pass
        if msg["role"] == "not_a_type" or conn.role in ("nor_this",):
            pass
'''
    assert dispatched(source, "D.on") == {
        "eq", "ne", "flipped", "via_get", "in_tuple", "in_tuple2", "not_in_set", "case1",
        "case2", "inline_dict", "by_module_dict", "by_class_dict", "by_module_tuple",
        "in_frozenset"}


@pytest.mark.parametrize("port", PORTS)
def test_every_type_a_port_handles_is_in_the_table_and_nothing_else(port):
    code = handled(PORT_HANDLERS[port])
    table = {t for types in SENDS[port].values() for t in types}
    assert not code - table, f"{port}: handled but no role may send it: {sorted(code - table)}"
    # The other way round keeps the collector honest: a form of dispatch it cannot read
    # shows up here instead of silently passing the check above.
    assert not table - code, f"{port}: in the table, no handler takes it: {sorted(table - code)}"


def test_a_new_branch_in_a_real_handler_is_seen():
    path, qualname = PORT_HANDLERS["replica_control"][0]
    tree = ast.parse((SRC / path).read_text())
    cls, name = qualname.split(".")
    func = next(n for c in tree.body if isinstance(c, ast.ClassDef) and c.name == cls
                for n in c.body if isinstance(n, ast.FunctionDef) and n.name == name)
    func.body.insert(1, ast.parse('if kind == "format_disk":\n    pass').body[0])
    grown = dispatched(ast.unparse(tree), qualname)
    assert grown - handled(PORT_HANDLERS["replica_control"]) == {"format_disk"}
    assert not any(may_send("replica_control", role, "format_disk") for role in ROLES)


# ============================================================================= the rules ====
def senders(kind: str) -> set[tuple[str, str]]:
    """Every (port, hello role) that may send ``kind`` once past its hello."""
    return {(port, role) for port in PORTS for role in ROLES if role is not None
            and may_send(port, role, kind)}


def certs_that_may(port: str, hello_roles: set[str]) -> set[str]:
    return {cert for cert in CERT_ROLES for role in hello_roles if may_claim(port, cert, role)}


def test_clients_may_send_requests_only():
    assert senders("req") == {("replica_client", "client")}
    for port, kind in itertools.product(PORTS, KNOWN_TYPES):
        assert may_send(port, "client", kind) == ((port, kind) == ("replica_client", "req"))
    for port, role in itertools.product(PORTS, HELLO_ROLE_NAMES):
        assert may_claim(port, "client", role) == ((port, role) == ("replica_client", "client"))
    assert certs_that_may("replica_client", set(SENDS["replica_client"])) == {"client"}


def test_only_the_rm_sends_leases_and_views_come_from_the_rm_or_an_operator():
    assert senders("lease") == {("replica_control", "rm")}
    assert senders("view") == {("replica_control", "rm"), ("replica_control", "admin")}
    assert certs_that_may("replica_control", {"rm"}) == {"rm"}
    assert certs_that_may("replica_control", {"rm", "admin"}) == {"rm", "admin"}


def test_only_lfds_register_with_the_gfd_and_heartbeat_replicas():
    for kind in ("hb_ack", "add", "delete", "state"):
        assert senders(kind) == {("gfd", "lfd")}, kind
    assert senders("hb") == {("replica_control", "lfd")}
    assert certs_that_may("gfd", {"lfd"}) == certs_that_may("replica_control", {"lfd"}) == {
        "lfd"}
    assert senders("membership") == senders("gfd_status") == {("rm", "gfd")}
    assert certs_that_may("rm", {"gfd"}) == {"gfd"}


ADMIN_COMMANDS = {
    "replica_control": {"status_req", "checkpoint_now"},
    "gfd": {"status_req"},
    "rm": {"status_req", "incidents_req", "reset_budget", "hold", "release", "force_primary"},
}


def test_admin_commands_need_the_admin_role():
    for port, commands in ADMIN_COMMANDS.items():
        for kind, role in itertools.product(commands, ROLES):
            assert may_send(port, role, kind) == (role == "admin"), (port, role, kind)
        assert certs_that_may(port, {"admin"}) == {"admin"}
    assert not any(may_send("replica_client", role, k) for role in ROLES
                   for k in set().union(*ADMIN_COMMANDS.values()))


def test_each_certificate_claims_only_its_own_roles():
    claims = {cert: {(port, role) for port in PORTS for role in [*HELLO_ROLE_NAMES, "nobody"]
                     if may_claim(port, cert, role)} for cert in [*CERT_ROLES, "nobody"]}
    assert claims == {
        "replica": {("replica_control", "member")},
        "lfd": {("replica_control", "lfd"), ("gfd", "lfd")},
        "gfd": {("rm", "gfd")},
        "rm": {("replica_control", "rm")},
        "admin": {("replica_control", "admin"), ("gfd", "admin"), ("rm", "admin")},
        "client": {("replica_client", "client")},
        "nobody": set(),
    }
    for port in PORTS:  # no row of SENDS nobody may claim, no claim of a role without a row
        assert set(HELLO_ROLES[port]) <= set(CERT_ROLES)
        assert set().union(*HELLO_ROLES[port].values()) == set(SENDS[port])
        assert all(HELLO in types for types in SENDS[port].values())


# ========================================================================= hostile peers ====
@pytest.mark.parametrize(("port", "role"), list(itertools.product([*PORTS, "telnet"], ROLES)))
def test_hostile_peer_matrix(port, role):
    entry = SENDS.get(port, {}).get(role, frozenset()) if role is not None else frozenset()
    for kind in KNOWN_TYPES:
        allowed = kind in FIRST if role is None else kind in entry - FIRST
        allowed = allowed and port in SENDS
        assert may_send(port, role, kind) == allowed, (port, role, kind)
        if not allowed:
            assert refusal(port, role, kind)


def test_refusals_say_who_what_where():
    assert refusal("replica_control", "client", "view") == \
        "role 'client' may not send 'view' on a replica's control port"
    assert refusal("replica_client", None, "req") == \
        "a peer without a hello may send only 'hello' on a replica's client port, not 'req'"
    assert refusal("gfd", "lfd", "hello") == "role 'lfd' may not send 'hello' again on the " \
                                             "GFD's port"
    assert "telnet" in refusal("telnet", "admin", "status_req")
