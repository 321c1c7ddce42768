"""`ftds bench lab --load`: the per-client-count figures, the driver run, the options, and the
load-only run's wiring (no lab: the lab, the cluster and the driver are stand-ins)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ftds_tools.bench import lab_bench
from ftds_tools.labenv import REPO


def driver_output(*, acked: int, window_s: float = 5.0, p50_ms: float, p99_ms: float,
                  errors: dict[str, int] | None = None, clients: int = 16,
                  client_cpu_s: float = 1.0) -> dict[str, Any]:
    """What `bench/driver.py --system ftds` prints: its Window.summary() and the run's fields,
    through JSON as the bench reads it."""
    printed = json.dumps({
        "acked": acked, "ops_s": acked / window_s, "p50_ms": p50_ms, "p99_ms": p99_ms,
        "errors": errors or {}, "window_s": window_s,
        "clients": clients, "system": "ftds", "client_cpu_s": client_cpu_s,
        "server_cpu_s": {}, "servers_gone": [], "unfinished": 0})
    return json.loads(printed)


# -- the figures of one client count -----------------------------------------------------------
def test_medians_over_three_rounds_and_errors_summed_by_kind() -> None:
    rounds = [
        driver_output(acked=5000, p50_ms=1.0, p99_ms=9.0, errors={"timeout": 2},
                      client_cpu_s=1.0),
        driver_output(acked=15000, p50_ms=0.5, p99_ms=3.0, client_cpu_s=3.0),
        driver_output(acked=6000, p50_ms=2.0, p99_ms=4.0, errors={"error": 1, "timeout": 1},
                      client_cpu_s=0.6),
    ]
    cell = lab_bench.load_cell(rounds)
    assert cell["ops_s"] == 1200  # median of 1000, 3000, 1200 (not the mean, 1733)
    assert cell["p50_ms"] == 1.0
    assert cell["p99_ms"] == 4.0
    assert cell["client_us_op"] == 200  # median of 200, 200, 100 us per op
    assert cell["errors"] == {"timeout": 3, "error": 1}
    assert (cell["rounds"], cell["failed_rounds"], cell["failures"]) == (3, 0, [])


def test_failed_rounds_are_counted_and_kept_out_of_the_medians() -> None:
    rounds = [
        driver_output(acked=5000, p50_ms=1.0, p99_ms=8.0, errors={"timeout": 4}),
        {"error": "driver exited 1", "stderr": "Traceback ...\nConnectionRefusedError"},
        driver_output(acked=7000, p50_ms=3.0, p99_ms=10.0),
        {"error": "driver timed out after 65 s", "stderr": ""},
    ]
    cell = lab_bench.load_cell(rounds)
    assert cell["rounds"] == 2
    assert cell["failed_rounds"] == 2
    assert cell["ops_s"] == 1200  # median of the two good rounds: 1000 and 1400
    assert cell["p50_ms"] == 2.0
    assert cell["p99_ms"] == 9.0
    assert cell["errors"] == {"timeout": 4}
    assert cell["failures"] == [
        {"error": "driver exited 1", "stderr": "Traceback ...\nConnectionRefusedError"},
        {"error": "driver timed out after 65 s", "stderr": ""}]


def test_no_successful_round_has_no_figures_and_an_empty_window_no_latency() -> None:
    failed = lab_bench.load_cell([{"error": "cluster not healthy within 120 s", "stderr": ""}])
    assert failed["ops_s"] is None and failed["p50_ms"] is None and failed["p99_ms"] is None
    assert (failed["rounds"], failed["failed_rounds"]) == (0, 1)
    # A window with no acknowledgement: the driver prints NaN latencies; the rate still counts.
    empty = driver_output(acked=0, p50_ms=math.nan, p99_ms=math.nan, errors={"error": 7})
    cell = lab_bench.load_cell([empty, driver_output(acked=5000, p50_ms=1.5, p99_ms=6.0)])
    assert cell["ops_s"] == 500  # median of 0 and 1000
    assert cell["p50_ms"] == 1.5 and cell["p99_ms"] == 6.0  # the NaNs are not numbers to rank
    assert cell["errors"] == {"error": 7}
    json.dumps(cell, allow_nan=False)  # the report stays strict JSON


def test_table_names_hosts_and_replicas_and_shows_failed_rounds() -> None:
    load = {"1": lab_bench.load_cell([driver_output(acked=4000, p50_ms=1.25, p99_ms=2.5)]),
            "128": lab_bench.load_cell([{"error": "driver exited 1", "stderr": "x"}])}
    lines = lab_bench.load_table(load, hosts=5, replicas=3, rounds=1, duration=5)
    assert "5 hosts, 3 replicas" in lines[0]
    assert lines[1].split() == ["C", "ops/s", "p50", "ms", "p99", "ms", "errors"]
    assert lines[2].split() == ["1", "800", "1.25", "2.50", "0"]
    assert lines[3].split()[:5] == ["128", "-", "-", "-", "0"]
    assert "1 of 1 rounds failed" in lines[3]


# -- one driver run ----------------------------------------------------------------------------
class FakeRun:
    def __init__(self, result: Any) -> None:
        self.result = result
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def __call__(self, cmd: list[str], **kwargs: Any) -> Any:
        self.calls.append((cmd, kwargs))
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def test_drive_runs_the_checkouts_driver_and_reads_its_json(monkeypatch, tmp_path) -> None:
    out = driver_output(acked=500, p50_ms=1.0, p99_ms=2.0)
    fake = FakeRun(subprocess.CompletedProcess([], 0, json.dumps(out) + "\n", ""))
    monkeypatch.setattr(lab_bench.subprocess, "run", fake)
    assert lab_bench.drive(tmp_path / "cluster.yml", 16, 5.0) == out
    (cmd, kwargs), = fake.calls
    assert cmd[:3] == [sys.executable, "-m", "bench.driver"]
    args = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert args == {"--system": "ftds", "--config": str(tmp_path / "cluster.yml"),
                    "--clients": "16", "--warmup": "1", "--duration": "5"}
    assert kwargs["cwd"] == REPO and kwargs["timeout"] == 65
    assert str(REPO) in kwargs["env"]["PYTHONPATH"].split(":")


@pytest.mark.parametrize(("result", "error", "stderr"), [
    (subprocess.CompletedProcess([], 1, "", "x" * 2000 + "ConnectionRefusedError"),
     "driver exited 1", "ConnectionRefusedError"),
    (subprocess.TimeoutExpired(["driver"], 65, stderr=b"still waiting"),
     "driver timed out after 65 s", "still waiting"),
    (subprocess.CompletedProcess([], 0, "not json", ""), "driver printed no JSON", "not json"),
    (subprocess.CompletedProcess([], 0, '{"acked": 3}', ""),
     "driver output lacks the expected figures", '{"acked": 3}'),
])
def test_a_failing_driver_is_a_failed_round_not_an_exception(
        monkeypatch, tmp_path, result: Any, error: str, stderr: str) -> None:
    monkeypatch.setattr(lab_bench.subprocess, "run", FakeRun(result))
    got = lab_bench.drive(tmp_path / "cluster.yml", 1, 5.0)
    assert got["error"] == error
    assert got["stderr"].endswith(stderr)
    assert len(got["stderr"]) <= 800  # a tail, not the whole output


# -- the options -------------------------------------------------------------------------------
class NoLab:
    def __init__(self) -> None:
        raise AssertionError("the options should have been refused before the lab is touched")


@pytest.mark.parametrize("argv", [
    ["--load", "0"], ["--load", "x"], ["--load", "-3"], ["--load=-3"], ["--load", "1,,16"],
    ["--load", "1,16,1"], ["--load", "16", "--load-rounds", "0"],
    ["--load", "16", "--load-duration", "0"], ["--load", "16", "--load-duration", "soon"],
    ["--trials", "-1", "--load", "16"],
])
def test_bad_load_options_are_a_one_line_usage_error(monkeypatch, capsys, argv) -> None:
    monkeypatch.setattr(lab_bench, "Lab", NoLab)
    with pytest.raises(SystemExit) as exc:
        lab_bench.main(argv)
    assert exc.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("ftds bench lab: error: ")


def test_trials_0_without_load_is_refused_as_nothing_to_do(monkeypatch, capsys) -> None:
    monkeypatch.setattr(lab_bench, "Lab", NoLab)
    with pytest.raises(SystemExit) as exc:
        lab_bench.main(["--trials", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ftds bench lab: error: --trials 0")
    assert err[-1].endswith("nothing to do")


def test_load_options_parse() -> None:
    assert lab_bench.client_counts("1,16,128") == [1, 16, 128]
    assert lab_bench.COUNT("3") == 3
    assert lab_bench.SECONDS("2.5") == 2.5


# -- a load-only run, wired to stand-ins -------------------------------------------------------
class FakeLab:
    addresses = {f"h{i}": f"10.0.0.{i}" for i in range(1, 6)}
    replica_hosts = {"S1": "h1", "S2": "h2", "S3": "h3"}

    def fetch_cluster(self, dest: Path) -> Path:
        path = dest / "cluster.yml"
        path.write_text("name: fake\n")
        return path


class FakeConfig:
    def read_key(self) -> bytes:
        return b"k"


def test_load_only_runs_each_count_in_order_each_round_once_healthy(
        monkeypatch, tmp_path, capsys) -> None:
    events: list[Any] = []

    async def wait_healthy(config: Any, key: bytes, timeout: float = 30) -> dict[str, Any]:
        events.append("healthy")
        return {}

    def drive(config_path: Path, clients: int, duration: float) -> dict[str, Any]:
        events.append((clients, duration))
        if clients == 16 and events.count((16, 2.0)) == 1:
            return {"error": "driver exited 1", "stderr": "boom"}
        return driver_output(acked=clients * 100, window_s=2.0, p50_ms=1.0, p99_ms=2.0,
                             clients=clients)

    async def no_trials(*args: Any) -> None:
        raise AssertionError("--trials 0 runs no recovery trial")

    monkeypatch.setattr(lab_bench, "Lab", FakeLab)
    monkeypatch.setattr(lab_bench, "load_config", lambda path: FakeConfig())
    monkeypatch.setattr(lab_bench, "wait_healthy", wait_healthy)
    monkeypatch.setattr(lab_bench, "drive", drive)
    monkeypatch.setattr(lab_bench, "trials", no_trials)
    report_path = tmp_path / "lab.json"
    assert lab_bench.main(["--trials", "0", "--load", "1,16", "--load-rounds", "2",
                           "--load-duration", "2", "--json", str(report_path)]) == 0
    # The final wait after the (skipped) trials, then each run preceded by its own wait.
    assert events == ["healthy", "healthy", (1, 2.0), "healthy", (16, 2.0),
                      "healthy", (1, 2.0), "healthy", (16, 2.0)]
    report = json.loads(report_path.read_text())
    assert (report["hosts"], report["replicas"]) == (5, 3)
    assert list(report["load"]) == ["1", "16"]
    assert report["load"]["1"]["ops_s"] == 50 and report["load"]["1"]["rounds"] == 2
    assert report["load"]["16"]["failed_rounds"] == 1
    assert report["load"]["16"]["failures"] == [{"error": "driver exited 1", "stderr": "boom"}]
    assert not {"stop_to_ready", "power_cut_failover"} & report.keys()
    printed = capsys.readouterr().out
    assert "systemctl stop" not in printed  # no recovery part in the printed report
    assert "5 hosts, 3 replicas" in printed and "ops/s" in printed
