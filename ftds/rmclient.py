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
