"""The simulated loop's own promises, checked directly."""

from __future__ import annotations

import asyncio
import gc

from .loop import Node, SimLoop


def test_a_killed_process_s_task_collected_mid_run_is_no_error_of_a_live_one():
    """Found by the simulator (seed 3558 of a hunt): the garbage collector destroyed a killed
    replica's pending task while a live process ran, and asyncio's report was charged to the
    live one (its owner was looked up through a weak reference already cleared)."""
    loop = SimLoop()
    asyncio.set_event_loop(loop)
    try:
        dead, live = Node("S1", "h1", 1), Node("RM", "m", 2)

        async def forever() -> None:
            await loop.create_future()  # a future nothing will ever resolve

        dead.ctx.run(loop.create_task, forever())
        loop.run_until_complete(asyncio.sleep(0))  # it starts and waits
        dead.alive = False  # kill -9: its handles never run again

        async def live_work() -> None:
            await asyncio.sleep(0.01)
            gc.collect()  # the dead task (and its future) are garbage now
            await asyncio.sleep(0.01)

        loop.run_until_complete(live.ctx.run(loop.create_task, live_work()))
        assert loop.errors == []

        # A live process's task destroyed while pending is still reported, as its own.
        live.ctx.run(loop.create_task, forever())
        loop.run_until_complete(asyncio.sleep(0))
        gc.collect()
        assert [e["node"] for e in loop.errors] == ["RM"], loop.errors
    finally:
        asyncio.set_event_loop(None)
        loop.close()
