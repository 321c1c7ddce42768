"""``ftds chaos check DIR``: judging a saved run again, and refusing to judge nothing."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from ftds.cli import main

T = "[2026-01-01 10:00:00.000]"


def write_history(directory: Path, name: str = "C1.jsonl") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    op = {"op": "put", "key": "k0", "value": 1}
    events = [{"process": "C1", "type": "invoke", "op": op, "time": 1_000_000_000},
              {"process": "C1", "type": "ok", "op": op, "result": {"ok": True},
               "time": 1_100_000_000, "request_num": 1, "replica": "S1", "seq": 1, "epoch": 1}]
    (directory / name).write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["chaos", "check", str(path)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_refused(code: int, out: str, err: str) -> None:
    assert code != 0
    assert "linearizable" not in out
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    assert "histor" in lines[0]


def test_a_missing_directory_is_refused(tmp_path, capsys):
    assert_refused(*run_check(tmp_path / "no-such-run", capsys))


def test_a_directory_without_histories_is_refused(tmp_path, capsys):
    assert_refused(*run_check(tmp_path, capsys))


def test_an_empty_histories_directory_is_refused(tmp_path, capsys):
    (tmp_path / "histories").mkdir()
    assert_refused(*run_check(tmp_path, capsys))


def test_histories_without_any_operation_are_refused(tmp_path, capsys):
    (tmp_path / "histories").mkdir()
    (tmp_path / "histories" / "C1.jsonl").write_text("")
    assert_refused(*run_check(tmp_path, capsys))


def test_a_valid_saved_run_passes(tmp_path, capsys):
    write_history(tmp_path / "histories")
    code, out, err = run_check(tmp_path, capsys)
    assert code == 0, (out, err)
    assert json.loads(out)["linearizable"] is True


def test_the_saved_replica_logs_are_judged_again(tmp_path, capsys):
    """A run whose replicas diverged must not pass a re-check on its linearizable history."""
    write_history(tmp_path / "histories")
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    (replicas / "S1.log").write_text(
        f"{T} S1: I am the primary of epoch 1 (seq 0, ready: S1, S2)\n"
        f"{T} EXEC S1 seq=1 e=1 <C1, 1>\n")
    (replicas / "S2.log").write_text(
        f"{T} EXEC S2 seq=1 e=1 <C9, 4>\n{T} RESET S2 seq=1 (state replaced by a checkpoint)\n")
    code, out, _ = run_check(tmp_path, capsys)
    result = json.loads(out)
    assert code == 1
    assert result["linearizable"] is True and result["valid"] is False
    assert any(p["check"] == "divergence" for p in result["problems"]["executions"])
