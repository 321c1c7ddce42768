"""A replica's checkpoints: where they stand, how one is sent, and what one received does.

- **The log behind them.** The log keeps every entry since the checkpoint *before* the last
  one, so a member that missed the last checkpoint still catches up from the log.
- **Sending.** A small state (one part of at most ``WHOLE_CHECKPOINT_BYTES``) goes to the
  members whole: the course's checkpoint of ``my_state``. A larger one goes as its digest only:
  the members applied the same stream, so they compare digests at that seq, and only a member
  that differs takes the whole state again (it subscribes anew). Encoding, decoding and
  rehashing a whole state every checkpoint would cost each loop in proportion to the state,
  not to what changed. The state's size is measured again once its item count halved.
- **Receiving.** A whole checkpoint is verified (digest over the whole state) before it
  replaces anything; a digest-only one is compared with this replica's own state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..statemachine import StateMachine, Sums, verify_checkpoint
from ..wire import WireError
from .member import AtCheckpoint, compare_checkpoint
from .replog import ReplicationLog
from .transfer import STATE_FIELDS, CheckpointParts

log = logging.getLogger("ftds.replica")
exec_log = logging.getLogger("ftds.exec")

# The largest state a periodic checkpoint carries whole (30,000 client records are 2 MB).
WHOLE_CHECKPOINT_BYTES = 256 * 1024


class Checkpoints:
    """The checkpoints of one replica's state machine ``sm`` and log ``log``."""

    def __init__(self, owner: str, sm: StateMachine, log: ReplicationLog,
                 tracing: Callable[[], bool]) -> None:
        self.owner = owner
        self.sm = sm
        self.log = log
        self._tracing = tracing  # EXEC/RESET lines (asked each time: a reload may change it)
        self.seq = 0  # the last checkpoint's
        self.prev_seq = 0  # the one before: the log keeps everything after it
        self.state_parts = 0  # parts of WHOLE_CHECKPOINT_BYTES the state took when measured
        self.state_items = 0  # its keys and client records then
        self.sent = 0
        self.received = 0
        self.divergences = 0

    # ------------------------------------------------------------------------ the orderer ----
    def due(self) -> bool:
        """Entries were applied since the last checkpoint."""
        return self.sm.seq > self.seq

    def _items(self) -> int:
        return len(self.sm.kv) + len(self.sm.clients)

    def measured_large(self) -> None:
        """The state was just sent in many frames: a periodic checkpoint goes as its digest."""
        self.state_parts, self.state_items = max(self.state_parts, 2), self._items()

    def may_go_whole(self) -> bool:
        """Whether a periodic checkpoint may go whole: the state was small when last measured,
        or it has lost half its items since (measured again then). More items than could
        fit, at 16 bytes each at least, never go whole: no need to make the parts to know."""
        items = self._items()
        if items > WHOLE_CHECKPOINT_BYTES // 16:
            return False
        return self.state_parts <= 1 or items < self.state_items // 2

    def periodic(self, cp: dict[str, Any], sender: str, epoch: int, limit: int,
                 body: Callable[[str, dict[str, Any]], bytes]) -> tuple[list[bytes], str]:
        """The bodies of a periodic checkpoint ``cp`` and why it goes that way: whole when the
        state is small, else its digest only (``cp`` may then come without its state)."""
        bodies: list[bytes] = []
        if "my_state" in cp and self.may_go_whole():
            # Made only if the state is small: a larger one costs one part to find out.
            parts = CheckpointParts(cp, "checkpoint", {}, sender, epoch,
                                    min(limit, WHOLE_CHECKPOINT_BYTES))
            bodies = parts.all_if_small() or []
            self.state_parts = parts.parts if bodies else max(parts.parts, 2)
            self.state_items = self._items()
        if self.state_parts <= 1:
            return bodies, "periodic"
        meta = {k: v for k, v in cp.items() if k not in STATE_FIELDS}
        return [body("checkpoint", {"checkpoint": meta, "digest_only": True})], \
            "periodic, digest only"

    def announce(self, cp: dict[str, Any], receivers: list[str], why: str) -> None:
        log.info("[CHECKPOINT %d] %s -> %s (%s: seq %d, %d keys, digest %s)",
                 cp["checkpoint_count"], self.owner, ", ".join(receivers), why, cp["seq"],
                 len(self.sm.kv), cp["digest"][:12], extra={"kind": "checkpoint"})

    def taken(self, seq: int) -> None:
        """A checkpoint at ``seq`` stands: the log lets go of what precedes the one before."""
        self.log.truncate(self.prev_seq)
        self.prev_seq = self.seq
        self.seq = seq

    # ------------------------------------------------------------------------- a member ----
    def install(self, cp: dict[str, Any], sums: Sums | None = None) -> None:
        """Replace the state by a catch-up's or a fetch's checkpoint, once verified (``sums``:
        its hashes, taken as its parts arrived)."""
        problem, sums = verify_checkpoint(cp, sums)
        if problem:
            raise WireError("malformed", problem)
        self._replace(cp, sums)
        self.prev_seq = self.seq = cp["seq"]
        log.info("[CHECKPOINT %d] %s installed (seq %d, %d keys, digest %s)",
                 cp["checkpoint_count"], self.owner, cp["seq"], len(cp["my_state"]),
                 cp["digest"][:12], extra={"kind": "checkpoint"})

    def compare(self, cp: dict[str, Any], primary: str) -> AtCheckpoint:
        """A checkpoint without its state: compare digests at its seq. On a match it stands
        here too; otherwise the caller must take the whole state again."""
        seq, digest, count = cp.get("seq"), cp.get("digest"), cp.get("checkpoint_count")
        if not isinstance(seq, int) or not isinstance(digest, str) or not isinstance(count, int):
            raise WireError("malformed", "checkpoint: seq, digest and checkpoint_count needed")
        self.received += 1
        verdict = compare_checkpoint(seq, digest, self.sm.seq, self.sm.digest)
        if verdict is AtCheckpoint.MATCH:
            self.sm.checkpoint_count = count
            log.info("[CHECKPOINT %d] %s -> %s received (seq %d, digest matches my state)",
                     count, primary, self.owner, seq, extra={"kind": "checkpoint"})
            self.taken(seq)
        elif verdict is AtCheckpoint.DIVERGED:
            self.divergences += 1
            log.error("%s: DIVERGENCE at seq %d: my digest %s, primary's %s; taking its state",
                      self.owner, seq, self.sm.digest()[:12], digest[:12])
        else:
            log.error("%s: checkpoint at seq %d while I am at %d; taking the primary's state",
                      self.owner, seq, self.sm.seq)
        return verdict

    def from_stream(self, cp: dict[str, Any], primary: str, sums: Sums | None = None) -> None:
        """A whole checkpoint in the stream: verified, then kept if it matches this state and
        installed if not."""
        problem, sums = verify_checkpoint(cp, sums)
        if problem:
            raise WireError("malformed", problem)
        self.received += 1
        at = compare_checkpoint(cp["seq"], cp["digest"], self.sm.seq, self.sm.digest)
        if at is AtCheckpoint.MATCH:
            self.sm.checkpoint_count = cp["checkpoint_count"]
            verdict = "matches my state"
        else:
            if at is AtCheckpoint.DIVERGED:
                self.divergences += 1
                log.error("%s: DIVERGENCE at seq %d: my digest %s, primary's %s; installing "
                          "the checkpoint", self.owner, cp["seq"], self.sm.digest()[:12],
                          cp["digest"][:12])
            self._replace(cp, sums)
            verdict = "installed"
        log.info("[CHECKPOINT %d] %s -> %s received (seq %d, %s)", cp["checkpoint_count"],
                 primary, self.owner, cp["seq"], verdict, extra={"kind": "checkpoint"})
        self.taken(cp["seq"])

    def _replace(self, cp: dict[str, Any], sums: Sums | None) -> None:
        self.sm.install(cp, sums)
        self.log.reset(cp["seq"])
        if self._tracing():
            exec_log.info("RESET %s seq=%d (state replaced by a checkpoint)", self.owner,
                          cp["seq"])
