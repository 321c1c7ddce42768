"""Fixtures for the lab end-to-end tests: a deployed nspawn lab (scripts/test-lab sets it up)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from labcluster import LabCluster

from ftds_tools.labenv import Lab, LabError


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> LabCluster:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    try:
        lab = Lab()
    except LabError as exc:
        pytest.fail(f"{exc} (scripts/test-lab brings the lab up and deploys)")
    return LabCluster(lab, tmp_path_factory.mktemp("lab"))
