"""The RM's relaunch policy: backoff, escalation to restart, budget, unreachable hosts."""

from __future__ import annotations

import asyncio
import time

from ftds import local
from ftds.config import load_config
from ftds.rm.launcher import LaunchError
from ftds.rm.relaunch import Relauncher


class FakeLauncher:
    kind = "fake"

    def __init__(self, outcomes):
        self.outcomes = list(outcomes)  # "ok" | "unreachable" | "error"
        self.calls = []

    async def launch(self, spec, restart):
        self.calls.append("restart" if restart else "start")
        outcome = self.outcomes.pop(0) if self.outcomes else "ok"
        if outcome == "unreachable":
            raise LaunchError("host down", unreachable=True)
        if outcome == "error":
            raise LaunchError("exit 1")
        return "done"


def relauncher(tmp_path, outcomes, **tunables):
    path = local.write_cluster(tmp_path, 3, base=41000, tunables={
        "relaunch_timeout": 0.1, "relaunch_backoff": 0.01, "relaunch_backoff_max": 0.02,
        **tunables})
    issued = []
    launcher = FakeLauncher(outcomes)
    return Relauncher(load_config(path), launcher, lambda r, at: issued.append(r)), launcher


async def drive(r, absent, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        r.tick(absent)
        await asyncio.sleep(0.005)


def test_start_first_then_restart_only_after_a_start_that_changed_nothing(tmp_path):
    r, launcher = relauncher(tmp_path, ["ok", "ok", "ok"], restart_budget=3)
    asyncio.run(drive(r, ["S2"], 0.8))
    assert launcher.calls[0] == "start"
    assert launcher.calls[1:] == ["restart"] * (len(launcher.calls) - 1)
    assert len(launcher.calls) == 3
    state = r.states["S2"]
    assert state.exhausted and "restart budget exhausted" in state.last_result
    assert r.budget_left("S2") == 0


def test_an_unreachable_host_neither_escalates_nor_spends_the_budget(tmp_path):
    r, launcher = relauncher(tmp_path, ["unreachable"] * 6 + ["ok"], restart_budget=3)
    asyncio.run(drive(r, ["S3"], 0.4))
    assert launcher.calls[:7] == ["start"] * 7  # the host came back: start, never restart
    assert r.budget_left("S3") <= 2  # only attempts that reached the host count


def test_presence_resets_backoff_and_reset_restores_the_budget(tmp_path):
    r, _ = relauncher(tmp_path, ["error", "ok"], restart_budget=5)
    asyncio.run(drive(r, ["S1"], 0.05))
    r.present("S1")
    assert r.states["S1"].failures == 0 and not r.states["S1"].ran_without_effect
    used = 5 - r.budget_left("S1")
    assert used >= 1
    r.reset("S1")
    assert r.budget_left("S1") == 5


def test_an_exhausted_budget_is_restored_once_its_window_has_passed(tmp_path):
    """The budget is restored when the window has passed, as documented; the flag that makes
    `ftds status` DEGRADED stayed set while the replica was back and well, until an operator
    reset it (a burst of load that made the LFDs lose replicas left the cluster DEGRADED)."""
    r, launcher = relauncher(tmp_path, ["ok"] * 3, restart_budget=2, restart_window=1)
    asyncio.run(drive(r, ["S2"], 0.5))
    assert len(launcher.calls) == 2 and r.exhausted("S2")
    r.present("S2")  # back (a slow replica the LFD took for hung, say)
    assert r.exhausted("S2")  # within the window: still exhausted
    r.states["S2"].attempts = type(r.states["S2"].attempts)(
        at - 1.0 for at in r.states["S2"].attempts)  # the window has passed
    assert not r.exhausted("S2") and r.budget_left("S2") == 2
    assert "restored" in r.states["S2"].last_result


def test_a_replica_back_while_its_start_ran_is_relaunched_at_once_when_lost_again(tmp_path):
    """Simulator seed 37896: S2 came back (a pause) while its start ran ("already running"); the
    RM then waited the whole relaunch_timeout for it to appear, so when S2 died 0.6 s later it
    stayed down for 4.4 s more. A replica present before its attempt ended needs no wait."""
    async def scenario() -> list[str]:
        r, launcher = relauncher(tmp_path, ["ok", "ok"], relaunch_timeout=30)
        gate = asyncio.Event()
        plain = launcher.launch

        async def slow(spec, restart):
            await gate.wait()
            return await plain(spec, restart)

        launcher.launch = slow
        r.tick(["S2"])  # lost: start issued
        await asyncio.sleep(0)
        r.present("S2")  # back (it was paused) while the start runs
        gate.set()
        await asyncio.sleep(0.01)  # the start ends: "already running"
        await drive(r, ["S2"], 0.2)  # lost again: killed
        return launcher.calls

    assert asyncio.run(scenario()) == ["start", "start"]
