"""What a replica does with a view, and how a new orderer collects its epoch's history.

Pure decisions, no I/O: :func:`admits` is the epoch gate every peer's message passes;
:func:`judge_view` says whether a view is refused, already known or taken (and what taking it
means for this replica); :func:`recovery_step` says what a new
orderer's view change does next; :func:`catchup_from_log` says whether a subscriber can be
sent log entries or needs a checkpoint. The replica (``ftds/replica/core.py``) carries them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from ..view import View

# ====================================================================== epoch gate ====
# Every message a replica takes from a peer carries the sender's epoch ("e"). All but views act
# only within the epoch the replica is in: a deposed orderer's stream, a subscription, ack,
# fetched history or lease of another epoch changes nothing. A view carries its own
# (epoch, version) and is judged by judge_view.
GATED = frozenset({"entries", "catchup", "checkpoint", "cp_part", "commit", "fetch", "fetched",
                   "subscribe", "ack", "lease"})


def admits(kind: str, sender_epoch: int, epoch: int) -> bool:
    """Whether a ``kind`` message sent in ``sender_epoch`` may act on a replica in ``epoch``."""
    if kind == "view":
        return True
    if kind not in GATED:
        raise ValueError(f"{kind!r} is not a message between replicas")
    return sender_epoch == epoch


def may_come_due(sender_epoch: int, epoch: int) -> bool:
    """At receipt, before the applier takes it: a message of a later epoch may become current
    once a view queued ahead of it is taken; one of an earlier epoch never will."""
    return sender_epoch >= epoch


class Take(Enum):
    REFUSE = "refuse"  # it names an earlier process of this replica as primary
    KNOWN = "known"  # not newer than the view held: only acknowledged
    ADOPT = "adopt"


@dataclass(frozen=True)
class ViewVerdict:
    take: Take
    newer: bool = False  # REFUSE: newer than the view held (worth an error line)
    same: bool = False  # KNOWN: the very view held (its lease is renewed)
    new_epoch: bool = False  # ADOPT: another epoch: the old one's orderer state is void
    lead: bool = False  # ADOPT: this replica orders the view
    counted: bool = False  # ADOPT: in its ready set, as this very process


def judge_view(held: View | None, view: View, me: str, incarnation: str) -> ViewVerdict:
    """Views only move forward, and a view made for an earlier process of this replica (which
    held the state) never makes this one, restarted and empty, the orderer."""
    if view.primary == me and not view.made_for(me, incarnation):
        return ViewVerdict(Take.REFUSE, newer=held is None or view.key > held.key)
    if held is not None and view.key <= held.key:
        return ViewVerdict(Take.KNOWN, same=view.key == held.key)
    return ViewVerdict(
        Take.ADOPT, new_epoch=held is None or view.epoch != held.epoch, lead=view.primary == me,
        counted=me in view.members and view.made_for(me, incarnation))


# ======================================================================= view change ====
@dataclass(frozen=True)
class WaitForMembers:
    """Some members of the ready set have not subscribed yet."""

    missing: tuple[str, ...]


@dataclass(frozen=True)
class FetchFrom:
    """A ready member holds a longer history: fetch what follows this orderer's seq."""

    member: str
    since: int


@dataclass(frozen=True)
class Serve:
    """This orderer holds the longest history of the ready set: the view change is over."""


RecoveryStep = WaitForMembers | FetchFrom | Serve


def recovery_step(members: tuple[str, ...] | list[str], subscribed: Mapping[str, tuple[int, bool]],
                  seq: int) -> RecoveryStep:
    """``subscribed``: per subscriber, the seq it holds and whether it is a ready member (its
    log a prefix of the epoch's history). Every ready member is heard before serving, so no
    acknowledged entry any of them holds is left behind."""
    missing = tuple(m for m in members if m not in subscribed)
    if missing:
        return WaitForMembers(missing)
    ahead, ahead_seq = None, -1
    for member, (held, trusted) in subscribed.items():
        if trusted and held > ahead_seq:  # the first of equals, in subscription order
            ahead, ahead_seq = member, held
    if ahead is not None and ahead_seq > seq:
        return FetchFrom(ahead, seq)
    return Serve()


def catchup_from_log(*, trusted: bool, held: int, held_epoch: int, seq: int,
                     epoch_at: int | None, log_base: int, checkpoint_seq: int) -> bool:
    """Whether a subscriber that holds up to ``held`` (the last of it written in epoch
    ``held_epoch``) can be sent the log after it, instead of a whole checkpoint.

    Only a ready member's log is known to be a prefix of ours, and only where our entry at its
    seq was written in the same epoch (or it stands exactly at our last checkpoint, the base of
    our log). ``epoch_at``: the epoch of our entry at ``held``, None if the log lacks it.
    """
    if not trusted or held > seq:
        return False
    return held == 0 or (epoch_at is not None and epoch_at == held_epoch) or (
        held == log_base and held == checkpoint_seq)
