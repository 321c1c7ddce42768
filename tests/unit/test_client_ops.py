"""The client library refuses, before sending, an op the wire would not carry as it is."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ftds import local
from ftds.client import RETRY_BACKOFF, Client, Outstanding, retry_due
from ftds.config import load_config


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels - 1):
        value = [value]
    return value


@pytest.mark.parametrize("value, why", [
    (float("nan"), "finite"),  # orjson writes NaN and infinities as null: a put of null
    ([1, float("inf")], "finite"),
    ({1: "a"}, "keys must be strings"),
    ({"a", "b"}, "set"),  # orjson cannot encode it: the turn's whole frame was lost
    (2**64, "64 bits"),
    (_deep(300), "nested"),
])
def test_an_op_the_wire_cannot_carry_as_it_is_is_refused_before_sending(tmp_path, value, why):
    config = load_config(local.write_cluster(tmp_path, 3, base=44300))

    async def attempt() -> Client:
        client = Client(config, config.read_key(), "C1", trace=False)
        good = client.session("C1.ok").start({"op": "put", "key": "x", "value": 1})
        with pytest.raises(ValueError, match=why):
            client.session("C1").start({"op": "put", "key": "x", "value": value})
        assert not good.future.done()
        return client

    client = asyncio.run(attempt())
    assert [o[0] for o in client.outstanding] == ["C1.ok"]  # the refused one holds no number
    assert client.session("C1").request_num == 0


def test_a_hostile_op_the_replicas_must_refuse_can_still_be_sent(tmp_path):
    """Refused by the replicas, not by the library: the hostile workload sends these."""
    config = load_config(local.write_cluster(tmp_path, 3, base=44300))

    async def attempt() -> None:
        client = Client(config, config.read_key(), "C1", trace=False)
        session = client.session("C1.hostile")
        for op in ({"op": "incr", "key": "n", "delta": 2**63 - 1},
                   {"op": "put", "key": "x", "value": _deep(47)},
                   {"op": "put", "key": "k" * 300, "value": 1},
                   {"op": "get", "key": "x", "extra": _deep(47)},
                   {"op": "frobnicate", "key": "x"}):
            session.start(op)

    asyncio.run(attempt())


def test_a_request_without_a_reply_is_resent_less_and_less_often():
    """A fixed pace made 100,000 requests out a retry storm: all sent again every second
    while the replicas were merely slow."""
    out = Outstanding("C1", 1, {"op": "get", "key": "x"}, None, sent_at=100.0)  # type: ignore
    waits = []
    for _ in range(6):
        wait = next(w / 10 for w in range(1, 200) if retry_due(out, out.sent_at + w / 10, 1.0))
        waits.append(wait)
        out.sent_at += wait
        out.timeouts += 1
    assert waits == [1.0, 2.0, 4.0, RETRY_BACKOFF, RETRY_BACKOFF, RETRY_BACKOFF]
