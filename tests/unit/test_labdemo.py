"""The lab demo's pure parts (scripts/demo: Milestone 5 on the lab), without a lab.

Victims chosen from the RM's status, the faults recorded as the chaos tools' FaultEvents, this
demo's incidents picked by time, the RM/GFD journal lines picked by time, the verdict; one fault
run against a scripted RM and a fake lab (what is done where, in which order); and the timeline
drawn from a small synthetic history.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ftds_tools import labdemo
from ftds_tools.chaos.history import parse
from ftds_tools.chaos.nemesis import LAB_KINDS, FaultEvent

T0 = 1_767_000_000.0  # a wall-clock time


def replica(ready: bool = True, inc: str | None = "a", present: bool = True,
            role: str = "backup") -> dict[str, Any]:
    return {"present": present, "ready": ready, "incarnation": inc, "role": role, "seq": 10,
            "checkpoint_count": 1, "restarts": 0, "budget_exhausted": False, "budget_left": 5,
            "decision": "", "relaunch": "", "held": None}


def status(primary: str | None = "S1", epoch: int = 1, *, ready: tuple[str, ...] = ("S1", "S2",
           "S3"), inc: dict[str, str] | None = None, pending: str | None = None,
           stable: bool = True, mode: str = "passive") -> dict[str, Any]:
    inc = inc or {"S1": "s1a", "S2": "s2a", "S3": "s3a"}
    return {
        "mode": mode, "epoch": epoch, "view_version": 1, "primary": primary,
        "members": list(ready), "membership": list(ready), "membership_view": 4,
        "gfd_stable": stable, "gfd_connected": True, "failover_pending": pending,
        "unavailable": None, "last_decision": "",
        "replicas": {r: replica(r in ready, inc.get(r), role="primary" if r == primary else
                                "backup") for r in ("S1", "S2", "S3")},
    }


# ------------------------------------------------------------------ health and victims ----
def test_is_healthy_needs_a_primary_a_stable_gfd_no_failover_and_every_replica_ready() -> None:
    assert labdemo.is_healthy(status())
    assert not labdemo.is_healthy(None)
    assert not labdemo.is_healthy(status(primary=None))
    assert not labdemo.is_healthy(status(ready=("S1", "S3")))
    assert not labdemo.is_healthy(status(pending="S1 lost"))
    assert not labdemo.is_healthy(status(stable=False))


def test_choose_victim_the_primary_or_the_first_ready_backup() -> None:
    assert labdemo.choose_victim(status("S2"), "primary") == ("S2", "primary")
    assert labdemo.choose_victim(status("S1"), "backup") == ("S2", "backup")
    assert labdemo.choose_victim(status("S2"), "backup") == ("S1", "backup")
    # S2 is not ready: the ready backup is chosen, never the primary
    assert labdemo.choose_victim(status("S1", ready=("S1", "S3")), "backup") == ("S3", "backup")


def test_choose_victim_refuses_without_a_primary_or_a_backup() -> None:
    with pytest.raises(ValueError, match="no primary"):
        labdemo.choose_victim(status(None), "primary")
    alone = status("S1")
    alone["replicas"] = {"S1": replica(role="primary")}
    with pytest.raises(ValueError, match="no backup"):
        labdemo.choose_victim(alone, "backup")
    with pytest.raises(ValueError, match="unknown victim"):
        labdemo.choose_victim(status(), "manager")


def test_steps_are_the_milestone_5_faults_of_the_lab_target() -> None:
    assert [s.kind for s in labdemo.STEPS] == ["systemctl_stop", "kill_primary", "power_cut"]
    assert [s.victim for s in labdemo.STEPS] == ["backup", "primary", "primary"]
    assert all(s.kind in LAB_KINDS for s in labdemo.STEPS)
    assert [s.power_on for s in labdemo.STEPS] == [False, False, True]


def test_took_over_only_for_another_primary_in_a_later_epoch() -> None:
    before = status("S1", 3)
    assert labdemo.took_over(status("S1", 3), before) is None
    assert labdemo.took_over(status(None, 4), before) is None
    assert labdemo.took_over(None, before) is None
    assert labdemo.took_over(status("S2", 3), before) is None  # no new epoch yet
    assert labdemo.took_over(status("S2", 4), before) == "S2"


def test_back_again_needs_the_victim_as_a_new_process_not_a_status_from_before_the_fault(
) -> None:
    before = status("S1")
    # Healthy but the same process: the RM has not even noticed the fault yet.
    assert not labdemo.back_again(status("S1"), before, "S2", seen_down=False)
    relaunched = status("S1", inc={"S1": "s1a", "S2": "s2b", "S3": "s3a"})
    assert labdemo.back_again(relaunched, before, "S2", seen_down=False)
    catching_up = status("S1", ready=("S1", "S3"),
                         inc={"S1": "s1a", "S2": "s2b", "S3": "s3a"})
    assert not labdemo.back_again(catching_up, before, "S2", seen_down=True)
    # No incarnations known: it must have been seen down since the fault.
    unknown = status("S1", inc={"S1": "", "S2": "", "S3": ""})
    for r in unknown["replicas"].values():
        r["incarnation"] = None
    assert not labdemo.back_again(unknown, unknown, "S2", seen_down=False)
    assert labdemo.back_again(unknown, unknown, "S2", seen_down=True)


def test_is_down() -> None:
    assert labdemo.is_down(status(ready=("S1", "S3")), "S2")
    assert not labdemo.is_down(status(), "S2")
    assert not labdemo.is_down(None, "S2")  # no answer from the RM says nothing


# ------------------------------------------------------------------------- the events ----
def test_make_event_records_the_fault_on_the_wall_clock() -> None:
    before, after = status("S1", 2), status("S2", 3)
    event = labdemo.make_event("kill_primary", "S1", "primary", T0, before, host="h1",
                               note="h1: kill", new_primary="S2", new_primary_at=T0 + 0.8,
                               recovered=T0 + 0.1, healthy=T0 + 4.25, after=after)
    assert isinstance(event, FaultEvent)
    assert (event.kind, event.victim, event.role) == ("kill_primary", "S1", "primary")
    assert (event.injected, event.recovered, event.healthy) == (T0, T0 + 0.1, T0 + 4.25)
    assert (event.epoch_before, event.epoch_after) == (2, 3)
    assert event.extra == {"host": "h1", "new_primary": "S2", "new_primary_s": 0.8,
                           "ready_s": 4.25}
    json.dumps(event.to_json())  # the report can hold it
    line = labdemo.fault_line(2, event)
    assert "new primary S2 after 0.8s" in line and "ready again after 4.2s" in line
    assert "epoch 2->3" in line and "S1 (primary) on h1" in line


def test_make_event_of_a_fault_that_did_not_heal() -> None:
    event = labdemo.make_event("systemctl_stop", "S2", "backup", T0, status(), host="h2",
                               recovered=T0 + 0.3)
    assert event.healthy is None and event.epoch_after == event.epoch_before
    assert "ready_s" not in event.extra and "new_primary" not in event.extra
    assert "NOT healthy again" in labdemo.fault_line(1, event)
    primary = labdemo.make_event("power_cut", "S1", "primary", T0, status(), host="h1")
    assert "no new primary seen" in labdemo.fault_line(3, primary)


# ---------------------------------------------------------------------- the incidents ----
def incident(id: int, replica: str, detected: float, closed: bool = True) -> dict[str, Any]:
    return {"id": id, "replica": replica, "cause": "LFD: connection lost", "was_primary": False,
            "confirmed_dead": True, "detected": detected, "removed": detected + 0.01,
            "new_primary": None, "new_primary_id": None, "relaunch_issued": detected + 0.05,
            "process_up": detected + 1.0, "ready": detected + 1.5 if closed else None,
            "closed": closed, "notes": [], "detect_to_removed_ms": 10.0,
            "detect_to_new_primary_ms": None, "detect_to_relaunch_ms": 50.0,
            "relaunch_to_up_ms": 950.0, "relaunch_to_ready_ms": 1450.0 if closed else None,
            "detect_to_ready_ms": 1500.0 if closed else None}


def test_demo_incidents_are_those_detected_since_the_demo_started() -> None:
    old = incident(7, "S2", T0 - 600)
    just_before = incident(8, "S1", T0 - 0.5)  # within the slack: clocks, the first fault
    ours = [incident(10, "S3", T0 + 30, closed=False), incident(9, "S2", T0 + 5)]
    picked = labdemo.demo_incidents([old, just_before, *ours], T0)
    assert [i["id"] for i in picked] == [8, 9, 10]
    assert labdemo.demo_incidents([old], T0) == []
    assert [i["id"] for i in labdemo.demo_incidents([just_before, *ours], T0, slack=0)] == \
        [9, 10]


def test_incident_for_a_fault_is_the_victims_first_one_after_it() -> None:
    incidents = [incident(1, "S2", T0 - 100), incident(2, "S1", T0 + 0.4),
                 incident(3, "S2", T0 + 0.3), incident(4, "S2", T0 + 9)]
    assert labdemo.incident_for(incidents, "S2", T0)["id"] == 3
    assert labdemo.incident_for(incidents, "S3", T0) is None
    line = labdemo.incident_line(incidents[2], T0)
    assert "#3" in line and "detected 0.30s after the fault" in line and "1450 ms" in line


def test_journal_lines_by_time_and_needle() -> None:
    def entry(at: float, message: Any) -> str:
        return json.dumps({"__REALTIME_TIMESTAMP": str(int(at * 1e6)), "MESSAGE": message})

    text = "\n".join([
        entry(T0 - 2, "RM: before the fault"),
        entry(T0 + 0.1, "GFD: 2 members: S1, S3"),
        entry(T0 + 0.2, "replica S2 said something else"),
        entry(T0 + 0.3, list(b"RM: S2 relaunched \xff")),  # not UTF-8: a list of bytes
        "not json",
        json.dumps({"MESSAGE": "RM: no timestamp"}),
        entry(T0 + 10, "RM: after the window"),
    ])
    lines = labdemo.journal_lines(text, T0, T0 + 5)
    assert lines == ["GFD: 2 members: S1, S3", "RM: S2 relaunched \ufffd"]


# ------------------------------------------------------------------------ the clients ----
def test_client_command_records_a_history_and_a_pid_file() -> None:
    command = labdemo.client_command("C2", "demo1-", rate=5, keys=3, directory="/tmp/d")
    first, _, rest = command.partition(" && exec ")
    assert first == "echo $$ > /tmp/d/C2.pid"
    argv = shlex.split(rest)
    assert argv[:2] == ["/opt/ftds/bin/ftds", "workload"]
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert opts["--history"] == "/tmp/d/C2.jsonl" and opts["--id"] == "C2"
    assert opts["--prefix"] == "demo1-" and opts["--rate"] == "5" and opts["--keys"] == "3"
    assert argv[-1] == "--json"


def test_signal_clients_uses_the_pid_files_of_live_workloads_only() -> None:
    script = labdemo.signal_clients("INT", "/tmp/d")
    assert "/tmp/d/*.pid" in script and 'kill -INT "$p"' in script
    assert "grep -qa workload" in script
    result = subprocess.run(["sh", "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_signal_clients_runs_without_pid_files(tmp_path: Path) -> None:
    # The glob matches nothing: the loop skips it and the script succeeds.
    result = subprocess.run(["sh", "-c", labdemo.signal_clients("INT", str(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_interesting_client_lines() -> None:
    assert labdemo.interesting_client_line("[t] C1: connection to S1 lost; reconnecting")
    assert labdemo.interesting_client_line("[t] C1: retrying request_num 12 (new view)")
    assert labdemo.interesting_client_line("[t] C1: no reply to request_num 12 after 1.0s; "
                                           "retrying")
    assert labdemo.interesting_client_line("[t] WARNING: something")
    assert not labdemo.interesting_client_line("[t] Sent <C1, S1, 12, request>")
    assert not labdemo.interesting_client_line("[t] Received <C1, S2, 12, reply>")
    assert not labdemo.interesting_client_line("[t] request_num 12: Discarded duplicate reply "
                                               "from S3.")


def history(spec: list[tuple[str, float, float | None, str]]) -> list[dict[str, Any]]:
    """History lines: (process, invoke, complete or None for never answered, outcome);
    ``time`` in monotonic ns, ``wall`` the wall clock (T0 + invoke)."""
    lines: list[dict[str, Any]] = []
    for n, (process, start, end, outcome) in enumerate(spec):
        op = {"op": "incr", "key": "demo1-k0", "delta": 1}
        lines.append({"process": process, "type": "invoke", "op": op,
                      "time": int(start * 1e9), "wall": T0 + start})
        if end is not None:
            lines.append({"process": process, "type": outcome, "op": op,
                          "result": {"ok": outcome == "ok", "value": n}, "request_num": n,
                          "replica": "S1", "seq": n, "epoch": 1, "time": int(end * 1e9),
                          "wall": T0 + end})
    return lines


def test_history_counts_and_longest_gap() -> None:
    ops = parse(history([("C1", 0.0, 0.01, "ok"), ("C1", 0.2, 1.7, "ok"),
                         ("C1", 1.8, 1.81, "ok"), ("C2", 0.0, 0.02, "fail"),
                         ("C2", 0.3, None, "info"), ("C3", 0.1, 0.12, "ok")]))
    assert labdemo.history_counts(ops) == {"C1": {"ok": 3, "fail": 0, "info": 0},
                                           "C2": {"ok": 0, "fail": 1, "info": 1},
                                           "C3": {"ok": 1, "fail": 0, "info": 0}}
    gaps = labdemo.longest_gap(ops)
    assert gaps["C1"] == pytest.approx(1.69)
    assert gaps["C3"] == 0.0 and "C2" not in gaps


def test_client_line() -> None:
    summary = {"acked": 120, "failed": 0, "retries": 4, "duplicates": 240}
    line = labdemo.client_line("C1", summary, {"ok": 120, "fail": 0, "info": 0}, 1.25)
    assert line.startswith("  C1: 120 requests acknowledged, 0 failed, 4 retried")
    assert "longest gap between acknowledgements 1.2s" in line and "120 ok" in line
    assert "no summary" in labdemo.client_line("C2", None)


# ------------------------------------------------------------------------ the verdict ----
def healed(n: int = 3) -> list[FaultEvent]:
    return [labdemo.make_event(s.kind, "S1", "primary", T0 + 10 * k, status(), host="h1",
                               recovered=T0 + 10 * k, healthy=T0 + 10 * k + 3)
            for k, s in enumerate(labdemo.STEPS[:n])]


def judge(**changes: Any) -> str | None:
    ops = parse(history([("C1", 0.0, 0.01, "ok"), ("C2", 0.0, 0.01, "ok"),
                         ("C3", 0.0, 0.01, "ok")]))
    args: dict[str, Any] = {
        "faults": 3, "events": healed(), "ops": ops,
        "summaries": {c: {"acked": 1, "failed": 0} for c in labdemo.CLIENTS},
        "counts": labdemo.history_counts(ops), "failure": None}
    return labdemo.verdict(**(args | changes))


def test_verdict_passes_a_run_where_everything_recovered_and_nothing_failed() -> None:
    assert judge() is None


def test_verdict_names_what_went_wrong() -> None:
    assert judge(failure="client C2 on h5 ended (exit 3): gone") == \
        "client C2 on h5 ended (exit 3): gone"
    events = healed()
    events[1].healthy = None
    assert "did not recover from fault 2 (kill_primary of S1)" in judge(events=events)
    assert judge(events=healed(2)) == "only 2 of the 3 faults ran"
    summaries = {c: {"acked": 1, "failed": 0} for c in labdemo.CLIENTS}
    summaries["C3"] = {"acked": 1, "failed": 2}
    assert judge(summaries=summaries) == "client C3 saw 2 failed requests"
    assert judge(summaries=summaries | {"C3": None}) == "client C3 ended without its summary"
    assert judge(ops=[], counts={}) == "the clients' histories hold no operation"
    bad = parse(history([("C1", 0.0, 0.01, "ok"), ("C2", 0.0, 0.01, "fail")]))
    assert judge(ops=bad, counts=labdemo.history_counts(bad)) == \
        "client C2's history has 1 failed requests"
    lost = parse(history([("C1", 0.0, None, "info")]))
    assert judge(ops=lost, counts=labdemo.history_counts(lost)) == \
        "client C1's history has 1 requests never answered"


# ------------------------------------------------------- one fault, scripted RM, fake lab ----
class FakeLab:
    manager = "h4"
    clients = ["h5"]
    replica_hosts = {"S1": "h1", "S2": "h2", "S3": "h3"}
    ssh_config = Path("/nonexistent/ssh_config")

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log

    def host_of(self, rid: str) -> str:
        return self.replica_hosts[rid]

    def ssh(self, host: str, command: str, **_: Any) -> subprocess.CompletedProcess[str]:
        self.log.append(("ssh", host, command))
        return subprocess.CompletedProcess([], 0, "", "")

    def lab(self, *args: str, **_: Any) -> str:
        self.log.append(("lab", *args))
        return ""


class FakeConfig:
    mode = "passive"

    def read_key(self) -> bytes:
        return b"k" * 32


class FakeClients:
    def check_running(self) -> None:
        pass


def scripted(demo: labdemo.Demo, log: list[tuple[Any, ...]],
             statuses: list[dict[str, Any] | None]) -> Callable[[], dict[str, Any] | None]:
    left = list(statuses)

    def next_status() -> dict[str, Any] | None:
        s = left.pop(0) if len(left) > 1 else left[0]
        log.append(("status", s["primary"] if s else None, s["epoch"] if s else None))
        return s
    return next_status


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> tuple[labdemo.Demo, list[tuple[Any, ...]]]:
    log: list[tuple[Any, ...]] = []

    async def no_reset(config: Any, key: bytes) -> None:
        log.append(("reset_budgets",))

    monkeypatch.setattr(labdemo, "reset_budgets", no_reset)
    d = labdemo.Demo(FakeLab(log), FakeConfig())  # type: ignore[arg-type]
    monkeypatch.setattr(d, "incidents", lambda: [])
    return d, log


def test_power_cut_of_the_primary_powers_the_host_on_after_the_new_primary(
        demo: tuple[labdemo.Demo, list[tuple[Any, ...]]], capsys: pytest.CaptureFixture[str]
) -> None:
    d, log = demo
    d.status = scripted(d, log, [  # type: ignore[method-assign]
        status("S1", 2),  # healthy before the fault
        status("S1", 2, ready=("S2", "S3")),  # noticed, no new primary yet
        status("S2", 3, ready=("S2", "S3")),  # the RM named S2
        status("S2", 3, ready=("S2", "S3")),  # h1 boots
        status("S2", 3, inc={"S1": "s1b", "S2": "s2a", "S3": "s3a"}),  # S1 back, ready
    ])
    event = d.fault(3, labdemo.STEPS[2], FakeClients())  # type: ignore[arg-type]
    crash = log.index(("lab", "crash", "h1"))
    start = log.index(("lab", "start", "h1"))
    named = log.index(("status", "S2", 3))
    assert log.index(("reset_budgets",)) < crash < named < start
    assert (event.kind, event.victim, event.role) == ("power_cut", "S1", "primary")
    assert event.extra["new_primary"] == "S2" and event.extra["host"] == "h1"
    assert event.injected <= event.injected + event.extra["new_primary_s"] <= event.recovered
    assert event.recovered is not None and event.healthy is not None
    assert event.recovered <= event.healthy
    assert (event.epoch_before, event.epoch_after) == (2, 3)
    out = capsys.readouterr().out
    assert "Fault 3 of 3: power cut of h1, the host of S1, the primary" in out
    assert "the RM named S2 the new primary" in out


def test_a_backup_stop_waits_for_the_relaunched_process_not_the_status_from_before(
        demo: tuple[labdemo.Demo, list[tuple[Any, ...]]]) -> None:
    d, log = demo
    d.status = scripted(d, log, [  # type: ignore[method-assign]
        status("S1"), status("S1"),  # healthy before; still healthy: not noticed yet
        status("S1", ready=("S1", "S3")),
        status("S1", inc={"S1": "s1a", "S2": "s2b", "S3": "s3a"}),
    ])
    event = d.fault(1, labdemo.STEPS[0], FakeClients())  # type: ignore[arg-type]
    assert ("ssh", "h2", "systemctl stop ftds-replica@S2.service") in log
    assert not any(entry[0] == "lab" for entry in log)  # no host was powered off
    assert (event.victim, event.role) == ("S2", "backup")
    assert "new_primary" not in event.extra
    statuses = [e for e in log if e[0] == "status"]
    assert len(statuses) == 4  # it waited through the stale healthy status


def test_kill_of_the_primary_over_systemctl(
        demo: tuple[labdemo.Demo, list[tuple[Any, ...]]]) -> None:
    d, log = demo
    d.status = scripted(d, log, [  # type: ignore[method-assign]
        status("S2", 4), status("S3", 5, ready=("S1", "S3")),
        status("S3", 5, inc={"S1": "s1a", "S2": "s2b", "S3": "s3a"}),
    ])
    event = d.fault(2, labdemo.STEPS[1], FakeClients())  # type: ignore[arg-type]
    assert ("ssh", "h2", "systemctl kill --signal=SIGKILL ftds-replica@S2.service") in log
    assert event.extra["new_primary"] == "S3" and event.healthy is not None


def test_a_fault_that_does_not_heal_is_recorded_without_healthy(
        demo: tuple[labdemo.Demo, list[tuple[Any, ...]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    d, log = demo
    monkeypatch.setattr(labdemo, "HEALTHY_TIMEOUT", 0.2)
    d.status = scripted(d, log, [  # type: ignore[method-assign]
        status("S1"), status("S1", ready=("S1", "S3"))])
    event = d.fault(1, labdemo.STEPS[0], FakeClients())  # type: ignore[arg-type]
    assert event.healthy is None and event.recovered is not None
    assert "did not recover from fault 1" in labdemo.verdict(
        faults=3, events=[event], summaries={}, ops=[], counts={})


# ------------------------------------------------------------------------ the timeline ----
def test_timeline_plot_writes_a_png_from_the_demos_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from ftds_tools.chaos.timeline import plot

    spec: list[tuple[str, float, float | None, str]] = []
    for c in labdemo.CLIENTS:
        t = 0.0
        while t < 30:
            slow = 10.0 <= t < 11.0  # the failover: a long wait
            spec.append((c, t, t + (1.2 if slow else 0.004), "ok"))
            t += 1.3 if slow else 0.2
    spec.append(("C1", 30.0, None, "info"))
    ops = parse(history(spec))
    assert all(o.wall is not None for o in ops) and any(math.isinf(o.complete) for o in ops)
    events = [
        labdemo.make_event("systemctl_stop", "S2", "backup", T0 + 3, status(), host="h2",
                           recovered=T0 + 3.1, healthy=T0 + 6),
        labdemo.make_event("kill_primary", "S1", "primary", T0 + 10, status(), host="h1",
                           new_primary="S3", new_primary_at=T0 + 10.6, recovered=T0 + 10.1,
                           healthy=T0 + 13, after=status("S3", 2)),
        labdemo.make_event("power_cut", "S3", "primary", T0 + 18, status("S3", 2), host="h3",
                           new_primary="S2", new_primary_at=T0 + 19.5, recovered=T0 + 24,
                           healthy=T0 + 27, after=status("S2", 3)),
    ]
    incidents = [incident(1, "S2", T0 + 3.2), incident(2, "S1", T0 + 10.2),
                 incident(3, "S3", T0 + 18.8, closed=False)]
    incidents[1]["new_primary"] = T0 + 10.5
    path = tmp_path / "timeline.png"
    plot(path, ops, events, labdemo.demo_incidents(incidents, T0),
         {"target": "lab", "mode": "passive", "schedule": "milestone5 demo", "seed": "-"})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


# ------------------------------------------- the whole demo against a fake lab and RM ----
class FakeCluster(FakeLab):
    """A lab whose RM reacts to the faults: a stopped or killed replica is gone for two status
    looks, then back as a new process; a primary's loss makes the next ready replica primary in
    a new epoch; a replica whose host is off comes back only once the host is on again."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        super().__init__(log)
        self.primary, self.epoch = "S1", 1
        self.inc = {r: f"{r}.1" for r in self.replica_hosts}
        self.down: dict[str, int] = {}
        self.off: set[str] = set()

    def fail(self, rid: str) -> None:
        self.down[rid] = 0
        if rid == self.primary:
            self.primary = next(r for r in sorted(self.inc) if r not in self.down)
            self.epoch += 1

    def ssh(self, host: str, command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        super().ssh(host, command, **kw)
        for verb in ("systemctl stop ftds-replica@", "--signal=SIGKILL ftds-replica@"):
            if verb in command:
                self.fail(command.split(verb)[1].split(".")[0])
        return subprocess.CompletedProcess([], 0, "ok" if "ftds status" in command else "", "")

    def lab(self, *args: str, **kw: Any) -> str:
        super().lab(*args, **kw)
        rid = next(r for r, h in self.replica_hosts.items() if h == args[1])
        if args[0] == "crash":
            self.fail(rid)
            self.off.add(rid)
        elif args[0] == "start":
            self.off.discard(rid)
        return ""

    def status(self) -> dict[str, Any]:
        for rid in list(self.down):
            if rid not in self.off:
                self.down[rid] += 1
                if self.down[rid] > 2:
                    del self.down[rid]
                    self.inc[rid] += "+"
        return status(self.primary, self.epoch, inc=dict(self.inc),
                      ready=tuple(r for r in sorted(self.inc) if r not in self.down))


class FakeWorkloads:
    """The clients: their summaries and histories as a run would leave them."""

    failed: dict[str, int] = {}

    def __init__(self, lab: Any, host: str, prefix: str) -> None:
        self.host, self.prefix = host, prefix
        self.procs = {c: object() for c in labdemo.CLIENTS}
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def check_running(self) -> None:
        assert self.started and not self.stopped

    def stop(self) -> dict[str, dict[str, Any] | None]:
        self.stopped = True
        return {c: {"acked": 10, "failed": self.failed.get(c, 0), "retries": 1,
                    "duplicates": 20} for c in labdemo.CLIENTS}

    def kill(self) -> None:
        pass

    def fetch_histories(self, dest: Path) -> list[Path]:
        paths = []
        now = labdemo.time.time()
        for c in labdemo.CLIENTS:
            lines = history([(c, k * 0.1, k * 0.1 + 0.005, "ok") for k in range(10)])
            for line in lines:
                line["wall"] += now - T0 - 5
            path = dest / f"{c}.jsonl"
            path.write_text("".join(json.dumps(line) + "\n" for line in lines))
            paths.append(path)
        return paths


@pytest.fixture
def whole(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], labdemo.Demo]:
    log: list[tuple[Any, ...]] = []

    async def no_reset(config: Any, key: bytes) -> None:
        pass

    monkeypatch.setattr(labdemo, "reset_budgets", no_reset)
    monkeypatch.setattr(labdemo, "STEADY", 0.01)
    monkeypatch.setattr(labdemo, "OUT", tmp_path / "run" / "demo")
    monkeypatch.setattr(labdemo, "Clients", FakeWorkloads)

    def make() -> labdemo.Demo:
        cluster = FakeCluster(log)
        d = labdemo.Demo(cluster, FakeConfig())  # type: ignore[arg-type]
        d.status = cluster.status  # type: ignore[method-assign]
        d.incidents = lambda: []  # type: ignore[method-assign]
        d.cluster = cluster  # type: ignore[attr-defined]
        return d
    return make


def test_the_whole_demo_runs_three_faults_and_draws_the_timeline(
        whole: Callable[[], labdemo.Demo], capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    d = whole()
    assert d.run() == 0
    out = capsys.readouterr().out
    actions = [e for e in d.cluster.log if e[0] == "lab" or "ftds-replica@" in e[2]]  # type: ignore[attr-defined]
    assert actions == [("ssh", "h2", "systemctl stop ftds-replica@S2.service"),
                       ("ssh", "h1", "systemctl kill --signal=SIGKILL ftds-replica@S1.service"),
                       ("lab", "crash", "h2"), ("lab", "start", "h2")]
    timeline = tmp_path / "run" / "demo" / "timeline.png"
    assert f"The run's timeline: {timeline.resolve()}" in out
    assert timeline.read_bytes()[:4] == b"\x89PNG"
    assert "Milestone 5 on the lab: 3 faults, every one recovered" in out
    assert "Take it down with: scripts/lab down" in out
    report = json.loads((tmp_path / "run" / "demo" / "report.json").read_text())
    assert [e["kind"] for e in report["events"]] == ["systemctl_stop", "kill_primary",
                                                     "power_cut"]
    assert all(e["healthy"] >= e["injected"] for e in report["events"])


def test_the_whole_demo_fails_when_a_client_saw_a_failed_request(
        whole: Callable[[], labdemo.Demo], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeWorkloads, "failed", {"C2": 1})
    assert whole().run() == 1
    out = capsys.readouterr().out
    assert "scripts/demo: FAILED: client C2 saw 1 failed requests" in out
