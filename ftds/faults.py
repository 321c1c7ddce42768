"""Planted bugs, to prove that the tests and the checker catch them.

Off unless the environment variable FTDS_FAULT names them (comma-separated); a replica with a
fault on says so loudly at start. Never set it on a real cluster.

- ``skip_reply_cache``: a retried request is executed again instead of answered from the cache
  (a request applied twice);
- ``drop_acked_write``: the primary answers before its backups have the request, and ships
  its stream late: a crash of the primary loses writes it acknowledged;
- ``reorder``: a member applies two consecutive entries of a batch in swapped order (active
  mode: replicas diverge);
- ``ack_after_deposed``: a primary ignores the view that deposes it and, when its backups stop
  answering, acknowledges alone (two primaries acknowledging);
- ``early_commit``: a new primary counts its whole history committed at the end of the view
  change, before its backups hold it, and answers held retries at once;
- ``stall_applier``: once it has ordered a write of the key ``__stall__``, an orderer's applier
  stops taking work while its loop still answers heartbeats (the LFD must see the stall);
- ``empty_primary_keeps_epoch`` (RM): views name no incarnations and a restarted primary is
  taken for the one that was lost: its empty relaunch orders again in the same epoch.
"""

from __future__ import annotations

import os

KNOWN = frozenset({"skip_reply_cache", "drop_acked_write", "reorder", "ack_after_deposed",
                   "early_commit", "empty_primary_keeps_epoch", "stall_applier"})
ACTIVE = frozenset(f for f in os.environ.get("FTDS_FAULT", "").split(",") if f)


def on(name: str) -> bool:
    return name in ACTIVE


def unknown() -> set[str]:
    return set(ACTIVE - KNOWN)
