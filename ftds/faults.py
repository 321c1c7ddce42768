"""Planted bugs, to prove that the tests and the checker catch them.

Off unless the environment variable FTDS_FAULT names them (comma-separated); a replica with a
fault on says so loudly at start. Never set it on a real cluster.

- ``skip_reply_cache``: a retried request is executed again instead of answered from the cache.
"""

from __future__ import annotations

import os

KNOWN = frozenset({"skip_reply_cache"})
ACTIVE = frozenset(f for f in os.environ.get("FTDS_FAULT", "").split(",") if f)


def on(name: str) -> bool:
    return name in ACTIVE


def unknown() -> set[str]:
    return set(ACTIVE - KNOWN)
