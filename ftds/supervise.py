"""Fail-stop for daemon tasks: a task that dies of an unexpected exception ends the process.

A daemon whose applier, ticker or heartbeat task died would otherwise keep its sockets open and
keep answering heartbeats (and the systemd watchdog) while doing nothing: fail-silent. Every
long-lived task is started with :func:`spawn`; when one ends with an exception, the run loop is
told (``serve`` then exits non-zero, so the LFD sees a crash and the RM or systemd acts).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("ftds.supervise")

# Set by the run loop; outside a daemon (tests driving objects in-process) a death is logged
# and recorded in ``died`` for the test to see.
on_fatal: Callable[[str, BaseException], None] | None = None
died: list[tuple[str, BaseException]] = []


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Start a long-lived task whose unexpected death stops the daemon."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_check)
    return task


def _check(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is None:
        return
    name = task.get_name()
    log.critical("task %s died: %s: %s; exiting so the fault detectors see it", name,
                 exc.__class__.__name__, exc, exc_info=exc)
    fatal(name, exc)


def fatal(name: str, exc: BaseException) -> None:
    """Stop the daemon: ``name`` (a task, or a step it cannot go on without) failed."""
    died.append((name, exc))
    if on_fatal is not None:
        on_fatal(name, exc)
