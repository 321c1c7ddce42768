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
            "EXHAUSTED" if r["budget_exhausted"] else f"{r['budget_left']} left",
            r["decision"] or r["relaunch"] or "",
        ])
    lines = [head, table(rows)]
    if s.get("failover_pending"):
        lines.append(f"failover pending: {s['failover_pending']}")
    lines.append(f"last decision: {s['last_decision']}")
    return "\n".join(lines)


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
