"""A view: who orders requests (primary / sequencer) and which replicas are ready, per epoch.

Views are decided by the Replication Manager (or an operator's ``ftds ctl view``). A newer view
has a larger ``(epoch, version)``: the epoch changes with the primary/sequencer, the version
with the ready set inside an epoch. Every replica adopts a newer view from anyone on the
cluster key and ignores older ones, so views spread even when the RM is briefly away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .wire import WireError


@dataclass(frozen=True)
class View:
    epoch: int
    version: int
    primary: str
    members: tuple[str, ...]  # ready replicas, the primary included
    lease: float = 0.0  # seconds of lease granted to the primary with this view

    @property
    def key(self) -> tuple[int, int]:
        return (self.epoch, self.version)

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "version": self.version, "primary": self.primary,
                "members": list(self.members), "lease": self.lease}

    @staticmethod
    def from_wire(data: Any) -> View:
        if not isinstance(data, dict):
            raise WireError("malformed", "view must be an object")
        epoch, version = data.get("epoch"), data.get("version")
        primary, members = data.get("primary"), data.get("members")
        lease = data.get("lease", 0.0)
        ok = (
            isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 1
            and isinstance(version, int) and not isinstance(version, bool) and version >= 0
            and isinstance(primary, str) and isinstance(members, list)
            and all(isinstance(m, str) for m in members) and primary in members
            and isinstance(lease, int | float) and not isinstance(lease, bool) and lease >= 0
        )
        if not ok:
            raise WireError("malformed", f"bad view {data!r:.200}")
        return View(epoch, version, primary, tuple(members), float(lease))

    def describe(self) -> str:
        return (f"epoch {self.epoch}.{self.version}: primary {self.primary}, "
                f"ready {', '.join(self.members)}")
