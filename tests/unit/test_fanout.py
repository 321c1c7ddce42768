"""The orderer's subscribers (ftds/replica/fanout.py): one subscription per member, the stream
only to synced members, and a lost connection forgets only its own subscription."""

from __future__ import annotations

from ftds.replica.fanout import Fanout, Subscriber
from ftds.wire import frame


class Link:
    """A member's connection: what was written to it, and its close, delivered later as the
    event loop does (``lost``)."""

    def __init__(self) -> None:
        self.on_close = None
        self.frames: list[bytes] = []
        self.closed = False

    def send_frame(self, data: bytes) -> None:
        self.frames.append(data)

    def close(self) -> None:
        self.closed = True

    def lost(self) -> None:
        callback, self.on_close = self.on_close, None
        if callback:
            callback(self)


def sub(member: str, link: Link, synced: bool = True) -> Subscriber:
    return Subscriber(member, link, seq=0, trusted=True, synced=synced)  # type: ignore[arg-type]


def test_the_stream_goes_only_to_synced_members_each_body_framed_with_the_key():
    fanout = Fanout("S1", b"k" * 32)
    s2, s3 = Link(), Link()
    fanout.admit(sub("S2", s2))
    fanout.admit(sub("S3", s3, synced=False))  # its catch-up is still on the way
    assert fanout.broadcast([b"a", b"b"]) == ["S2"]
    assert s2.frames == [frame(b"a", b"k" * 32), frame(b"b", b"k" * 32)]
    assert s3.frames == []


def test_a_member_subscribing_again_replaces_and_closes_its_old_stream():
    fanout = Fanout("S1", b"")
    old, new = Link(), Link()
    fanout.admit(sub("S2", old))
    fanout.admit(current := sub("S2", new))
    assert old.closed and not new.closed
    old.lost()  # the old connection's close arrives after the new subscription
    assert fanout.get("S2") is current and fanout.current(current)
    new.lost()
    assert "S2" not in fanout and len(fanout) == 0


def test_a_new_epoch_closes_every_stream_and_late_closes_touch_nothing_new():
    fanout = Fanout("S1", b"")
    s2, s3 = Link(), Link()
    fanout.admit(sub("S2", s2))
    fanout.admit(sub("S3", s3))
    fanout.close_all()
    assert s2.closed and s3.closed and len(fanout) == 0
    again = Link()
    fanout.admit(fresh := sub("S2", again))  # subscribed in the new epoch
    s2.lost()
    assert fanout.get("S2") is fresh
