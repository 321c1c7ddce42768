"""Exactly-once against a session, a member's gapless stream and its state at a checkpoint
(ftds/replica/member.py): pure decisions, checked case by case."""

from __future__ import annotations

import pytest

from ftds.replica.member import (
    AtCheckpoint,
    InStream,
    Seen,
    classify_request,
    compare_checkpoint,
    next_in_stream,
)


def never() -> bool:
    raise AssertionError("the digest is computed only when the seqs are equal")


@pytest.mark.parametrize(("request_num", "watermark", "seen"), [
    (1, 0, Seen.NEW), (8, 7, Seen.NEW), (20, 7, Seen.NEW), (6, 7, Seen.STALE), (1, 7, Seen.STALE),
])
def test_a_request_beyond_or_below_the_watermark(request_num, watermark, seen):
    assert classify_request(request_num, watermark, True) is seen
    assert classify_request(request_num, watermark, False) is seen


def test_the_last_request_again_is_a_retry_only_with_the_same_operation():
    """A reused client id whose request_num equals the stored one must not get the cached
    reply of a different operation."""
    assert classify_request(7, 7, True) is Seen.RETRY
    assert classify_request(7, 7, False) is Seen.REUSED


@pytest.mark.parametrize(("seq", "held", "step"), [
    (6, 5, InStream.APPLY), (1, 0, InStream.APPLY), (5, 5, InStream.HELD), (2, 5, InStream.HELD),
    (7, 5, InStream.GAP),
])
def test_a_member_applies_only_the_next_entry(seq, held, step):
    assert next_in_stream(seq, held) is step


def test_a_checkpoint_is_compared_with_the_state_at_its_seq():
    assert compare_checkpoint(10, "abc", 10, lambda: "abc") is AtCheckpoint.MATCH
    assert compare_checkpoint(10, "abc", 10, lambda: "abd") is AtCheckpoint.DIVERGED
    assert compare_checkpoint(10, "abc", 12, never) is AtCheckpoint.ELSEWHERE
    assert compare_checkpoint(12, "abc", 10, never) is AtCheckpoint.ELSEWHERE
