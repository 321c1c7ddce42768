import hmac
import struct

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ftds.wire import MAC_LEN, FrameDecoder, WireError, encode, envelope, frame

KEY = b"k" * 32


def msg(i: int) -> dict:
    request = {"c": "C1", "r": i, "op": {"op": "get", "key": "x"}}
    return envelope("req", "C1", 3, {"reqs": [request]})


def test_roundtrip_one_frame():
    dec = FrameDecoder(KEY, 1 << 20)
    assert dec.feed(encode(msg(1), KEY)) == [msg(1)]
    assert dec.buffered == 0


def test_merged_reads_give_every_frame_in_order():
    data = b"".join(encode(msg(i), KEY) for i in range(1, 6))
    assert FrameDecoder(KEY, 1 << 20).feed(data) == [msg(i) for i in range(1, 6)]


def test_split_reads_byte_by_byte():
    data = encode(msg(1), KEY) + encode(msg(2), KEY)
    dec = FrameDecoder(KEY, 1 << 20)
    out = []
    for i in range(len(data)):
        out += dec.feed(data[i:i + 1])
    assert out == [msg(1), msg(2)]
    assert dec.buffered == 0


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=30))
def test_any_split_of_a_stream_decodes_the_same(cuts):
    data = b"".join(encode(msg(i), KEY) for i in range(1, 8))
    dec = FrameDecoder(KEY, 1 << 20)
    out, pos = [], 0
    for cut in cuts:
        out += dec.feed(data[pos:pos + cut])
        pos += cut
    out += dec.feed(data[pos:])
    assert out == [msg(i) for i in range(1, 8)]


def test_oversize_frame_is_refused_before_reading_it():
    dec = FrameDecoder(KEY, 1024)
    with pytest.raises(WireError) as err:
        dec.feed(struct.pack(">I", 10_000_000))
    assert err.value.code == "oversize"


def test_wrong_key_fails_authentication():
    with pytest.raises(WireError) as err:
        FrameDecoder(KEY, 1 << 20).feed(encode(msg(1), b"x" * 32))
    assert err.value.code == "auth"


def test_tampered_body_fails_authentication():
    data = bytearray(encode(msg(1), KEY))
    data[-3] ^= 0x01
    with pytest.raises(WireError) as err:
        FrameDecoder(KEY, 1 << 20).feed(bytes(data))
    assert err.value.code == "auth"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json at all", "malformed"),
        (b"[1, 2, 3]", "malformed"),
        (orjson.dumps({"v": 1, "from": "x"}), "malformed"),  # no type
        (orjson.dumps({"v": 99, "t": "req"}), "version"),
        (orjson.dumps({"v": 1, "t": "req", "e": -1}), "malformed"),
    ],
)
def test_authenticated_but_malformed_bodies(body, code):
    with pytest.raises(WireError) as err:
        FrameDecoder(KEY, 1 << 20).feed(frame(body, KEY))
    assert err.value.code == code


def test_too_short_frame():
    with pytest.raises(WireError) as err:
        FrameDecoder(KEY, 1 << 20).feed(struct.pack(">I", 3) + b"abc")
    assert err.value.code == "malformed"


def test_frame_layout_is_length_mac_body():
    body = orjson.dumps(msg(7))
    data = frame(body, KEY)
    (length,) = struct.unpack(">I", data[:4])
    assert length == MAC_LEN + len(body)
    assert data[4:4 + MAC_LEN] == hmac.digest(KEY, body, "sha256")
    assert data[4 + MAC_LEN:] == body
