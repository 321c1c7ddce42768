"""The chaos suite on loopback: a seeded run must be valid, and every planted bug caught.

A checker that passes everything is worthless: each planted bug (``FTDS_FAULT``, off unless set)
breaks one promise, and the run's verdict must name that broken promise.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ftds.workload import HOSTILE_KINDS
from ftds_tools.chaos.history import load
from ftds_tools.chaos.runner import RunSettings, run_chaos


def chaos(tmp_path, **kwargs):
    settings = RunSettings(out=tmp_path / "chaos", settle=0.5, heal_timeout=10, clients=2,
                           sessions=4, rate=120, **kwargs)
    return run_chaos(settings, log=lambda _line: None)


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_seeded_random_run_is_valid(tmp_path, mode):
    report = chaos(tmp_path, mode=mode, schedule="random", faults=6, seed=11)
    v = report["verdict"]
    assert v["valid"], v["first_violation"]
    assert report["faults"] == 6 and report["faults_not_healed"] == 0
    assert report["outcomes"]["ok"] > 500
    # Every 25th request went out twice: the reply cache answered the copies.
    assert sum(c.get("sent_twice", 0) for c in report["clients"]) > 10
    assert v["keys_checked"] >= 6 and sum(v["executions_traced"].values()) > 0
    assert (tmp_path / "chaos" / "timeline.png").stat().st_size > 10_000
    assert "VERDICT: VALID" in (tmp_path / "chaos" / "report.txt").read_text()


PLANTED = [
    # (bug, mode, schedule, faults, the check meant for it: (group, problem kinds))
    # Skipping the reply cache shows when a request comes again after it ran: the clients
    # send every 25th request twice (as every chaos run does), so it always does.
    ("skip_reply_cache", "passive", "kills", 3, ("executions", {"executed twice"})),
    # The primary acknowledges before its backups have the entry; killed, its acknowledged
    # tail is not in the history the next epoch took over.
    ("drop_acked_write", "passive", "kills", 2, ("acknowledgements", {"acknowledged lost"})),
    # A member swaps two entries of a batch: its executions differ from the sequencer's.
    ("reorder", "active", "kills", 1, ("executions", {"divergence"})),
    # Paused and deposed, the primary ignores the new view and commits alone in its old epoch.
    ("ack_after_deposed", "passive", "pauses", 1, ("epochs", {"acknowledged after deposed",
                                                              "split brain"})),
]


@pytest.mark.parametrize(("bug", "mode", "schedule", "faults", "expected"), PLANTED,
                         ids=[p[0] for p in PLANTED])
def test_planted_bug_is_caught(tmp_path, bug, mode, schedule, faults, expected):
    report = chaos(tmp_path, mode=mode, schedule=schedule, faults=faults, seed=2,
                   env={"FTDS_FAULT": bug})
    v = report["verdict"]
    assert not v["valid"], f"{bug} went unnoticed"
    group, kinds = expected
    fired = {p["check"] for p in v["problems"].get(group, [])}
    everything = {(g, p["check"]) for g, found in v["problems"].items() for p in found}
    assert fired & kinds, f"{bug}: the {group} check did not report {kinds}; got {everything}"
    check = next(c for c in v["checks"] if c["name"] == group)
    assert check["verdict"] == "FAIL"
    assert v["first_violation"]["text"]


# ================================================================ compound faults ====
COMPOUND = ("fault_during_recovery,primary_crash_backups_out,rm_restart_with_replica_crash,"
            "gfd_restart_with_replica_crash")


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_seeded_compound_faults_are_valid(tmp_path, mode):
    """Overlapping faults, each kind once: a second kill while the cluster recovers from the
    first; the primary dying alone after its backups were dropped (the RM must say
    unavailable, the nemesis forces a primary as an operator would, and the checker excuses
    only what the lone primary acknowledged); RM or GFD killed with a replica."""
    report = chaos(tmp_path, mode=mode, schedule=COMPOUND, faults=4, seed=5)
    v = report["verdict"]
    assert v["valid"], v["first_violation"]
    assert report["faults"] == 4 and report["faults_not_healed"] == 0
    assert set(report["faults_by_kind"]) == set(COMPOUND.split(","))
    events = {e["kind"]: e for e in report["events"]}
    during = events["fault_during_recovery"]["extra"]
    assert during["second_victim"] and during["epoch_at_second"] > during["first_epoch"]
    lone = events["primary_crash_backups_out"]["extra"]
    # Since the RM keeps its promise, no replica held every acknowledged write: unavailable.
    assert lone["rm_outcome"] == "unavailable", events["primary_crash_backups_out"]["note"]
    override = lone["override"]
    assert override["kind"] == "force_primary" and override["forced_epoch"] > override["old_epoch"]
    assert v["overrides"] == [override]
    # Whatever it excused was acknowledged by the lone old primary in its epoch, after its
    # backups stopped and before (just after) its kill.
    for text in v["excused"]:
        assert f"by {override['old_primary']} " in text and f"epoch {override['old_epoch']}" in text
    assert report["outcomes"]["ok"] > 500
    assert all(row["ok"] == 0 for row in v["hostile"].values())
    assert "VERDICT: VALID" in (tmp_path / "chaos" / "report.txt").read_text()


def test_hostile_session_is_refused_every_time(tmp_path):
    """Overflowing incr, too deep, too large, key too long, unknown op, a field the op does not
    take, reused request_num with another op: each gets an error reply and changes nothing; the
    checks still pass."""
    report = chaos(tmp_path, mode="passive", schedule="kills", faults=1, seed=4,
                   hostile_rate=20)
    v = report["verdict"]
    assert v["valid"], v["first_violation"]
    ops = load(sorted((tmp_path / "chaos" / "histories").glob("*.jsonl")))
    hostile = [o for o in ops if o.hostile]
    assert {o.hostile for o in hostile} == set(HOSTILE_KINDS)
    assert all(o.outcome == "fail" for o in hostile), [o.describe() for o in hostile
                                                        if o.outcome != "fail"]
    why = {"incr_overflow": "overflow", "deep_value": "nested deeper",
           "huge_value": "larger than", "long_key": "key must be", "unknown_op": "unknown op",
           "unused_field": "unknown field 'extra'"}
    for o in hostile:
        assert o.result is not None and o.result["ok"] is False
        if o.hostile == "reused_request_num":
            assert o.result.get("stale") and o.request_num == o.reuses
        else:
            assert why[o.hostile] in o.result["error"], o.describe()
    # Failed operations are never counted as acknowledged writes; its counter stayed at 1
    # through every overflowing incr.
    counter = next(o for o in ops if o.key.endswith("hostile.n") and o.outcome == "ok")
    final = json.loads((tmp_path / "chaos" / "final.json").read_text())
    assert final[counter.key] == 1
    check = {c["name"]: c for c in v["checks"]}
    assert check["hostile input"]["verdict"] == "PASS"
    assert check["linearizability"]["verdict"] == "PASS"
    assert check["counters"]["verdict"] == "PASS"
    assert sum(v["hostile"][k]["fail"] for k in HOSTILE_KINDS) == len(hostile)


# ===================================================================== partitions ====
PARTITIONS = "partition,partition_from_rm,partition_from_primary,partition_backup,cut_oneway"


@pytest.mark.parametrize("mode", ["passive", "active"])
def test_seeded_partitions_are_valid(tmp_path, mode):
    """Every partition kind once, through the run's link proxies: the primary's host cut from
    every other host, from the manager only, a backup cut from the primary, a backup's host
    cut off, the primary's stream to a backup held one way. A partitioned primary is deposed
    (a new epoch) and must not have acknowledged what the new one lacks; the held bytes arrive
    at the heal and nothing diverges."""
    report = chaos(tmp_path, mode=mode, schedule=PARTITIONS, faults=5, seed=3)
    v = report["verdict"]
    assert v["valid"], v["first_violation"]
    assert report["faults_by_kind"] == dict.fromkeys(PARTITIONS.split(","), 1)
    assert report["faults_not_healed"] == 0
    events = {e["kind"]: e for e in report["events"]}
    for kind in ("partition", "partition_from_rm"):  # cut from the manager: deposed
        assert events[kind]["epoch_after"] > events[kind]["epoch_before"], events[kind]
    assert " -> " in events["cut_oneway"]["note"] and "open" in events["cut_oneway"]["note"]
    assert report["outcomes"]["ok"] > 500
    assert "VERDICT: VALID" in (tmp_path / "chaos" / "report.txt").read_text()


def test_a_partitioned_primary_is_replaced_and_relaunched_replicas_are_cut_too(tmp_path):
    """Proof that the cuts are real. The primary, cut from every other host but running, is
    replaced by the RM (the epoch moves). Then a backup killed and relaunched by the RM (with
    the RM's environment) is cut from the new primary: its stream stops, the RM drops it."""
    import asyncio
    import time

    from ftds import local
    from ftds_tools.chaos.nemesis import LOCAL_KINDS, wait_status
    from ftds_tools.chaos.runner import LocalEnv, wait_healthy

    env = LocalEnv(RunSettings(out=tmp_path / "chaos", hostile=False))
    try:
        env.start()
        status = asyncio.run(wait_healthy(env.config, env.key, 20))
        old, epoch = status["primary"], status["epoch"]
        assert "cut from every other host" in env.target.inject(LOCAL_KINDS["partition"], old, old)
        new = asyncio.run(wait_status(
            env.config, env.key, lambda s: s["epoch"] > epoch and s["primary"] not in (None, old),
            10))
        assert new is not None, "a primary cut from every other host stayed primary"
        assert local.read_pid(env.dir, old) is not None  # cut off, not dead
        env.target.heal_all()
        status = asyncio.run(wait_healthy(env.config, env.key, 20))
        primary = status["primary"]
        backup = next(r for r in sorted(status["replicas"]) if r != primary)
        pid = local.read_pid(env.dir, backup)
        env.target.kill_replica(backup)
        deadline = time.monotonic() + 20
        while local.read_pid(env.dir, backup) in (None, pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        relaunched = local.read_pid(env.dir, backup)
        assert relaunched not in (None, pid)
        status = asyncio.run(wait_status(
            env.config, env.key, lambda s: backup in s["members"] and not s["unavailable"]
            and all(r["ready"] for r in s["replicas"].values()), 20))
        assert status is not None, f"the relaunched {backup} did not become ready"
        environ = (Path("/proc") / str(relaunched) / "environ").read_bytes().split(b"\0")
        assert any(e.startswith(b"FTDS_LINKS=") for e in environ)
        env.target.inject(LOCAL_KINDS["partition_from_primary"], backup, status["primary"])
        # A write waits for the cut backup until the primary reports it and the RM drops it.
        reply = asyncio.run(put(env, "cut", 1))
        assert reply["res"]["ok"], reply
        dropped = asyncio.run(wait_status(
            env.config, env.key,
            lambda s: backup not in s["members"] and s["epoch"] == status["epoch"], 1))
        assert dropped is not None, f"the relaunched {backup} was not cut from the primary"
        env.target.heal_all()
        asyncio.run(wait_healthy(env.config, env.key, 20))
    finally:
        env.target.heal_all()
        env.stop()


def test_planted_split_brain_is_caught_through_a_partition(tmp_path):
    """A primary that ignores its deposition and acknowledges alone once its backups stop
    answering (planted) does so behind a partition: the clients still reach it directly, the
    new primary lacks its writes, and the epochs check must say so."""
    report = chaos(tmp_path, mode="passive", schedule="partition", faults=1, seed=2,
                   env={"FTDS_FAULT": "ack_after_deposed"})
    v = report["verdict"]
    assert not v["valid"], "a deposed primary acknowledging behind a partition went unnoticed"
    fired = {p["check"] for p in v["problems"].get("epochs", [])}
    assert fired & {"acknowledged after deposed", "split brain"}, v["problems"].keys()


async def put(env, key, value):
    from ftds.client import Client

    client = Client(env.config, env.key, "C9", trace=False)
    await client.start()
    try:
        await client.wait_connected(10, count=1)
        return await asyncio.wait_for(client.call({"op": "put", "key": key, "value": value}),
                                      10)
    finally:
        await client.close()
