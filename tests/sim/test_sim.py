"""The simulator itself: a seed replays exactly, runs are judged, planted bugs are found.

The 2,000-schedule run is ``scripts/sim --seeds 2000`` in ``scripts/test``; these tests check
that the simulator can be trusted to say what it says.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

import pytest

from .__main__ import _kinds
from .run import run
from .schedule import KINDS, OPT_IN, draw

SIM = str(Path(__file__).resolve().parents[2] / "scripts" / "sim")


def test_a_seed_replays_exactly_in_this_process():
    first, second = run(11), run(11)
    assert first.ops > 50 and first.events
    assert first.fingerprint == second.fingerprint
    assert first.events == second.events


def test_a_seed_replays_exactly_in_a_new_process():
    """What a failing seed prints is what the replay command shows: same story, same digest."""
    prints = []
    for _ in range(2):
        out = subprocess.run([SIM, "--seed", "5"], capture_output=True, text=True,
                             timeout=300).stdout
        prints.append(re.search(r"fingerprint (\w+)", out).group(1))
    assert prints[0] == prints[1]


def test_a_deposed_primary_that_still_calls_itself_ready_is_not_convergence():
    """Seed 22264: h2, whose S2 was primary of epoch 4, is isolated while S3 takes epoch 5;
    at the final heal S2 still calls itself ready (primary of epoch 4, at the same seq as the
    others), and the run was judged then, as a divergence. Convergence is by the RM's view:
    every replica a member of it, in its epoch. S2 then learns epoch 5 and takes S3's state."""
    result = run(22264)
    assert result.ok, result.why
    lines = "\n".join(result.tail)  # the last log lines: S2 rejoins before the end
    assert re.search(r"S2: view epoch 5\.\d+: primary S3, ready S1, S2, S3", lines), lines


def test_schedules_draw_every_kind_and_overlap():
    schedules = [draw(seed) for seed in range(1, 301)]
    drawn = {f.kind for s in schedules for f in s.faults}
    assert drawn == set(KINDS)
    overlapping = sum(
        1 for s in schedules
        if any(b.at < a.at + max(a.hold, 0.05)
               for a, b in zip(s.faults, s.faults[1:], strict=False)))
    assert overlapping > 50, "faults must overlap, not wait for the cluster to heal"


def test_a_rolling_reload_reaches_every_daemon_and_the_run_stays_valid():
    """The opt-in reload: a new cluster file, then a SIGHUP to each daemon in turn while the
    load runs. Every daemon takes the new tunables; acknowledged writes survive the change."""
    kinds = ["reload"]
    seed = next(s for s in range(1, 100) if len(draw(s, kinds=kinds).faults) == 2)
    first = draw(seed, kinds=kinds).faults[0].extra["tunables"]
    result = run(seed, kinds=kinds, keep=True)
    assert result.ok, result.why
    change = f"tunables.lease: 0.5 -> {first['lease']}"
    reloaded = {line.split()[1] for line in result.lines
                if "configuration reloaded" in line and change in line}
    assert reloaded == {"S1", "S2", "S3", "LFD1", "LFD2", "LFD3", "GFD", "RM"}
    assert result.acked > 100


def test_an_rm_that_cannot_write_its_record_stops_and_the_run_stays_valid():
    """Seed 2 of the opt-in disk fault with kills: the RM must fail over while its disk is
    full; it stops before acting on the view it could not record (nothing is sent, nothing is
    lost), and once restarted with room again it finishes the failover."""
    result = run(2, kinds=["rm_disk_full", "kill"], keep=True)
    assert result.ok, result.why
    assert result.converged
    halted = [n for n, line in enumerate(result.lines)
              if "RM: cannot record its state" in line and "No space left" in line]
    assert halted, "the disk fault never met a decision"
    after = result.lines[halted[0] + 1:]
    assert any(" RM " in line and "-> view" in line for line in after), "no failover after"
    assert any("exit 70 (task persist died): RM" in e for e in result.events)
    # Its lines name the record's path: the same in every replay (not the scratch directory's).
    assert run(2, kinds=["rm_disk_full", "kill"]).fingerprint == result.fingerprint


def test_opt_in_kinds_are_drawn_only_when_asked_for():
    """``--kinds default,reload``: every default kind and the reload; the default draw (what
    the long runs measured) never has one."""
    assert _kinds(argparse.Namespace(kinds="default,reload")) == [*KINDS, "reload"]
    assert set(OPT_IN) == {"reload", "rm_disk_full"}
    assert not {f.kind for seed in range(1, 301) for f in draw(seed).faults} & set(OPT_IN)
    with pytest.raises(SystemExit, match="unknown fault kinds"):
        _kinds(argparse.Namespace(kinds="default,reboot"))


def test_a_run_under_faults_is_judged_by_every_check():
    result = run(3)
    names = {c["name"]: c["verdict"] for c in result.verdict["checks"]}
    assert names["linearizability"] == "PASS" and names["executions"] == "PASS"
    assert names["acknowledgements"] == "PASS" and names["hostile input"] == "PASS"
    assert result.hostile > 0, "the hostile client ran"
    assert result.ok, result.why


@pytest.mark.parametrize(("fault", "seeds", "kinds"), [
    ("drop_acked_write", 30, None),
    ("reorder", 30, None),
    ("ack_after_deposed", 30, None),
    ("skip_reply_cache", 30, None),
    ("empty_primary_keeps_epoch", 60, None),
    ("early_commit", 100, None),
])
def test_planted_bug_is_found(fault, seeds, kinds):
    """Each planted bug (ftds/faults.py) fails a run within a budget of schedules."""
    args = [SIM, "--fault", fault, "--seeds", str(seeds), "--stop-at-first", "--jobs", "2"]
    if kinds:
        args += ["--kinds", kinds]
    done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{fault} not found in {seeds} schedules:\n{done.stdout[-2000:]}"
    assert "FAIL" in done.stdout


def test_the_json_report_goes_where_the_caller_said_with_every_runs_fingerprint(tmp_path):
    """``--json`` is relative to where ``scripts/sim`` was run (it changes into tests/), and
    holds every run's fingerprint and their digest: what the long run is compared by."""
    done = subprocess.run([SIM, "--seeds", "2", "--first", "11", "--jobs", "1",
                           "--json", "out/report.json"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["fingerprints"]["11"] == run(11).fingerprint
    assert set(report["fingerprints"]) == {"11", "12"}
    assert len(report["summary"]["runs_digest"]) == 16
