"""The replication log: truncation is O(1) for the event loop; entries are freed in slices."""

import sys

import pytest

from ftds.replica.replog import RELEASE_SLICE, ReplicationLog


def entry(seq: int) -> dict:
    return {"s": seq, "e": 1, "c": f"c{seq % 7}", "r": seq, "op": {"op": "put", "key": f"k{seq}"}}


def filled(n: int, base: int = 0) -> ReplicationLog:
    log = ReplicationLog(base)
    for seq in range(base + 1, base + n + 1):
        log.append(entry(seq))
    return log


def test_truncate_frees_nothing_at_once_and_release_frees_a_slice_at_a_time():
    n = 5 * RELEASE_SLICE
    log = filled(n + 10)
    kept = log.entry(3)
    refs = sys.getrefcount(kept)
    log.truncate(n)
    # The truncated entries are out of reach but still held: freeing them is release()'s job.
    assert log.base == n and log.entry(3) is None and log.entry(n) is None
    assert log.entries_after(n - 1) is None
    assert [e["s"] for e in log.entries_after(n)] == list(range(n + 1, n + 11))
    assert log.unreleased == n and len(log) == 10
    assert sys.getrefcount(kept) == refs
    steps = 0
    while log.unreleased:
        before = log.unreleased
        log.release()
        assert before - log.unreleased <= max(RELEASE_SLICE, before // 8)
        steps += 1
    assert steps >= 4
    assert sys.getrefcount(kept) == refs - 1  # freed by the log now
    assert log.last_seq == n + 10 and log.entry(n + 1)["s"] == n + 1
    log.append(entry(n + 11))
    assert log.last_seq == n + 11


def test_release_keeps_up_with_a_backlog():
    # A backlog far beyond one slice is released in a bounded number of calls (it shrinks by
    # at least an eighth per call), so a fast orderer cannot outgrow the release.
    log = filled(400 * RELEASE_SLICE)
    log.truncate(399 * RELEASE_SLICE)
    calls = 0
    while log.unreleased:
        log.release()
        calls += 1
    assert calls < 60
    assert len(log) == RELEASE_SLICE


def test_reset_hands_the_old_entries_to_release():
    log = filled(3 * RELEASE_SLICE)
    log.reset(10_000)
    assert log.base == 10_000 and len(log) == 0 and log.last_seq == 10_000
    assert log.unreleased == 3 * RELEASE_SLICE
    assert log.entries_after(10_000) == [] and log.entries_after(9_999) is None
    log.append(entry(10_001))
    assert log.entry(10_001)["s"] == 10_001
    while log.unreleased:
        log.release()
    assert log.entry(10_001)["s"] == 10_001 and len(log) == 1


def test_truncate_within_the_log_only_and_gaps_are_refused():
    log = filled(10)
    log.truncate(3)
    log.truncate(2)  # behind the base: nothing
    assert log.base == 3 and len(log) == 7
    log.truncate(50)  # beyond the end: up to the last entry
    assert log.base == 10 and len(log) == 0 and log.entries_after(10) == []
    with pytest.raises(ValueError):
        log.append(entry(12))
    log.append(entry(11))
    assert [e["s"] for e in log.entries_after(10)] == [11]
