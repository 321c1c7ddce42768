"""Fault detection and automatic recovery on loopback: LFDs, GFD and RM as real processes.

Each test runs clients throughout, injects a fault, waits for the cluster to heal on its own and
then checks: every acknowledged write present exactly once, digests of ready replicas equal.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from helpers import check_counters, finish, read_history, run

from ftds import local
from ftds.config import load_config
from ftds.procs import pid_alive

IDS = ["S1", "S2", "S3"]


def with_load(cluster, tmp_path, duration=6.0, rate=300, clients=3, names=("C1", "C2")):
    histories = [tmp_path / f"{n}.jsonl" for n in names]
    procs = [cluster.workload(n, h, clients=clients, rate=rate, duration=duration)
             for n, h in zip(names, histories, strict=True)]
    cluster.wait(lambda: (cluster.status_of(cluster.primary()) or {}).get("seq", 0) > 100,
                 10, "load")
    return histories, procs


def settle(cluster, histories, procs):
    results = [finish(p) for p in procs]
    cluster.wait_healthy(30)
    check_counters(cluster, histories, ids=IDS)
    assert all(r["failed"] == 0 for r in results), results
    return results


def closed_incident(cluster, replica, since=0.0, known=frozenset()):
    """The incident of ``replica`` detected after ``since`` and not among the ``known`` ids,
    once it is closed."""
    def find():
        return [i for i in cluster.incidents()
                if i["replica"] == replica and i["closed"] and i["detected"] >= since
                and i["id"] not in known]
    return cluster.wait(find, 20, f"incident of {replica} closed")[-1]


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_kill_backup_is_relaunched_and_readmitted(make_managed, tmp_path, mode):
    cluster = make_managed(mode=mode)
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    victim = next(r for r in IDS if r != start["primary"])
    old_pid = cluster.signal(victim, signal.SIGKILL)
    settle(cluster, histories, procs)
    status = cluster.rm_status()
    assert status["epoch"] == start["epoch"], "losing a backup must not change the primary"
    assert status["replicas"][victim]["pid"] != old_pid
    incident = closed_incident(cluster, victim)
    assert incident["confirmed_dead"] and not incident["was_primary"]
    assert incident["relaunch_to_ready_ms"] is not None


def test_metrics_show_the_cluster_and_time_the_recovery(make_managed, tmp_path):
    cluster = make_managed()
    start = cluster.up()
    before = cluster.metrics()
    primary = start["primary"]
    assert before[("ftds_rm_responsive", ())] == 1
    assert before[("ftds_epoch", ())] == start["epoch"]
    assert before[("ftds_ready_members", ())] == len(IDS)
    for rid in IDS:
        assert before[("ftds_replica_ready", (("replica", rid),))] == 1
        assert before[("ftds_replica_primary", (("replica", rid),))] == int(rid == primary)
        assert before[("ftds_replica_heartbeat_interval_seconds", (("replica", rid),))] == 0.1
    assert ("ftds_recovery_seconds_count", (("phase", "relaunch_to_ready"),)) not in before
    assert before[("process_resident_memory_bytes", ())] > 0

    histories, procs = with_load(cluster, tmp_path, duration=4.0)
    victim = next(r for r in IDS if r != primary)
    cluster.signal(victim, signal.SIGKILL)
    settle(cluster, histories, procs)
    incident = closed_incident(cluster, victim)
    after = cluster.metrics()
    applied = after[("ftds_replica_applied_seq", (("replica", primary),))]
    assert applied > before[("ftds_replica_applied_seq", (("replica", primary),))] + 100
    assert after[("ftds_replica_relaunches_total", (("replica", victim),))] >= 1
    assert after[("ftds_incidents_total", (("was_primary", "false"),))] == 1
    assert after[("ftds_replica_ready", (("replica", victim),))] == 1
    assert after[("ftds_recovery_seconds_count", (("phase", "detect_to_ready"),))] == 1
    total = after[("ftds_recovery_seconds_sum", (("phase", "detect_to_ready"),))]
    assert total == pytest.approx(incident["detect_to_ready_ms"] / 1000, abs=0.001)


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_kill_primary_fails_over_then_rejoins_as_backup(make_managed, tmp_path, mode):
    cluster = make_managed(mode=mode)
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    old = start["primary"]
    cluster.signal(old, signal.SIGKILL)
    settle(cluster, histories, procs)
    status = cluster.rm_status()
    assert status["epoch"] == start["epoch"] + 1
    assert status["primary"] != old
    assert status["replicas"][old]["role"] in ("backup", "replica")  # back, not primary
    incident = closed_incident(cluster, old)
    assert incident["was_primary"] and incident["new_primary_id"] == status["primary"]
    assert incident["detect_to_new_primary_ms"] is not None


def test_paused_primary_is_deposed_and_acknowledges_nothing_after(make_managed, tmp_path):
    cluster = make_managed(tunables={"lease": 0.5})
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path, duration=7)
    old = start["primary"]
    cluster.signal(old, signal.SIGSTOP)
    new = cluster.wait(lambda: (s := cluster.rm_status()) and s["primary"] != old
                       and s["primary"], 10, "a new primary")
    time.sleep(0.6)  # longer than the lease: the old one is stopped well past it
    cluster.signal(old, signal.SIGCONT)
    settle(cluster, histories, procs)
    # The new primary started ordering at seq N; nothing the old one answered lies beyond N.
    log = (cluster.dir / "logs" / f"{new}.log").read_text()
    takeover = int(re.findall(r"I am the primary of epoch \d+ \(seq (\d+)", log)[-1])
    events = read_history(*histories)
    late = [e for e in events if e["type"] == "ok" and e["replica"] == old
            and e["seq"] > takeover]
    assert not late, f"the deposed primary acknowledged {late[:3]}"
    assert cluster.rm_status()["replicas"][old]["ready"]  # resumed, caught up, readmitted


def test_hung_primary_is_fenced_by_its_lfd_and_fails_over_without_the_lease(make_managed,
                                                                           tmp_path):
    # A lease far longer than any failover: without fencing the RM would wait it out.
    cluster = make_managed(tunables={"lease": 3.0, "fence_hung_primary": True})
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path, duration=7)
    old = start["primary"]
    old_pid = cluster.signal(old, signal.SIGSTOP)
    cluster.wait(lambda: (s := cluster.rm_status()) and s["primary"] != old and s["primary"],
                 10, "a new primary")
    assert not pid_alive(old_pid), "the hung primary was not killed"
    incident = closed_incident(cluster, old)
    assert incident["confirmed_dead"] and "fenced" in incident["cause"], incident
    assert incident["detect_to_new_primary_ms"] < 1500, incident  # no 3 s lease wait
    settle(cluster, histories, procs)
    assert cluster.rm_status()["replicas"][old]["ready"]  # relaunched, caught up, readmitted


def test_hung_backup_is_not_fenced(make_managed, tmp_path):
    cluster = make_managed(tunables={"fence_hung_primary": True})
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    victim = next(r for r in IDS if r != start["primary"])
    pid = cluster.signal(victim, signal.SIGSTOP)
    cluster.wait(lambda: any(i["replica"] == victim for i in cluster.incidents()), 10,
                 "the hang to be noticed")
    assert pid_alive(pid)  # stopped, not killed: a backup's stall costs nothing to wait out
    cluster.signal(victim, signal.SIGCONT)
    settle(cluster, histories, procs)
    assert not closed_incident(cluster, victim)["confirmed_dead"]


def test_lost_lfd_presumes_its_replica_lost_and_heals(make_managed, tmp_path):
    cluster = make_managed()
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    victim = next(r for r in IDS if r != start["primary"])
    lfd = f"LFD{victim[1:]}"
    replica_pid = cluster.pid(victim)
    cluster.signal(lfd, signal.SIGKILL)  # the supervisor restarts it, as systemd would
    cluster.wait(lambda: any(i["replica"] == victim for i in cluster.incidents()), 10,
                 "the loss to be noticed")
    settle(cluster, histories, procs)
    assert cluster.pid(victim) == replica_pid  # the replica itself never stopped
    incident = closed_incident(cluster, victim)
    assert "LFD" in incident["cause"] and not incident["confirmed_dead"]


@pytest.mark.parametrize("daemon", ["GFD", "RM"])
def test_restarting_gfd_or_rm_does_not_disturb_a_healthy_primary(make_managed, tmp_path,
                                                                  daemon):
    cluster = make_managed()
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    old_pid = cluster.signal(daemon, signal.SIGKILL)
    cluster.wait(lambda: local.read_pid(cluster.dir, daemon) not in (None, old_pid), 10,
                 f"{daemon} restarted")
    results = settle(cluster, histories, procs)
    status = cluster.rm_status()
    assert (status["epoch"], status["primary"]) == (start["epoch"], start["primary"])
    assert not [i for i in cluster.incidents() if i["detected"] > time.time() - 30]
    assert all(r["retries"] == 0 for r in results), "clients noticed the restart"


def test_three_faults_in_a_row_with_clients_running(make_managed, tmp_path):
    """Milestone 5: faults one after the other, each recovered automatically."""
    cluster = make_managed()
    start = cluster.up()
    histories, procs = with_load(cluster, tmp_path, duration=14, rate=200)
    epochs = [start["epoch"]]
    for target in ("primary", "backup", "primary"):
        status = cluster.wait_healthy(20)
        victim = status["primary"] if target == "primary" else \
            next(r for r in IDS if r != status["primary"])
        # The victim's own earlier incident (a relaunch takes ~0.3 s) must not be taken for
        # this one: the next fault would then overlap this one.
        known = frozenset(i["id"] for i in cluster.incidents())
        cluster.signal(victim, signal.SIGKILL)
        closed_incident(cluster, victim, known=known)
        epochs.append(cluster.rm_status()["epoch"])
    settle(cluster, histories, procs)
    assert epochs[-1] == start["epoch"] + 2  # two primaries replaced, one backup
    assert len([i for i in cluster.incidents() if i["closed"]]) >= 3


def test_replica_that_never_starts_hits_its_restart_budget(make_managed, tmp_path):
    base = local.pick_base(3, 20000)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", local.plan_ports(3, base)["S3.port"]))  # S3 cannot bind
    blocker.listen()
    try:
        cluster = make_managed(base_port=base, tunables={
            "restart_budget": 3, "relaunch_timeout": 0.5, "relaunch_backoff": 0.05,
            "relaunch_backoff_max": 0.1})
        cluster.up(wait=False)  # S3 is never healthy, by design
        proc_status = cluster.wait(
            lambda: (s := cluster.rm_status()) and s["replicas"]["S3"]["budget_exhausted"] and s,
            30, "S3's budget to run out")
        s3 = proc_status["replicas"]["S3"]
        assert s3["restarts"] == 3 and s3["budget_left"] == 0
        assert "restart budget exhausted" in s3["relaunch"]
        assert proc_status["primary"] in ("S1", "S2")  # the others serve meanwhile
        time.sleep(1.0)
        assert cluster.rm_status()["replicas"]["S3"]["restarts"] == 3  # it really stopped
        log = (cluster.dir / "logs" / "RM.log").read_text()
        assert "restart budget exhausted" in log
        # The documented reset lets it try again.
        from ftds.rmclient import rm_request
        run(rm_request(cluster.config, cluster.key, "reset_budget", {"replica": "S3"}))
        cluster.wait(lambda: cluster.rm_status()["replicas"]["S3"]["restarts"] >= 1, 10,
                     "relaunch after the reset")
    finally:
        blocker.close()


def test_sighup_changes_heartbeat_interval_without_restart(make_managed, tmp_path):
    cluster = make_managed()
    cluster.up()
    histories, procs = with_load(cluster, tmp_path)
    names = ["RM", "GFD", *IDS, *(f"LFD{r[1:]}" for r in IDS)]
    pids = {n: cluster.pid(n) for n in names}
    data = yaml.safe_load(cluster.path.read_text())
    data["tunables"]["heartbeat_interval"] = 0.25
    data["tunables"]["gfd_heartbeat_interval"] = 0.2
    cluster.path.write_text(yaml.safe_dump(data))
    for name in names:
        cluster.signal(name, signal.SIGHUP)

    def reloaded():
        s = cluster.rm_status()
        return s and all(r["heartbeat_interval"] == 0.25 for r in s["replicas"].values()) \
            and s["gfd_heartbeat_interval"] == 0.2 and s
    cluster.wait(reloaded, 10, "the new intervals in effect")
    # A broken file is refused and the running configuration kept.
    cluster.path.write_text("replicas: [ {id: S1, port: 99999999\n")
    for name in names:
        cluster.signal(name, signal.SIGHUP)
    time.sleep(0.5)
    assert reloaded()
    settle(cluster, histories, procs)
    assert {n: cluster.pid(n) for n in names} == pids, "a daemon was restarted"
    for name in names:
        log = (cluster.dir / "logs" / f"{name}.log").read_text()
        assert "reload refused" in log and "not valid YAML" in log, name
        assert "heartbeat_interval: 0.1 -> 0.25" in log, name


def test_replica_set_grows_and_shrinks_at_run_time(make_managed, tmp_path):
    """The course asks for the number of replicas to change without restarting anything."""
    cluster = make_managed()
    cluster.up()
    histories, procs = with_load(cluster, tmp_path, duration=8)
    pids = {n: cluster.pid(n) for n in ["RM", "GFD", *IDS]}
    base = cluster.config.replica("S1").port - 1
    local.write_cluster(cluster.dir, 4, base=base)  # S4 joins the file
    cluster.config = load_config(cluster.path)
    subprocess.run([sys.executable, "-m", "ftds", "local", "reload", "--dir", str(cluster.dir)],
                   check=True, capture_output=True)
    status = cluster.wait(lambda: (s := cluster.rm_status()) and "S4" in s["replicas"]
                          and s["replicas"]["S4"]["ready"] and s, 20, "S4 ready")
    assert status["epoch"] == 1  # nobody was deposed
    for proc in procs:
        finish(proc)
    cluster.wait_healthy()
    check_counters(cluster, histories, ids=[*IDS, "S4"])
    assert {n: cluster.pid(n) for n in pids} == pids, "a daemon was restarted"
    local.write_cluster(cluster.dir, 3, base=base)  # and leaves it again
    subprocess.run([sys.executable, "-m", "ftds", "local", "reload", "--dir", str(cluster.dir)],
                   check=True, capture_output=True)
    status = cluster.wait(lambda: (s := cluster.rm_status()) and "S4" not in s["replicas"]
                          and s, 20, "S4 gone")
    cluster.wait_healthy()
    assert "S4" not in status["members"] and status["epoch"] == 1
    cluster.wait(lambda: local.read_pid(cluster.dir, "S4") is None, 10, "S4's process to stop")


def test_the_primary_leaves_the_replica_set_at_run_time(make_managed, tmp_path):
    """The primary's entry removed from the file, then a reload: the RM replaces it once its
    lease has run out, and nothing acknowledged is lost. (The RM's reload raised KeyError
    halfway, and every later decision raised again: no view ever came.)"""
    cluster = make_managed()
    start = cluster.up()
    old = start["primary"]
    rest = [r for r in IDS if r != old]
    histories, procs = with_load(cluster, tmp_path, duration=6)
    data = yaml.safe_load(cluster.path.read_text())
    data["replicas"] = [r for r in data["replicas"] if r["id"] != old]
    cluster.path.write_text(yaml.safe_dump(data))
    cluster.config = load_config(cluster.path)
    subprocess.run([sys.executable, "-m", "ftds", "local", "reload", "--dir", str(cluster.dir)],
                   check=True, capture_output=True)
    status = cluster.wait(lambda: (s := cluster.healthy()) and s["primary"] in rest and s, 30,
                          f"a primary other than {old}")
    assert status["epoch"] == start["epoch"] + 1 and set(status["members"]) == set(rest)
    assert old not in status["replicas"]
    for proc in procs:
        finish(proc)
    cluster.wait_healthy()
    check_counters(cluster, histories, ids=rest)
    log = (cluster.dir / "logs" / "RM.log").read_text()
    assert f"{old}: primary lost (removed from the cluster file)" in log


@pytest.mark.parametrize("argv", [
    ["promote", "S2"], ["promote"], ["members", "S1,S2"], ["bootstrap"],
    ["view", "--epoch", "9", "--primary", "S3", "--members", "S3"],
])
def test_views_by_hand_are_refused_while_the_rm_manages_them(make_managed, argv):
    """`ftds ctl promote|members|view|bootstrap` send views straight to the replicas. Past a
    running RM such a view escapes its record (it may issue that epoch again, otherwise) and
    its rules (`view --primary S3` made an empty replica primary without --accept-data-loss)."""
    cluster = make_managed()
    start = cluster.up()
    done = subprocess.run([sys.executable, "-m", "ftds", "ctl", *argv, "-c", str(cluster.path)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1, done
    assert "the RM manages this cluster's views" in done.stderr
    assert "force-primary" in done.stderr and "Traceback" not in done.stderr
    views = {rid: (s or {}).get("view") for rid, s in cluster.statuses().items()}
    assert all(v and v["epoch"] == start["epoch"] for v in views.values()), views
    assert cluster.rm_status()["epoch"] == start["epoch"]


def test_a_held_replica_stays_down_until_it_is_released(make_managed, tmp_path):
    """`ftds ctl hold S3 --reason ...`: the RM leaves S3 down after it stops, status says HELD
    and DEGRADED (exit 1); `ftds ctl release S3` and the RM brings it back."""
    cluster = make_managed()
    start = cluster.up()
    victim = next(r for r in IDS if r != start["primary"])

    def ftds(*argv):
        return subprocess.run([sys.executable, "-m", "ftds", *argv, "-c", str(cluster.path)],
                              capture_output=True, text=True, timeout=30)

    held = ftds("ctl", "hold", victim, "--reason", "disk swap")
    assert held.returncode == 0, held.stderr
    assert "will not relaunch" in held.stdout
    cluster.signal(victim, signal.SIGKILL)
    cluster.wait(lambda: not cluster.rm_status()["replicas"][victim]["present"], 10,
                 f"{victim} gone per the RM")
    time.sleep(1.0)  # 50 decision ticks: an unheld replica is relaunched within the first
    s = cluster.rm_status()["replicas"][victim]
    assert not s["present"] and s["restarts"] == 0 and s["held"] == "disk swap"
    status = ftds("status")
    assert status.returncode == 1, status.stdout
    assert f"DEGRADED: {victim} held (disk swap)" in status.stdout and "HELD" in status.stdout

    released = ftds("ctl", "release", victim)
    assert released.returncode == 0, released.stderr
    cluster.wait_healthy(30)
    assert cluster.rm_status()["replicas"][victim]["held"] is None
    again = ftds("ctl", "release", victim)
    assert again.returncode == 1 and f"{victim} is not held" in again.stderr


def test_status_watch_follows_a_backup_lost_and_back_then_exits_with_the_last_verdict(
        make_managed):
    cluster = make_managed()
    start = cluster.up()
    victim = next(r for r in IDS if r != start["primary"])
    watch = subprocess.Popen([sys.executable, "-m", "ftds", "status", "--watch", "0.1", "--json",
                              "-c", str(cluster.path)], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []

    def until(verdict: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = watch.stdout.readline()  # one line per refresh, every 0.1 s
            assert line, f"the watch ended; verdicts so far: {seen}"
            frame = json.loads(line)
            seen.append(frame["verdict"])
            if frame["verdict"] == verdict:
                return frame
        raise AssertionError(f"no {verdict} within {timeout}s; verdicts: {seen[-20:]}")

    try:
        until("OK")
        cluster.signal(victim, signal.SIGKILL)
        degraded = until("DEGRADED")
        assert victim in degraded["why"]
        until("OK")  # the RM relaunched it and admitted it again
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0, "the last verdict was OK"
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
