"""Strangers on the managers' ports: the GFD's, the RM's and the RM's metrics endpoint.

The embedded cluster runs (LFDs, GFD, RM); another host of the loopback network (127.0.0.2)
opens more connections to each port than it may hold and says nothing on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from helpers import run

from ftds.rmclient import rm_request

PER_SOURCE = 20
EXTRA = 10
HELLO = 1.0


async def stranger(port: int) -> float:
    """Connect from 127.0.0.2, say nothing; seconds until the daemon closed it."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=("127.0.0.2", 0))
    try:
        with contextlib.suppress(ConnectionResetError):
            while await reader.read(4096):
                pass
        return time.monotonic() - start
    finally:
        writer.close()


@pytest.mark.parametrize("tls", [False, True], ids=["cluster-key", "tls"])
def test_managers_refuse_strangers_past_the_cap_and_close_the_rest(make_managed, tls):
    """Under TLS a stranger is counted and timed from its TCP connect: one that never makes
    its handshake is held to the same caps and deadline as one that never says hello."""
    cluster = make_managed(tunables={"hello_timeout": HELLO,
                                     "max_conns_per_source": PER_SOURCE}, tls=tls)
    start = cluster.up()
    pids = {name: cluster.pid(name) for name in ("GFD", "RM")}
    config = cluster.config
    ports = {"GFD": config.gfd.port, "RM": config.rm.port,
             "RM metrics": config.rm_metrics_port}

    async def main() -> tuple[dict[str, list[float]], dict]:
        tasks = {name: [asyncio.create_task(stranger(port))
                        for _ in range(PER_SOURCE + EXTRA)]
                 for name, port in ports.items()}
        await asyncio.sleep(0.3)
        # Held strangers block no one else: an operator's request is answered meanwhile.
        status = await rm_request(config, cluster.key, "status_req", timeout=5)
        async with asyncio.timeout(HELLO + 20):
            held = {name: sorted(await asyncio.gather(*ts)) for name, ts in tasks.items()}
        return held, status

    held, status = run(main())
    assert status["primary"] == start["primary"]
    for name, times in held.items():
        refused, closed = times[:EXTRA], times[EXTRA:]
        # Refused at once: before any admitted one could have been closed for its silence.
        assert max(refused) < HELLO, f"{name}: refusals were not at once: {refused}"
        assert min(closed) >= HELLO, f"{name}: closed before hello_timeout: {closed[:3]}"
    after = cluster.wait_healthy(10)
    assert after["epoch"] == start["epoch"] and after["primary"] == start["primary"]
    assert not cluster.incidents(), "strangers must not look like a fault"
    assert {name: cluster.pid(name) for name in pids} == pids
    logs = {name: (cluster.dir / "logs" / f"{name}.log").read_text() for name in ("GFD", "RM")}
    for name, log in (("GFD", logs["GFD"]), ("RM", logs["RM"]), ("RM metrics", logs["RM"])):
        bite = f"{name} port 127.0.0.1:{ports[name]}: refusing 127.0.0.2:"
        assert log.count(bite) == 1, f"{name}: not one line when the cap bit"
        assert "max_conns_per_source" in log
    silent = "no TLS handshake" if tls else "no hello"
    assert f"{silent} within 1 s (tunables.hello_timeout)" in logs["GFD"]
    assert "no request within 1 s (tunables.hello_timeout)" in logs["RM"]
