"""The cluster as the RM sees it: `ftds status --json` on the manager."""

from __future__ import annotations

import pytest
from conftest import FTDS_PYTHON, status_json
from prometheus_client.parser import text_string_to_metric_families


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.fixture
def status(host, role):
    if not role.manager:
        pytest.skip("ftds status is checked on the manager")
    return status_json(host)


def test_status_healthy(host, role):
    if not role.manager:
        pytest.skip("ftds status is checked on the manager")
    result = host.run("/usr/local/bin/ftds status")
    assert result.rc == 0, f"ftds status exited {result.rc}:\n{result.stdout}{result.stderr}"


def test_every_replica_ready(status, config):
    assert set(status["replicas"]) == {r["id"] for r in config["replicas"]}
    not_ready = [rid for rid, r in status["replicas"].items() if not r["ready"]]
    assert not not_ready, f"not ready: {not_ready}"


def test_a_primary(status, config):
    assert status["primary"] in status["replicas"]
    assert status["replicas"][status["primary"]]["role"] in ("primary", "sequencer")
    assert status["mode"] == config["mode"]


def test_gfd_membership(status, config):
    assert status["gfd_connected"] and status["gfd_stable"]
    assert sorted(status["membership"]) == sorted(r["id"] for r in config["replicas"])


def test_metrics_endpoint(host, role, config, status):
    """The RM's Prometheus page, fetched on the manager: parseable, and saying what status says."""
    port = config["rm"].get("metrics_port")
    if not port:
        pytest.skip("metrics are off (rm.metrics_port: 0)")
    page = host.check_output(
        f"{FTDS_PYTHON} -c 'import sys, urllib.request; sys.stdout.write(urllib.request"
        f".urlopen(\"http://{config['rm']['host']}:{port}/metrics\", timeout=5).read().decode())'")
    samples = parse_metrics(page)
    assert samples[("ftds_rm_responsive", ())] == 1
    assert samples[("ftds_epoch", ())] == status["epoch"]
    for rid in status["replicas"]:
        assert samples[("ftds_replica_ready", (("replica", rid),))] == 1, rid
        assert samples[("ftds_replica_primary", (("replica", rid),))] == \
            int(rid == status["primary"]), rid


def test_replica_metrics_endpoint(host, replica_spec):
    """Each replica's own Prometheus page, fetched on its host: its metrics port listens and
    the page parses, says ftds_build_info and is about this replica."""
    port = replica_spec.get("metrics_port")
    rid = replica_spec["id"]
    if not port:
        pytest.skip(f"{rid}'s metrics are off (metrics_port: 0)")
    address = replica_spec["host"]
    assert host.socket(f"tcp://{address}:{port}").is_listening, \
        f"nothing listens on {address}:{port} ({rid}'s metrics_port)"
    url_host = f"[{address}]" if ":" in address else address
    page = host.check_output(
        f"{FTDS_PYTHON} -c 'import sys, urllib.request; sys.stdout.write(urllib.request"
        f".urlopen(\"http://{url_host}:{port}/metrics\", timeout=5).read().decode())'")
    samples = parse_metrics(page)
    assert any(name == "ftds_build_info" for name, _ in samples), "no ftds_build_info"
    assert samples[("ftds_replica_responsive", (("replica", rid),))] == 1
    assert ("ftds_replica_request_duration_seconds_count", (("replica", rid),)) in samples


def test_tunables_in_effect(status, config):
    """The heartbeat interval the LFDs run with is the one in the rendered cluster file."""
    want = config["tunables"]["heartbeat_interval"]
    for rid, r in status["replicas"].items():
        assert r["heartbeat_interval"] == pytest.approx(want), rid
