"""Cluster factories for the loopback tests; every cluster (and its clients) is stopped after."""

from __future__ import annotations

import pytest
from helpers import LocalCluster, ManagedCluster


def _factory(tmp_path, cls, prefix):
    clusters = []

    def make(**kwargs):
        cluster = cls(tmp_path / f"{prefix}{len(clusters)}", **kwargs)
        clusters.append(cluster)
        return cluster

    return make, clusters


@pytest.fixture
def make_cluster(tmp_path):
    """Replicas only; views by ``ftds ctl`` (the RM's part done by the test)."""
    make, clusters = _factory(tmp_path, LocalCluster, "c")
    yield make
    for cluster in clusters:
        cluster.stop_all()


@pytest.fixture
def make_managed(tmp_path):
    """The whole embedded cluster under the local supervisor: LFDs, GFD and RM included."""
    make, clusters = _factory(tmp_path, ManagedCluster, "m")
    yield make
    for cluster in clusters:
        cluster.stop_all()
