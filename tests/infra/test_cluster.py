"""The cluster as the RM sees it: `ftds status --json` on the manager."""

from __future__ import annotations

import pytest
from conftest import status_json


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


def test_tunables_in_effect(status, config):
    """The heartbeat interval the LFDs run with is the one in the rendered cluster file."""
    want = config["tunables"]["heartbeat_interval"]
    for rid, r in status["replicas"].items():
        assert r["heartbeat_interval"] == pytest.approx(want), rid
