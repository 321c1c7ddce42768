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
