"""A view: who orders requests (primary / sequencer) and which replicas are ready, per epoch.

Views are decided by the Replication Manager (or an operator's ``ftds ctl view``). A newer view
has a larger ``(epoch, version)``: the epoch changes with the primary/sequencer, the version
with the ready set inside an epoch. Every replica adopts a newer view from anyone on the
cluster key and ignores older ones, so views spread even when the RM is briefly away.

A view made by the RM also names the *incarnation* (one per process start) of each member it
counts: a replica restarted since then has lost its state, and it never takes that view's
primary role or ready seat for itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import WireError

# The largest epoch or version a view may carry: the RM counts epochs on from the highest it
# has seen, and the codec carries integers up to 2**64 - 1.
MAX_EPOCH = 2**63 - 1


@dataclass(frozen=True)
class View:
    epoch: int
    version: int
    primary: str
    members: tuple[str, ...]  # ready replicas, the primary included
    lease: float = 0.0  # seconds of lease granted to the primary with this view
    incs: tuple[tuple[str, str], ...] = ()  # (member, incarnation) the view was made for

    def incarnation(self, member: str) -> str | None:
        for rid, inc in self.incs:
            if rid == member:
                return inc
        return None

    def made_for(self, member: str, incarnation: str) -> bool:
        """False if the view counts another incarnation (an earlier process) of ``member``."""
        inc = self.incarnation(member)
        return inc is None or inc == incarnation

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.version)

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"epoch": self.epoch, "version": self.version,
                                "primary": self.primary, "members": list(self.members),
                                "lease": self.lease}
        if self.incs:
            wire["incs"] = dict(self.incs)
        return wire

    @staticmethod
    def from_wire(data: Any) -> View:
        if not isinstance(data, dict):
            raise WireError("malformed", "view must be an object")
        epoch, version = data.get("epoch"), data.get("version")
        primary, members = data.get("primary"), data.get("members")
        lease = data.get("lease", 0.0)
        ok = (
            isinstance(epoch, int) and not isinstance(epoch, bool) and 1 <= epoch <= MAX_EPOCH
            and isinstance(version, int) and not isinstance(version, bool)
            and 0 <= version <= MAX_EPOCH
            and isinstance(primary, str) and isinstance(members, list)
            and all(isinstance(m, str) for m in members) and primary in members
            and len(set(members)) == len(members)
            and isinstance(lease, int | float) and not isinstance(lease, bool) and lease >= 0
        )
        incs = data.get("incs") or {}
        if not ok or not isinstance(incs, dict) or not all(
                m in members and isinstance(i, str) for m, i in incs.items()):
            raise WireError("malformed", f"bad view {data!r:.200}")
        return View(epoch, version, primary, tuple(members), float(lease),
                    tuple(sorted(incs.items())))

    def describe(self) -> str:
        return (f"epoch {self.epoch}.{self.version}: primary {self.primary}, "
                f"ready {', '.join(self.members)}")
