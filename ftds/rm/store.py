"""What the Replication Manager must never forget, kept on disk.

Soft state (membership, reports, readiness) is rebuilt after a restart; this is not. A restarted
RM must never issue an epoch twice, never cut short a lease it granted, and never let a replica
without the data lead while a replica that holds it may come back. So it keeps:

- ``epoch``: the highest epoch issued (written before the epoch is used);
- ``view``: the last view issued, with the incarnations of its members (the holders of every
  committed write);
- ``lease_max``: the longest lease ever granted (a restarted RM waits that long);
- ``committed_seq``: the highest commit index a primary reported (for operators: what an
  override may lose);
- ``confirmed``: the members of ``view`` its primary vouched for (they hold every write it
  acknowledged), so a restarted RM elects only among them; ``None`` in a record written before
  it was kept (then every member of the view counts);
- ``held``: replicas an operator keeps down for maintenance (``ftds ctl hold``), with the
  reason and when; the RM does not relaunch them until released.

Written as JSON: temporary file, fsync, rename, fsync of the directory. A file that exists but
cannot be read is an error that stops the RM with the path and what to do; it never reads as
"nothing happened yet".
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError

FILE_NAME = "rm-state.json"
LEGACY_EPOCH_FILE = "epoch"


@dataclass
class RmRecord:
    epoch: int = 0
    view: dict[str, Any] | None = None
    lease_max: float = 0.0
    committed_seq: int = 0
    forced: list[dict[str, Any]] = field(default_factory=list)  # operator overrides, for the record
    confirmed: list[str] | None = None
    held: dict[str, dict[str, Any]] = field(default_factory=dict)  # replica -> reason, at

    @property
    def data_may_exist(self) -> bool:
        """A view was issued: some replica may hold acknowledged writes."""
        return self.view is not None


class RmStore:
    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / FILE_NAME

    def load(self) -> RmRecord:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return RmRecord(epoch=self._legacy_epoch())
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read the RM's state ({exc})") from None
        try:
            data = json.loads(raw)
            record = RmRecord(
                epoch=_int(data, "epoch"), view=data.get("view"),
                lease_max=float(data.get("lease_max", 0.0)),
                committed_seq=_int(data, "committed_seq"),
                forced=list(data.get("forced", [])), confirmed=data.get("confirmed"),
                held=_held(data.get("held", {})))
            if record.view is not None and not isinstance(record.view, dict):
                raise ValueError("view is not an object")
            members = (record.view or {}).get("members")
            if isinstance(members, list):
                # Recorded before views were checked ('ftds ctl members S1,S1' was taken): the
                # same ready set, each member once.
                record.view["members"] = list(dict.fromkeys(members))
            if record.confirmed is not None and not (
                    isinstance(record.confirmed, list)
                    and all(isinstance(m, str) for m in record.confirmed)):
                raise ValueError("confirmed is not a list of replica ids")
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{self.path}: the RM's state file is corrupt ({exc}); it holds the highest "
                "epoch and the last view, so the RM will not guess them. Restore it from a "
                "backup, or, to start the cluster over and accept losing what it held, move "
                "it aside and start the RM with every replica stopped") from None
        return record

    def save(self, record: RmRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(FILE_NAME + ".tmp")
        data = json.dumps(asdict(record), sort_keys=True).encode() + b"\n"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.dir)

    def _legacy_epoch(self) -> int:
        path = self.dir / LEGACY_EPOCH_FILE
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the RM's epoch ({exc})") from None
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{path}: the RM's epoch file is corrupt ({text[:40]!r})") from None


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _held(value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and isinstance(v.get("reason"), str)
            for k, v in value.items()):
        raise ValueError("held is not a map of replica ids to {reason, at}")
    return value


def _int(data: dict[str, Any], name: str) -> int:
    value = data.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer")
    return value
