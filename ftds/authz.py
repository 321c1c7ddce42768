"""Who may say what, on which listening port: the one table of ftds's authorisation.

A daemon listens on four kinds of port (``PORTS``). A peer there is a stranger until its hello
is accepted; the hello names the *hello role* it speaks as (a replica's client port implies
``client``). Under mutual TLS its certificate states a *certificate role* (``CERT_ROLES``, the
OU), and ``HELLO_ROLES`` says which hello roles that certificate may claim on each port. Then
``SENDS`` says which message types (``msg["t"]``) each hello role may send there.

- A stranger may send only its ``hello``. It is listed in each role's entry (the role sends it),
  but only as the first message: the role is fixed by then, so a second one is refused.
- Whatever the table leaves out is refused; the caller raises
  ``WireError("forbidden", refusal(port, role, kind))``.
- Only what peers send *to a listening port* is here. What comes back on a link a daemon dialed
  (the RM's to the replicas, an LFD's, a member's stream) is from the peer it chose, whose
  certificate the dial checked (``wire.connect(expect=...)``).
- The table is per role; a name within a role (that LFD1 speaks only for S1, that a member is
  the replica its certificate names) is the caller's to check.

Pure: no I/O, no imports from the rest of ftds.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

HELLO = "hello"
FIRST = frozenset({HELLO})  # all a stranger may send, on any port

PORTS = ("replica_client", "replica_control", "gfd", "rm")
PORT_NAMES = MappingProxyType({
    "replica_client": "a replica's client port",
    "replica_control": "a replica's control port",
    "gfd": "the GFD's port",
    "rm": "the RM's port",
})
CERT_ROLES = ("replica", "lfd", "gfd", "rm", "admin", "client")

Table = Mapping[str, Mapping[str, frozenset[str]]]


def _table(rows: dict[str, dict[str, frozenset[str]]]) -> Table:
    return MappingProxyType({port: MappingProxyType(roles) for port, roles in rows.items()})


# port -> hello role -> the message types that role may send there.
SENDS: Table = _table({
    "replica_client": {
        # A client says hello, then sends batches of requests; it learns views from the replies.
        "client": frozenset({HELLO, "req"}),
    },
    "replica_control": {
        # A member subscribes to the orderer, acks the stream, answers a new orderer's fetch.
        "member": frozenset({HELLO, "ack", "fetched", "cp_part"}),
        # The LFD beside the replica only heartbeats it.
        "lfd": frozenset({HELLO, "hb"}),
        # The RM installs views and grants the orderer's leases (it reads reports, not status).
        "rm": frozenset({HELLO, "view", "lease"}),
        # An operator (ftds ctl): status, a view by hand (bootstrap, promote), a checkpoint.
        "admin": frozenset({HELLO, "status_req", "view", "checkpoint_now"}),
    },
    "gfd": {
        # An LFD registers for its replica, answers heartbeats, reports add/delete and state.
        "lfd": frozenset({HELLO, "hb_ack", "add", "delete", "state"}),
        # An operator reads the membership.
        "admin": frozenset({HELLO, "status_req"}),
    },
    "rm": {
        # The GFD pushes the membership and answers the RM's status question.
        "gfd": frozenset({HELLO, "membership", "gfd_status"}),
        # An operator (ftds status / incidents / ctl): reads, budgets, holds, forced primaries.
        "admin": frozenset({HELLO, "status_req", "incidents_req", "reset_budget", "hold",
                            "release", "force_primary"}),
    },
})

# port -> certificate role -> the hello roles that certificate may claim there.
HELLO_ROLES: Table = _table({
    "replica_client": {
        "client": frozenset({"client"}),  # client certificates are for the client port only
    },
    "replica_control": {
        "replica": frozenset({"member"}),  # another replica subscribes to this one's stream
        "lfd": frozenset({"lfd"}),  # the replica's own LFD (its name: the caller's check)
        "rm": frozenset({"rm"}),  # the RM drives every replica
        "admin": frozenset({"admin"}),  # ftds ctl
    },
    "gfd": {
        "lfd": frozenset({"lfd"}),  # every LFD registers here
        "admin": frozenset({"admin"}),  # an operator's read of the membership
    },
    "rm": {
        "gfd": frozenset({"gfd"}),  # the one GFD
        "admin": frozenset({"admin"}),  # ftds status, incidents, ctl
    },
})


def may_send(port: str, role: str | None, kind: str) -> bool:
    """May a peer speaking as ``role`` (None: no hello accepted yet) send ``kind`` on ``port``?"""
    roles = SENDS.get(port)
    if roles is None:
        return False
    if role is None:
        return kind in FIRST
    return kind in roles.get(role, frozenset()) and kind not in FIRST


def may_claim(port: str, cert_role: str, hello_role: str) -> bool:
    """May a peer whose certificate states ``cert_role`` speak as ``hello_role`` on ``port``?"""
    return hello_role in HELLO_ROLES.get(port, {}).get(cert_role, frozenset())


def refusal(port: str, role: str | None, kind: str) -> str:
    """Why ``may_send(port, role, kind)`` is False, in one line (the ``forbidden`` detail)."""
    where = PORT_NAMES.get(port, f"port kind {port!r}")
    if port not in SENDS:
        return f"{where} is not a port ftds knows"
    if role is None:
        return f"a peer without a hello may send only {HELLO!r} on {where}, not {kind!r}"
    if kind in FIRST and kind in SENDS[port].get(role, frozenset()):
        return f"role {role!r} may not send {kind!r} again on {where}"
    return f"role {role!r} may not send {kind!r} on {where}"
