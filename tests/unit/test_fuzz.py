"""Hostile input, generated: the frame parser, the codec, the message handlers, the config loader.

Whatever arrives, the outcome is a clean refusal (WireError / ConfigError), never another
exception, never a hang, and never a change to a replica's state.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ftds import local, supervise
from ftds.config import ConfigError, load_config, parse_config
from ftds.replica.server import ReplicaDaemon
from ftds.wire import Conn, FrameDecoder, WireError, encode, envelope, frame

KEY = b"fuzz-key-0123456789abcdef"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)


@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), max_size=10))
def test_random_bytes_never_escape_as_anything_but_wire_errors(data, cuts):
    decoder = FrameDecoder(KEY, 4096)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            for msg in decoder.feed(data[pos:pos + cut]):
                assert isinstance(msg, dict)
            pos += cut
    except WireError as exc:
        assert exc.code in ("oversize", "malformed", "auth", "version")
    else:
        assert decoder.buffered < 4 + 4096  # whatever is held waits for a complete frame


@given(json_values)
def test_authenticated_random_bodies_are_objects_or_refused(value):
    try:
        messages = FrameDecoder(KEY, 1 << 20).feed(frame(orjson.dumps(value), KEY))
    except WireError as exc:
        assert exc.code in ("malformed", "version")
    else:
        assert messages == [value]
        assert value["v"] == 1 and isinstance(value["t"], str)


class FakeTransport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> None:
        return None


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fuzz")
    path = local.write_cluster(run_dir, 3, "passive", base=39000)
    (run_dir / "cluster.key").write_bytes(KEY)
    return path


messages = st.fixed_dictionaries(
    {"v": st.just(1), "t": st.sampled_from(["hello", "req", "hb", "view", "lease", "ack",
                                             "fetched", "status_req", "checkpoint_now",
                                             "entries", "nonsense"]),
     "e": st.integers(0, 5)},
    optional={"role": st.sampled_from(["client", "lfd", "rm", "admin", "member", "x"]),
              "client": json_values, "id": json_values, "reqs": json_values,
              "n": json_values, "view": json_values, "seq": json_values,
              "last_epoch": json_values, "duration": json_values, "entries": json_values})


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(messages, min_size=1, max_size=6), st.booleans())
def test_handlers_refuse_cleanly_and_leave_state_alone(cluster_file, sequence, control):
    async def scenario() -> None:
        daemon = ReplicaDaemon(str(cluster_file), "S1")
        replica = daemon.replica
        before = (replica.sm.seq, replica.sm.digest(), replica.view)
        handler = daemon._on_control_message if control else daemon._on_client_message
        conn = Conn(replica.key, 1 << 20, "S1", lambda: replica.epoch, handler)
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        data = b"".join(encode(m, KEY) for m in sequence)
        supervise.died.clear()
        conn.data_received(data)  # must not raise, nor stop the daemon (a handler's defect)
        assert supervise.died == [], f"hostile input stopped the replica: {supervise.died}"
        # Run what the handlers queued for the applier, as its task would.
        for handle, c, msg in replica._inbox:
            with contextlib.suppress(WireError):  # refused: the applier closes that conn
                handle(c, msg)
        replica._inbox.clear()
        after = (replica.sm.seq, replica.sm.digest())
        assert after == before[:2], "hostile input changed the state machine"
        for task in replica._tasks:
            task.cancel()

    asyncio.run(scenario())


@given(json_values)
def test_config_loader_refuses_garbage_with_config_errors_only(data):
    try:
        parse_config(data)
    except ConfigError as exc:
        assert str(exc).startswith("cluster.yml: ")


@given(st.text(max_size=300))
def test_config_file_with_random_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "cluster.yml"
    path.write_text(text)
    try:
        config = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(str(path)) or str(exc).startswith("cluster.yml")
    else:
        assert config.replicas  # only a complete, valid file loads


def test_valid_config_mutations_name_the_field(tmp_path):
    path = local.write_cluster(tmp_path, 3, "active", base=39500)
    good = yaml.safe_load(path.read_text())
    for field, bad in (("tunables", {"lease": "soon"}), ("replicas", [{"id": "S1"}]),
                       ("gfd", {"host": "h", "port": 0})):
        data = {**good, field: bad}
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        assert f"{field}" in str(err.value)


def test_envelope_roundtrip_through_a_conn():
    async def scenario() -> list[dict]:
        got: list[dict] = []
        conn = Conn(KEY, 1 << 20, "x", on_message=lambda c, m: got.append(m))
        conn.connection_made(FakeTransport())  # type: ignore[arg-type]
        conn.data_received(encode(envelope("hb", "LFD1", 2, {"n": 3}), KEY))
        return got

    assert asyncio.run(scenario()) == [envelope("hb", "LFD1", 2, {"n": 3})]
