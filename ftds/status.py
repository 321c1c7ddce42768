"""Text forms of ``ftds status`` and ``ftds incidents`` (the JSON forms are the raw data)."""

from __future__ import annotations

import time
from typing import Any


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def status_text(s: dict[str, Any]) -> str:
    role = "sequencer" if s["mode"] == "active" else "primary"
    head = (f"{s['mode']} mode · epoch {s['epoch']} (view {s['epoch']}.{s['view_version']}) · "
            f"{role} {s['primary'] or '-'} · membership view {s['membership_view']}: "
            f"{', '.join(s['membership']) or 'nobody'} · GFD "
            f"{'stable' if s['gfd_stable'] else 'not stable' if s['gfd_connected'] else 'away'}")
    rows = [["replica", "role", "ready", "seq", "ckpt", "hb age", "hb every", "restarts",
             "budget", "last RM decision"]]
    for rid, r in s["replicas"].items():
        hb_age = r.get("heartbeat_age")
        hb_every = r.get("heartbeat_interval")
        rows.append([
            rid, r["role"] or "-", "yes" if r["ready"] else "no",
            "-" if r["seq"] is None else str(r["seq"]),
            "-" if r["checkpoint_count"] is None else str(r["checkpoint_count"]),
            "-" if hb_age is None else f"{hb_age * 1000:.0f} ms",
            "-" if hb_every is None else f"{hb_every * 1000:.0f} ms",
            str(r["restarts"]),
            "HELD" if r.get("held") else
            "EXHAUSTED" if r["budget_exhausted"] else f"{r['budget_left']} left",
            f"held: {r['held']}" if r.get("held") else r["decision"] or r["relaunch"] or "",
        ])
    lines = [head, table(rows)]
    if s.get("failover_pending"):
        lines.append(f"failover pending: {s['failover_pending']}")
    lines.append(f"last decision: {s['last_decision']}")
    return "\n".join(lines)


# ``ftds status`` exit codes, the monitoring-plugin convention (Nagios, Icinga, Sensu).
OK, DEGRADED, CRITICAL, UNKNOWN = 0, 1, 2, 3
HEALTH_NAMES = {OK: "OK", DEGRADED: "DEGRADED", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def health(s: dict[str, Any]) -> tuple[int, str]:
    """The verdict on the RM's status: (exit code, why), worst finding first.

    Critical: no primary (sequencer), or it is not present and ready. Degraded: a backup
    down, not ready or held for maintenance, or a replica whose restart budget is spent (the
    RM will not bring it back after its next crash)."""
    role = "sequencer" if s.get("mode") == "active" else "primary"
    replicas: dict[str, dict[str, Any]] = s.get("replicas") or {}
    primary = s.get("primary")
    # When the RM waits rather than lose data, its reason is what the operator acts on.
    waiting = f" (the RM waits: {s['unavailable']})" if s.get("unavailable") else ""
    if not primary:
        return CRITICAL, f"no {role}{waiting}"
    p = replicas.get(primary)
    if p is None or not p.get("present"):
        return CRITICAL, f"{role} {primary} is not present{waiting}"
    if not p.get("ready"):
        return CRITICAL, f"{role} {primary} is not ready{waiting}"
    problems = []
    for rid, r in replicas.items():
        if r.get("held"):
            problems.append(f"{rid} held ({r['held']})")
        elif rid != primary and not r.get("present"):
            problems.append(f"{rid} down")
        elif rid != primary and not r.get("ready"):
            problems.append(f"{rid} not ready")
        if r.get("budget_exhausted"):
            problems.append(f"{rid} restart budget exhausted")
    if problems:
        return DEGRADED, ", ".join(problems)
    return OK, f"{role} {primary}, {len(replicas)} of {len(replicas)} replicas ready"


def incidents_text(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return "no incidents"
    rows = [["#", "replica", "when", "cause", "detect→removed", "→new primary",
             "relaunch→ready", "detect→ready"]]
    for i in incidents:
        when = time.strftime("%H:%M:%S", time.localtime(i["detected"]))
        primary = f" ({i['new_primary_id']})" if i.get("new_primary_id") else ""
        rows.append([str(i["id"]), i["replica"] + (" *" if i["was_primary"] else ""), when,
                     i["cause"][:48], _ms(i["detect_to_removed_ms"]),
                     _ms(i["detect_to_new_primary_ms"]) + primary,
                     _ms(i["relaunch_to_ready_ms"]),
                     _ms(i["detect_to_ready_ms"]) if i["closed"] else "open"])
    return table(rows) + "\n(* was the primary / sequencer)"
