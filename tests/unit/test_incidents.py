"""The RM's incident record: answered from a bounded index in memory, the file only appended to."""

from __future__ import annotations

import json

from ftds.rm import incidents
from ftds.rm.incidents import KEEP, IncidentLog


def write_history(path, count: int, *, ids: bool = True) -> None:
    with open(path, "w") as fh:
        for i in range(1, count + 1):
            record = {"replica": "S2", "cause": "crash", "detected": float(i)}
            if ids:
                record["id"] = i
            fh.write(json.dumps(record) + "\n")


def close_one(log: IncidentLog, replica: str = "S3") -> int:
    incident = log.opened(replica, "crash", was_primary=False, confirmed_dead=True)
    log.mark(replica, "ready")
    return incident.id


def test_a_long_history_is_read_from_its_tail_once_and_answered_from_memory(tmp_path):
    path = tmp_path / "incidents.jsonl"
    write_history(path, 20_000)
    log = IncidentLog(str(tmp_path))
    path.unlink()  # what follows must not need the file
    shown = log.all()
    assert len(shown) == KEEP
    assert [r["id"] for r in shown] == list(range(20_000 - KEEP + 1, 20_001))
    assert close_one(log) == 20_001  # ids go on where the file left off
    assert log.all()[-1]["id"] == 20_001 and len(log.all()) == KEEP


def test_open_incidents_are_shown_after_the_closed_ones(tmp_path):
    log = IncidentLog(str(tmp_path))
    first = close_one(log)
    log.opened("S1", "lost", was_primary=True, confirmed_dead=False)
    shown = log.all()
    assert [(r["id"], r["closed"]) for r in shown] == [(first, True), (first + 1, False)]
    assert json.loads((tmp_path / "incidents.jsonl").read_text())["id"] == first


def test_ids_of_a_file_without_them_count_its_lines(tmp_path):
    write_history(tmp_path / "incidents.jsonl", 7, ids=False)
    (tmp_path / "incidents.jsonl").open("a").write("{not json\n")
    log = IncidentLog(str(tmp_path))
    assert len(log.all()) == 7  # the broken line is skipped
    assert close_one(log) == 9  # as an older RM would have numbered it: lines + 1


def test_the_file_is_rotated_so_the_disk_is_bounded_too(tmp_path, monkeypatch):
    monkeypatch.setattr(incidents, "MAX_FILE", 2000)
    log = IncidentLog(str(tmp_path))
    ids = [close_one(log) for _ in range(12)]
    old = tmp_path / "incidents.jsonl.1"
    assert old.exists() and old.stat().st_size > 2000
    assert (tmp_path / "incidents.jsonl").stat().st_size <= 2000 + 1000
    assert [r["id"] for r in log.all()] == ids
    again = IncidentLog(str(tmp_path))  # a restarted RM: what the two files hold, ids go on
    kept = [r["id"] for r in again.all()]
    assert kept and kept == ids[-len(kept):]
    assert close_one(again) == ids[-1] + 1
