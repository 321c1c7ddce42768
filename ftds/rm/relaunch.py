"""When and how often the RM relaunches a missing replica: backoff, jitter and a budget.

Like Pacemaker's migration-threshold with failure-timeout: at most ``restart_budget`` relaunches
of one replica within ``restart_window`` seconds; past that the RM stops trying and says so in
its log and in ``ftds status`` until an operator resets it (``ftds ctl reset-budget S2``) or the
window has passed. Attempts that could not reach the host (down, partitioned) do not count.
Attempts run as tasks, never on the RM's decision path.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import ClusterConfig
from .launcher import Launcher, LaunchError

log = logging.getLogger("ftds.rm")


@dataclass
class RelaunchState:
    attempts: collections.deque[float] = field(default_factory=collections.deque)
    backoff: float = 0.0
    next_at: float = 0.0  # monotonic time of the next attempt allowed
    waiting_until: float = 0.0  # an attempt was made: the replica should appear by then
    in_flight: bool = False
    back_meanwhile: bool = False  # it was present again while the attempt ran
    failures: int = 0
    # An attempt that ran but did not bring the replica back: a process may be there, hung.
    ran_without_effect: bool = False
    exhausted: bool = False
    last_result: str = ""
    total: int = 0


class Relauncher:
    def __init__(self, config: ClusterConfig, launcher: Launcher,
                 on_issued: Callable[[str, float], None]) -> None:
        self.config = config
        self.launcher = launcher
        self.on_issued = on_issued
        self.states: dict[str, RelaunchState] = collections.defaultdict(RelaunchState)
        self._tasks: set[asyncio.Task[None]] = set()

    def budget_left(self, replica: str) -> int:
        state = self.states[replica]
        self._forget_old(replica, state)
        return max(0, self.config.tunables.restart_budget - len(state.attempts))

    def exhausted(self, replica: str) -> bool:
        """Whether the RM stopped relaunching ``replica``: until an operator resets the budget
        or the window has passed (then it says so, and relaunches again when needed)."""
        state = self.states.get(replica)
        if state is None or not state.exhausted:
            return False
        self._forget_old(replica, state)
        return state.exhausted

    def _forget_old(self, replica: str, state: RelaunchState) -> None:
        horizon = time.monotonic() - self.config.tunables.restart_window
        while state.attempts and state.attempts[0] < horizon:
            state.attempts.popleft()
        tun = self.config.tunables
        if state.exhausted and len(state.attempts) < tun.restart_budget:
            state.exhausted = False
            state.last_result = f"restart budget restored ({tun.restart_window:g}s passed)"
            log.info("RM: %s: %s", replica, state.last_result, extra={"kind": "decision"})

    def reset(self, replica: str) -> None:
        self.states[replica] = RelaunchState()
        log.info("RM: restart budget of %s reset", replica, extra={"kind": "decision"})

    def present(self, replica: str) -> None:
        """The replica is back: the attempt (if any) worked."""
        state = self.states[replica]
        if state.in_flight:
            state.back_meanwhile = True  # its attempt need not be waited for
        if state.waiting_until or state.failures:
            state.backoff = 0.0
            state.failures = 0
            state.waiting_until = 0.0
            state.ran_without_effect = False
            state.last_result = f"up again ({state.last_result})" if state.last_result else "up"

    def tick(self, absent: list[str]) -> None:
        now = time.monotonic()
        tun = self.config.tunables
        for replica in absent:
            state = self.states[replica]
            if state.in_flight:
                continue
            if state.waiting_until:
                if now < state.waiting_until:
                    continue
                state.waiting_until = 0.0
                state.failures += 1
                state.ran_without_effect = True
                state.last_result = (f"attempt {state.total} did not bring {replica} back "
                                     f"within {tun.relaunch_timeout:g}s")
                log.warning("RM: %s", state.last_result, extra={"kind": "decision"})
                state.backoff = min(max(state.backoff * 2, tun.relaunch_backoff),
                                    tun.relaunch_backoff_max)
                state.next_at = now + state.backoff * random.uniform(0.8, 1.2)
            if now < state.next_at:
                continue
            self._forget_old(replica, state)
            if len(state.attempts) >= tun.restart_budget:
                if not state.exhausted:
                    state.exhausted = True
                    state.last_result = (f"restart budget exhausted ({len(state.attempts)} "
                                         f"relaunches in {tun.restart_window:g}s): not "
                                         f"relaunching; reset with 'ftds ctl reset-budget "
                                         f"{replica}'")
                    log.critical("RM: %s %s", replica, state.last_result,
                                 extra={"kind": "decision"})
                continue
            state.exhausted = False
            # Restart only when a start ran and changed nothing: after a host outage, a plain
            # start leaves alone the replica the host just started at boot.
            restart = state.ran_without_effect
            state.attempts.append(now)
            state.total += 1
            state.in_flight = True
            state.back_meanwhile = False
            self.on_issued(replica, time.time())
            task = asyncio.get_running_loop().create_task(self._attempt(replica, restart))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _attempt(self, replica: str, restart: bool) -> None:
        state = self.states[replica]
        spec = self.config.replica(replica)
        verb = "restart" if restart else "start"
        log.info("RM: relaunching %s (%s via %s, attempt %d, %d left in budget)", replica, verb,
                 self.launcher.kind, state.total, self.budget_left(replica),
                 extra={"kind": "decision"})
        tun = self.config.tunables
        try:
            result = await self.launcher.launch(spec, restart)
        except Exception as exc:  # any failure only delays the next attempt
            detail = str(exc) if isinstance(exc, LaunchError) else \
                f"{exc.__class__.__name__}: {exc}"
            state.last_result = f"relaunch failed: {detail}"
            log.error("RM: %s: %s", replica, state.last_result)
            state.failures += 1
            if isinstance(exc, LaunchError) and exc.unreachable and state.attempts:
                # The host is down or cut off: that says nothing about the replica, so the
                # attempt does not count against its budget (backoff still applies).
                state.attempts.pop()
            state.backoff = min(max(state.backoff * 2, tun.relaunch_backoff),
                                tun.relaunch_backoff_max)
            state.next_at = time.monotonic() + state.backoff * random.uniform(0.8, 1.2)
        else:
            log.info("RM: %s: %s", replica, result, extra={"kind": "decision"})
            state.last_result = result
            if not state.back_meanwhile:
                state.waiting_until = time.monotonic() + tun.relaunch_timeout
        finally:
            state.in_flight = False

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
