"""Dial through the chaos run's link proxies (``ftds_tools.chaos.linkproxy``); development only.

On ``PYTHONPATH`` only for the daemons of an embedded cluster that a chaos run started, with
``FTDS_LINKS`` naming the proxies' route file. A daemon's host comes from its command line
(``replica``/``lfd --id S2``: h2; ``rm``, ``gfd``: m); every connection it dials to another host
goes to that host pair's proxy port instead. Listen addresses and the cluster file are untouched,
and processes started by the RM inherit the environment, so relaunched replicas dial the same way.
Anything else (clients, ``ftds ctl``) dials directly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

_ROUTES_FILE = os.environ.get("FTDS_LINKS", "")
_routes: dict[str, list[Any]] | None = None


def _my_host() -> str | None:
    args = sys.argv[1:]
    for i, arg in enumerate(args):
        if arg in ("rm", "gfd"):
            return "m"
        if arg in ("replica", "lfd"):
            rest = args[i + 1:]
            for j, opt in enumerate(rest):
                if opt == "--id" and j + 1 < len(rest):
                    return f"h{int(rest[j + 1][1:])}"
                if opt.startswith("--id="):
                    return f"h{int(opt.split('=', 1)[1][1:])}"
            return None
    return None


def _route(host: str, port: int) -> list[Any] | None:
    global _routes
    if _routes is None:
        try:
            table = json.loads(Path(_ROUTES_FILE).read_text())["routes"]
            me = _my_host()
            _routes = table.get(me, {}) if me else {}
        except (OSError, ValueError, KeyError):
            _routes = {}
    return _routes.get(f"{host}:{port}")


def _install() -> None:
    try:
        import ftds.wire as wire
    except ImportError:
        return
    original = wire.connect

    async def connect(host: str, port: int, *args: Any, label: str | None = None,
                      **kwargs: Any) -> Any:
        via = _route(host, port)
        if via is None:
            return await original(host, port, *args, label=label, **kwargs)
        # Logged under the peer's own address: the proxy is invisible to the daemon.
        return await original(via[0], via[1], *args, label=label or f"{host}:{port}",
                              **kwargs)

    wire.connect = connect  # before any module's ``from .wire import connect``


if _ROUTES_FILE:
    _install()
