"""The run loop every daemon shares: uvloop, signals, systemd notify and watchdog, clean exit.

A daemon is an object with ``async start()``, ``async stop()`` and ``reload()``. SIGTERM/SIGINT
stop it gracefully, SIGHUP reloads its configuration; READY=1 goes to systemd once ``start``
returned, and WATCHDOG=1 is sent from the loop itself so a stuck loop gets the unit restarted.
STATUS= follows the daemon's ``status_line()``: at once when the daemon calls its
``status_changed()`` (a role or view change), and otherwise at most once a STATUS_REFRESH
(what moves all the time, an applied seq), in both cases only when the text changed.
A daemon task that dies (see ``supervise``) stops the daemon with exit status 70: fail-stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
from collections.abc import Callable
from typing import Any, Protocol

from . import supervise
from .sdnotify import Notifier, nobody_listens, watchdog_interval

log = logging.getLogger("ftds.runloop")


STATUS_REFRESH = 1.0  # seconds between two looks at a daemon's status line


class Daemon(Protocol):
    name: str
    status_changed: Callable[[], None]  # set by serve() when systemd listens

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def reload(self) -> None: ...
    def status_line(self) -> str: ...


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def _status_refresh(changed: Callable[[], None]) -> None:
    while True:
        await asyncio.sleep(STATUS_REFRESH)
        changed()


EXIT_TASK_DIED = 70  # EX_SOFTWARE


def _a_defect(message: str, exc: BaseException | None) -> bool:
    """Whether an error the loop reports stops the daemon: an exception out of a callback (a
    timer, a protocol's callback) or out of a task nobody awaited is a defect, and the daemon's
    state after it unknown. A transport's OSError (a peer's reset, accept() out of file
    descriptors under a flood) is the network's doing, and the transport handles it."""
    if exc is None or isinstance(exc, asyncio.CancelledError):
        return False
    return message.startswith("Exception in callback") or not isinstance(exc, OSError)


async def serve(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    notifier = Notifier()
    stop = asyncio.Event()
    fatal: list[str] = []

    def on_fatal(name: str, exc: BaseException) -> None:
        fatal.append(name)
        stop.set()

    supervise.on_fatal = on_fatal

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        loop.default_exception_handler(context)  # logged with its traceback, as ever
        exc = context.get("exception")
        if _a_defect(context.get("message", ""), exc):
            assert exc is not None
            on_fatal("loop callback", exc)

    loop.set_exception_handler(on_loop_error)

    def on_reload() -> None:
        notifier.reloading()
        try:
            daemon.reload()
        except Exception:  # a reload must never take the daemon down
            log.exception("%s: reload failed; keeping the running configuration", daemon.name)
        notifier.ready(daemon.status_line())

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_reload)
    await daemon.start()
    notifier.ready(daemon.status_line())
    tasks = []
    interval = watchdog_interval()
    if interval:
        tasks.append(asyncio.create_task(_watchdog(notifier, interval)))
    if notifier.enabled:
        def status_changed() -> None:
            notifier.status(daemon.status_line())

        daemon.status_changed = status_changed
        tasks.append(asyncio.create_task(_status_refresh(status_changed)))
    await stop.wait()
    if fatal:
        log.critical("%s: stopping: task %s died", daemon.name, fatal[0])
    else:
        log.info("%s: stopping", daemon.name)
    if notifier.enabled:
        daemon.status_changed = nobody_listens  # "stopping" is the last word
    notifier.stopping(f"stopping: task {fatal[0]} died" if fatal else "stopping")
    for task in tasks:
        task.cancel()
    with contextlib.suppress(Exception):
        # A daemon that failed stops fast: the detectors must see it go, not a slow goodbye.
        await asyncio.wait_for(daemon.stop(), 2 if fatal else 10)
    return EXIT_TASK_DIED if fatal else 0


def tune_gc() -> None:
    """Collect cycles rarely: replicas hold many long-lived small objects (log, reply cache),
    and the default thresholds make full collections a large share of a busy replica's time."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def raise_fd_limit(want: int = 65536) -> None:
    """The soft open-file limit up to ``want`` (as the units' LimitNOFILE): a shell's soft
    limit is often 1024, below one port's connection cap, and EMFILE would then refuse
    clients and daemons alike instead of the gates refusing strangers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:  # a unit's seccomp filter: LimitNOFILE rules
            log.debug("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)


def run(daemon: Daemon) -> int:
    tune_gc()
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; stdlib loop still works
        return asyncio.run(serve(daemon))
    return uvloop.run(serve(daemon))
