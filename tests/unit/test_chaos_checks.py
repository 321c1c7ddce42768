"""The chaos checker on small hand-made traces: what the replicas executed stays on record.

Each test builds the replicas' logs (``EXEC``/``RESET``/takeover/``DIVERGENCE`` lines, as
ftds/replica writes them) and a few client operations, then judges them as a chaos run does and
asserts which named check fires, in which group of the verdict.
"""

from __future__ import annotations

from typing import Any

from ftds_tools.chaos.history import parse
from ftds_tools.chaos.runner import judge, render_text

T = "[2026-01-01 10:00:00.000]"


def ex(rid: str, seq: int, epoch: int, client: str, r: int, dup: bool = False) -> str:
    tail = " duplicate-not-executed" if dup else ""
    return f"{T} EXEC {rid} seq={seq} e={epoch} <{client}, {r}>{tail}"


def reset(rid: str, seq: int) -> str:
    return f"{T} RESET {rid} seq={seq} (state replaced by a checkpoint)"


def start(rid: str) -> str:
    return (f"{T} {rid}: serving clients on 127.0.0.1:7101, control on 127.0.0.1:7102 (passive "
            "mode, pid 4242); i_am_ready = 0 until a view makes it ready")


def takeover(rid: str, epoch: int, seq: int) -> str:
    return f"{T} {rid}: I am the primary of epoch {epoch} (seq {seq}, ready: S1, S2, S3)"


def diverged(rid: str, seq: int) -> str:
    return (f"{T} ERROR: {rid}: DIVERGENCE at seq {seq}: my digest 0123456789ab, primary's "
            "ba9876543210; installing the checkpoint")


def logs(**replicas: list[str]) -> dict[str, str]:
    return {rid: "\n".join(lines) + "\n" for rid, lines in replicas.items()}


def history(*ops: tuple[str, int, str, float, float, str, int, int]) -> list[Any]:
    """(client, request_num, f, invoke, complete, replica, seq, epoch) -> acknowledged ops."""
    events: list[dict[str, Any]] = []
    for client, r, f, invoke, complete, replica, seq, epoch in ops:
        op = {"op": f, "key": "k0"} | ({"value": f"{client}:{r}"} if f == "put" else {})
        events.append({"process": client, "type": "invoke", "op": op,
                       "time": int(invoke * 1e9)})
        result = {"ok": True} if f == "put" else {"ok": True, "value": None}
        events.append({"process": client, "type": "ok", "op": op, "result": result,
                       "time": int(complete * 1e9), "request_num": r, "replica": replica,
                       "seq": seq, "epoch": epoch})
    return parse(events)


def verdict(replica_logs: dict[str, str], ops: list[Any] | None = None,
            status: dict[str, Any] | None = None) -> dict[str, Any]:
    return judge(ops or [], replica_logs, status or {}, {})


def fired(v: dict[str, Any]) -> set[tuple[str, str]]:
    return {(group, p["check"]) for group, found in v["problems"].items() for p in found}


PRIMARY_S1 = [takeover("S1", 1, 0)]


# ---------------------------------------------------------------- 1. RESET erases nothing ----
def test_divergence_before_a_reset_stays_on_record():
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), ex("S1", 2, 1, "C1", 2)],
        # S2 executed another request at seq 2, then a checkpoint replaced its state.
        S2=[ex("S2", 1, 1, "C1", 1), ex("S2", 2, 1, "C2", 1), reset("S2", 2),
            ex("S2", 3, 1, "C1", 3)]))
    assert ("executions", "divergence") in fired(v)
    assert not v["valid"]
    assert "seq 2" in v["first_violation"]["text"]


def test_divergence_before_a_restart_stays_on_record():
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), ex("S1", 2, 1, "C1", 2)],
        S2=[ex("S2", 1, 1, "C1", 1), ex("S2", 2, 1, "C2", 1), start("S2"), reset("S2", 2)]))
    assert ("executions", "divergence") in fired(v)


def test_a_request_executed_again_after_a_reset_in_one_process_is_executed_twice():
    v = verdict(logs(S2=[*PRIMARY_S1, ex("S2", 1, 1, "C1", 1), ex("S2", 2, 1, "C2", 1),
                         reset("S2", 2), ex("S2", 3, 1, "C1", 1)]))
    assert ("executions", "executed twice") in fired(v)


def test_a_reset_below_what_the_same_process_applied_is_state_moved_backward():
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 6))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 6)), reset("S2", 3)]))
    assert ("executions", "state moved backward") in fired(v)
    problem = next(p for p in v["problems"]["executions"]
                   if p["check"] == "state moved backward")
    assert "S2" in problem["text"] and "3" in problem["text"]


def test_a_reset_below_what_an_earlier_process_applied_is_fine():
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 6))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 6)), start("S2"), reset("S2", 3),
            ex("S2", 4, 1, "C1", 4), ex("S2", 5, 1, "C1", 5)]))
    assert v["valid"], v["first_violation"]


def test_checkpoint_installs_at_or_beyond_what_was_applied_are_fine():
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 8))],
        S2=[ex("S2", 1, 1, "C1", 1), ex("S2", 2, 1, "C1", 2), reset("S2", 2),
            reset("S2", 5), ex("S2", 6, 1, "C1", 6), ex("S2", 7, 1, "C1", 7)]))
    assert v["valid"], v["first_violation"]


def test_entries_a_later_epoch_took_over_without_are_abandoned_not_divergent():
    """S1 (epoch 1) ordered seqs 4 and 5 that nobody else had; S2 took over epoch 2 at seq 3
    and ordered other requests there (S1's request 4 among them, again). The deposed S1, still
    the same process, then installs S2's checkpoint at seq 4: its 4 and 5 were never committed,
    so this is neither divergence, nor a request executed twice, nor a step backward."""
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 6)), reset("S1", 4),
            ex("S1", 5, 2, "C1", 4)],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 4)), takeover("S2", 2, 3),
            ex("S2", 4, 2, "C2", 1), ex("S2", 5, 2, "C1", 4)]))
    assert v["valid"], v["first_violation"]


def test_a_duplicate_the_state_machine_refused_is_not_executed_twice():
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), ex("S1", 2, 1, "C1", 1, dup=True)],
        S2=[ex("S2", 1, 1, "C1", 1), ex("S2", 2, 1, "C1", 1, dup=True)]))
    assert v["valid"], v["first_violation"]


# ------------------------------------------------------ 2. DIVERGENCE lines are read ----
def test_a_divergence_line_in_a_replica_log_fails_the_verdict():
    v = verdict(logs(S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1)],
                     S2=[ex("S2", 1, 1, "C1", 1), diverged("S2", 1)]))
    assert ("divergence log", "divergence") in fired(v)
    assert v["divergence"] >= 1 and not v["valid"]
    problem = v["problems"]["divergence log"][0]
    assert "S2" in problem["text"] and "seq 1" in problem["text"]


# ------------------------------------ 3. each planted bug's signature, its own check ----
def test_skip_reply_cache_signature_is_executed_twice():
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 25), ex("S1", 2, 1, "C1", 25)],
        S2=[ex("S2", 1, 1, "C1", 25), ex("S2", 2, 1, "C1", 25)]))
    assert ("executions", "executed twice") in fired(v)


def test_drop_acked_write_signature_is_acknowledged_lost():
    """S1 acknowledged seq 5 before S2 had it, then died; S2 took over at seq 3."""
    ops = history(("C1", 5, "put", 1.0, 1.1, "S1", 5, 1))
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 6))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 4)), takeover("S2", 2, 3),
            ex("S2", 4, 2, "C2", 1)]), ops)
    assert ("acknowledgements", "acknowledged lost") in fired(v)
    # Nothing says S1 was deposed when it acknowledged: it was not.
    assert ("epochs", "acknowledged after deposed") not in fired(v)
    assert v["acked_lost"] >= 1


def test_an_acknowledgement_the_history_holds_is_not_lost():
    ops = history(("C1", 3, "put", 1.0, 1.1, "S1", 3, 1), ("C2", 1, "put", 2.0, 2.1, "S2", 4, 2))
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 4))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 4)), takeover("S2", 2, 3),
            ex("S2", 4, 2, "C2", 1)]), ops)
    assert v["valid"], v["first_violation"]


def test_an_acknowledgement_of_another_request_at_that_seq_is_lost():
    ops = history(("C1", 7, "put", 1.0, 1.1, "S1", 2, 1))
    v = verdict(logs(S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), ex("S1", 2, 1, "C2", 1)]), ops)
    assert ("acknowledgements", "acknowledged lost") in fired(v)


def test_ack_after_deposed_signature_in_the_final_status():
    """S1 ignored the view that deposed it and committed alone beyond S2's takeover."""
    status = {"S1": {"id": "S1", "role": "primary", "epoch": 1, "seq": 9, "commit": 9,
                     "i_am_ready": 1, "digest": "a"},
              "S2": {"id": "S2", "role": "primary", "epoch": 2, "seq": 6, "commit": 6,
                     "i_am_ready": 1, "digest": "b"}}
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 10))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 6)), takeover("S2", 2, 5),
            ex("S2", 6, 2, "C2", 1)]), status=status)
    assert ("epochs", "acknowledged after deposed") in fired(v)
    assert v["split_brain"] >= 1


def test_a_deposed_primary_that_committed_nothing_new_is_fine():
    status = {"S1": {"id": "S1", "role": "primary", "epoch": 1, "seq": 7, "commit": 5,
                     "i_am_ready": 0, "digest": "a"},
              "S2": {"id": "S2", "role": "primary", "epoch": 2, "seq": 6, "commit": 6,
                     "i_am_ready": 1, "digest": "b"}}
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 8))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 6)), takeover("S2", 2, 5),
            ex("S2", 6, 2, "C2", 1)]), status=status)
    assert ("epochs", "acknowledged after deposed") not in fired(v)
    assert not fired(v) & {("executions", "divergence"), ("executions", "executed twice"),
                           ("executions", "state moved backward")}


def test_ack_after_deposed_signature_in_the_client_history():
    """A client saw epoch 2 acknowledge, then sent a request that S1 acknowledged in epoch 1."""
    ops = history(("C2", 1, "put", 1.0, 1.5, "S2", 6, 2), ("C1", 8, "put", 2.0, 2.1, "S1", 8, 1))
    v = verdict(logs(
        S1=[*PRIMARY_S1, *(ex("S1", s, 1, "C1", s) for s in range(1, 9))],
        S2=[*(ex("S2", s, 1, "C1", s) for s in range(1, 6)), takeover("S2", 2, 5),
            ex("S2", 6, 2, "C2", 1)]), ops)
    assert ("epochs", "acknowledged after deposed") in fired(v)


def test_two_takeovers_of_one_epoch_are_split_brain():
    v = verdict(logs(S1=[*PRIMARY_S1, takeover("S1", 2, 0)], S2=[takeover("S2", 2, 0)]))
    assert ("epochs", "split brain") in fired(v)


def test_reorder_signature_is_divergence():
    """A member applied two entries of a batch swapped; the checkpoint then hid it."""
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), ex("S1", 2, 1, "C2", 1)],
        S2=[ex("S2", 1, 1, "C2", 1), ex("S2", 2, 1, "C1", 1), diverged("S2", 2),
            reset("S2", 2)]))
    assert ("executions", "divergence") in fired(v)
    assert ("divergence log", "divergence") in fired(v)
    # Each replica executed each request once, at different seqs: not executed twice.
    assert ("executions", "executed twice") not in fired(v)


def test_one_request_at_two_seqs_the_replicas_agree_on_is_executed_twice():
    """Each process saw one of the two copies only (restarts), but the history holds both."""
    v = verdict(logs(
        S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1), start("S1"), reset("S1", 1),
            ex("S1", 2, 1, "C1", 1)],
        S2=[ex("S2", 1, 1, "C1", 1), start("S2"), reset("S2", 1), ex("S2", 2, 1, "C1", 1)]))
    assert ("executions", "executed twice") in fired(v)


# ------------------------------------------------------ every check, by name, in the report ----
CHECKS = ("linearizability", "counters", "executions", "acknowledgements", "epochs", "digests",
          "divergence log")


def test_each_check_has_a_named_verdict_in_the_json_and_the_table():
    v = verdict(logs(S1=[*PRIMARY_S1, ex("S1", 1, 1, "C1", 1)],
                     S2=[ex("S2", 1, 1, "C1", 1), diverged("S2", 1)]),
                history(("C1", 1, "put", 1.0, 1.1, "S1", 1, 1)))
    checks = {c["name"]: c for c in v["checks"]}
    assert set(CHECKS) <= set(checks)
    assert checks["divergence log"]["verdict"] == "FAIL"
    assert checks["linearizability"]["verdict"] == "PASS"
    report = {"settings": {"target": "local", "mode": "passive", "schedule": "kills", "seed": 1},
              "faults": 0, "duration_s": 1.0, "faults_by_kind": {}, "operations": 1,
              "outcomes": {"ok": 1}, "faults_not_healed": 0, "incidents": [], "verdict": v}
    text = render_text(report)
    for name in CHECKS:
        line = next(x for x in text.splitlines() if x.strip().startswith(name))
        assert ("FAIL" if name == "divergence log" else "PASS") in line, line


def test_the_report_gives_the_acknowledged_rate_over_the_clients_run():
    from ftds_tools.chaos.runner import RunSettings, build_report

    ops = history(("C1", 1, "put", 10.0, 10.5, "S1", 1, 1),
                  ("C1", 2, "put", 11.0, 12.0, "S1", 2, 1),
                  ("C2", 1, "put", 10.2, 14.0, "S1", 3, 1))
    report = build_report(RunSettings(), [], ops, verdict(logs(), ops), [], [], 0.0)
    assert report["clients_s"] == 4.0 and report["acked_per_s"] == 0.8
    assert "1 acknowledged/s over the clients' 4.0s" in render_text(report)


def test_a_log_missing_lines_of_the_run_is_a_problem_not_a_pass():
    """A rotated journal once made the checker take a deposed primary's abandoned suffix for
    the history (the new primary's takeover line was gone): a log known to be incomplete is
    reported as such, first among the executions' problems."""
    log = ("LOG INCOMPLETE S2: the journal of h2 no longer holds ftds-replica@S2.service's "
           "lines from before the run began (raise SystemMaxUse)\n" + ex("S2", 7, 1, "C1", 1))
    v = verdict(logs(S1=[*PRIMARY_S1], S2=[log]))
    assert not v["valid"]
    first = v["problems"]["executions"][0]
    assert first["check"] == "log incomplete" and "S2's log is missing lines" in first["text"]
