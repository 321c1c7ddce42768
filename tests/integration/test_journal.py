"""Against a real journald: ``journalctl -p warning`` shows a daemon's warnings and errors,
every line of a traceback included, and not its info lines.

Needs a journald instance of its own namespace, so it runs only when told which one
(``FTDS_TEST_JOURNAL_NAMESPACE``), e.g. as root::

    /lib/systemd/systemd-journald ftdstest &
    FTDS_TEST_JOURNAL_NAMESPACE=ftdstest pytest tests/integration/test_journal.py
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

NAMESPACE = os.environ.get("FTDS_TEST_JOURNAL_NAMESPACE", "")
pytestmark = pytest.mark.skipif(not NAMESPACE, reason="FTDS_TEST_JOURNAL_NAMESPACE not set")

CHILD = r'''
import logging
from ftds.log import setup_logging
setup_logging("auto")
log = logging.getLogger("ftds.rm")
log.info("RM: 3 members: S1, S2, S3")
log.warning("RM: S2: restart budget exhausted")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("RM: relaunch of S2 failed")
'''


def _entries(identifier: str, *args: str) -> list[dict[str, str]]:
    out = subprocess.run(["journalctl", f"--namespace={NAMESPACE}", "-o", "json", "--no-pager",
                          f"SYSLOG_IDENTIFIER={identifier}", *args],
                         capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_journalctl_priority_filter_sees_warnings_and_whole_tracebacks():
    identifier = f"ftds-test-{uuid.uuid4().hex[:8]}"
    # What systemd does for a unit's stderr: a stream connection with a header, and
    # JOURNAL_STREAM naming it (device:inode).
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(f"/run/systemd/journal.{NAMESPACE}/stdout")
    sock.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    st = os.fstat(sock.fileno())
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    subprocess.run([sys.executable, "-c", CHILD], stderr=sock.fileno(), env=env, check=True,
                   timeout=30)
    sock.close()
    deadline = time.monotonic() + 10
    while len(_entries(identifier)) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    every = {e["MESSAGE"]: int(e["PRIORITY"]) for e in _entries(identifier)}
    assert every["RM: 3 members: S1, S2, S3"] == 6
    assert every["WARNING: RM: S2: restart budget exhausted"] == 4
    assert every["ZeroDivisionError: division by zero"] == 3
    shown = [e["MESSAGE"] for e in _entries(identifier, "-p", "warning")]
    assert shown[0] == "WARNING: RM: S2: restart budget exhausted"
    assert shown[1] == "ERROR: RM: relaunch of S2 failed"
    assert shown[2] == "Traceback (most recent call last):"
    assert shown[-1] == "ZeroDivisionError: division by zero"
    assert "RM: 3 members: S1, S2, S3" not in shown
    assert not any(m.startswith("[20") for m in every)  # journald's timestamps only
