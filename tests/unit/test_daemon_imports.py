"""The daemons import nothing of the embedded cluster (``ftds.local``) nor of the development
tools (``ftds_tools``): what runs on a host is the package alone (issue 12).

Each module is imported in a fresh interpreter, as a unit starts it, and what that pulled in is
read from its ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

DAEMONS = [
    "ftds.replica",          # the replica's package entry
    "ftds.replica.server",   # ftds replica (ftds-replica@.service)
    "ftds.lfd",              # ftds lfd (ftds-lfd@.service)
    "ftds.gfd",              # ftds gfd (ftds-gfd.service)
    "ftds.rm.manager",       # ftds rm (ftds-rm.service)
    "ftds.rm.launcher",      # how the RM brings a replica back
    "ftds.cli",              # every unit's ExecStart goes through it
]


def imported_by(module: str) -> list[str]:
    code = f"import json, sys\nimport {module}\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("module", DAEMONS)
def test_a_daemon_imports_neither_the_embedded_cluster_nor_the_tools(module: str) -> None:
    modules = imported_by(module)
    assert module in modules
    unwanted = [m for m in modules if m == "ftds.local" or m.split(".")[0] == "ftds_tools"]
    assert unwanted == [], f"{module} imports {unwanted}"


def test_the_check_can_see_an_import_of_the_embedded_cluster() -> None:
    assert "ftds.local" in imported_by("ftds.local")


# The decision cores: state machines fed events, no I/O. Importing one pulls in no event loop,
# socket, TLS or SSH, so nothing in it can wait on the network or a clock of its own.
CORES = ["ftds.rm.core", "ftds.replica.orderer", "ftds.replica.viewchange"]
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "paramiko", "ftds.wire"}


@pytest.mark.parametrize("module", CORES)
def test_a_decision_core_imports_no_io(module: str) -> None:
    modules = imported_by(module)
    assert module in modules
    assert sorted(IO_MODULES & set(modules)) == [], f"{module} imports I/O"


def test_the_stream_to_the_orderer_does_not_import_the_replica():
    """No import cycle between the replica and its upstream link, not even for type checking:
    the link names what it needs of the replica as a protocol."""
    source = Path(__file__).resolve().parents[2] / "ftds" / "replica" / "upstream.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text()))
                if isinstance(node, ast.ImportFrom)}
    assert "core" not in imported and "ftds.replica.core" not in imported
