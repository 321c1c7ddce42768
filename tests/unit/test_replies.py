"""Replies waiting for a commit are given back in seq order, however retries arrive."""

from __future__ import annotations

import random

from ftds.replica.replies import Pending, PendingReply


def reply(seq: int, tag: str) -> PendingReply:
    return PendingReply(seq, None, {"tag": tag})  # type: ignore[arg-type]


def test_replies_come_out_in_seq_order_up_to_the_commit():
    pending = Pending()
    for seq in range(1, 11):
        pending.append(reply(seq, f"new{seq}"))
    for seq in (7, 2, 9, 2):  # retries of requests still waiting: out of order
        pending.append(reply(seq, f"retry{seq}"))
    assert len(pending) == 14
    first = [(r.seq, r.item["tag"]) for r in pending.due(5)]
    assert first == [(1, "new1"), (2, "new2"), (2, "retry2"), (2, "retry2"), (3, "new3"),
                     (4, "new4"), (5, "new5")]
    pending.append(reply(11, "new11"))
    rest = [r.seq for r in pending.due(100)]
    assert rest == [6, 7, 7, 8, 9, 9, 10, 11]
    assert len(pending) == 0 and list(pending.due(10**9)) == []


def test_any_arrival_order_is_released_sorted_and_nothing_is_lost():
    rng = random.Random(7)
    pending = Pending()
    seqs = [rng.randrange(1, 500) for _ in range(2000)]
    for i, seq in enumerate(seqs):
        pending.append(reply(seq, str(i)))
    out: list[int] = []
    for commit in range(0, 520, 37):
        out.extend(r.seq for r in pending.due(commit))
    assert out == sorted(seqs)


def test_clear_forgets_everything():
    pending = Pending()
    pending.append(reply(5, "a"))
    pending.append(reply(3, "b"))
    pending.clear()
    assert len(pending) == 0 and list(pending.due(10)) == []
