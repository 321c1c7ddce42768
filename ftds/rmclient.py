"""Asking the Replication Manager something (status, incidents, a budget reset)."""

from __future__ import annotations

from typing import Any

from .config import ClusterConfig
from .wire import connect


async def rm_request(config: ClusterConfig, key: bytes, kind: str,
                     fields: dict[str, Any] | None = None,
                     timeout: float = 3.0) -> dict[str, Any]:
    rm = config.rm
    conn = await connect(rm.host, rm.port, key, config.tunables.max_frame, "ctl",
                         timeout=timeout, label="ctl->RM")
    try:
        await conn.request("hello", {"role": "admin"}, timeout=timeout, expect=("welcome",))
        return await conn.request(kind, fields, timeout=timeout)
    finally:
        conn.close()


async def reset_budgets(config: ClusterConfig, key: bytes) -> None:
    """Give every replica its full restart budget again (``ftds ctl reset-budget``, for all).

    Fault-injection runs do this before each fault: they kill replicas far more often than
    the budget allows a crash-looping replica, on purpose."""
    for replica in config.replica_ids:
        await rm_request(config, key, "reset_budget", {"replica": replica})
