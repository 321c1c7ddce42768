"""What a client's request is against its session, and what a member does with its stream.

Pure decisions, no I/O: :func:`classify_request` is exactly-once (a retry gets its cached
reply, a reused request number another operation's never); :func:`next_in_stream` keeps a
member's log gapless; :func:`compare_checkpoint` says whether a member's state is the
orderer's at a checkpoint. The replica (``ftds/replica/core.py``) carries them out.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class Seen(Enum):
    NEW = "new"  # beyond the session's watermark: order it
    RETRY = "retry"  # the session's last request with the same operation: its cached reply
    REUSED = "reused"  # the last request_num with another operation: an error reply
    STALE = "stale"  # below the watermark: the client is told where its numbering stands


def classify_request(request_num: int, watermark: int, same_op: bool) -> Seen:
    """``watermark``: the session's last applied request_num; ``same_op``: whether the request
    carries that request's operation (only read when the numbers are equal, so a caller may
    compute it only then: ``request_num == watermark and ...``)."""
    if request_num > watermark:
        return Seen.NEW
    if request_num < watermark:
        return Seen.STALE
    return Seen.RETRY if same_op else Seen.REUSED


class InStream(Enum):
    APPLY = "apply"  # the next entry
    HELD = "held"  # already held (a resent slice, a catch-up overlapping the stream)
    GAP = "gap"  # entries are missing before it: subscribe again


def next_in_stream(seq: int, held: int) -> InStream:
    if seq <= held:
        return InStream.HELD
    return InStream.APPLY if seq == held + 1 else InStream.GAP


class AtCheckpoint(Enum):
    MATCH = "match"  # same seq, same digest: nothing to do
    DIVERGED = "diverged"  # same seq, another state: a divergence, the orderer's state wins
    ELSEWHERE = "elsewhere"  # not at that seq: it missed or holds other entries


def compare_checkpoint(cp_seq: int, cp_digest: str, seq: int,
                       digest: Callable[[], str]) -> AtCheckpoint:
    """``digest``: the member's state digest, computed only when the seqs are equal."""
    if cp_seq != seq:
        return AtCheckpoint.ELSEWHERE
    return AtCheckpoint.MATCH if cp_digest == digest() else AtCheckpoint.DIVERGED
