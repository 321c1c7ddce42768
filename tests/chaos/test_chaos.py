"""The chaos suite on loopback: a seeded run must be valid, and every planted bug caught.

A checker that passes everything is worthless: each planted bug (``FTDS_FAULT``, off unless set)
breaks one promise, and the run's verdict must name that broken promise.
"""

from __future__ import annotations

import pytest

from ftds.chaos.runner import RunSettings, run_chaos


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
    # (bug, mode, schedule, faults, the checks that must fire)
    # Skipping the reply cache shows when a request comes again after it ran: the clients
    # send every 25th request twice (as every chaos run does), so it always does.
    ("skip_reply_cache", "passive", "kills", 3, {"executed twice", "linearizability"}),
    ("drop_acked_write", "passive", "kills", 2, {"acknowledged lost", "linearizability",
                                                "acknowledged after deposed"}),
    ("reorder", "active", "kills", 1, {"divergence"}),
    ("ack_after_deposed", "passive", "pauses", 1, {"acknowledged after deposed", "divergence",
                                                  "split brain"}),
]


@pytest.mark.parametrize(("bug", "mode", "schedule", "faults", "expected"), PLANTED,
                         ids=[p[0] for p in PLANTED])
def test_planted_bug_is_caught(tmp_path, bug, mode, schedule, faults, expected):
    report = chaos(tmp_path, mode=mode, schedule=schedule, faults=faults, seed=2,
                   env={"FTDS_FAULT": bug})
    v = report["verdict"]
    assert not v["valid"], f"{bug} went unnoticed"
    fired = {p["check"] for group in v["problems"].values() for p in group}
    assert fired & expected, f"{bug}: expected one of {expected}, got {fired}"
    assert v["first_violation"]["text"]
