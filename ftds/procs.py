"""Process helpers the daemons share (the LFD, the RM's local launcher) with the embedded cluster.

A module of its own so that no daemon imports the embedded cluster (``ftds.local``)."""

from __future__ import annotations

import contextlib
import os
import signal


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill_process(pid: int) -> None:
    """SIGKILL ``pid``; a process already gone is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
