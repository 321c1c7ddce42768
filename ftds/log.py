"""Log lines in the course's words, coloured on a terminal and plain in the journal.

Every daemon logs through the standard ``logging`` module; this module only decides the format.
A record may carry ``extra={"kind": ...}`` to choose its colour: sent, received, state, reply,
heartbeat, membership, checkpoint, decision.

When stderr is journald's stream (``JOURNAL_STREAM`` names it), every line starts with the
syslog priority of its level (``<4>`` for a warning, sd-daemon(3)) and has no timestamp:
journald stamps each entry and filters on the priority (``journalctl -p warning``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

COLORS = {
    "sent": "\033[36m",  # cyan
    "received": "\033[32m",  # green
    "reply": "\033[32;1m",
    "state": "\033[33m",  # yellow
    "heartbeat": "\033[34m",  # blue
    "membership": "\033[35;1m",  # magenta
    "checkpoint": "\033[37;1m",
    "decision": "\033[35m",
    "duplicate": "\033[90m",
}
LEVEL_COLORS = {logging.WARNING: "\033[33;1m", logging.ERROR: "\033[31;1m",
                logging.CRITICAL: "\033[41;97m"}
RESET = "\033[0m"
# sd-daemon(3)'s prefixes: crit, err, warning, info, debug (notice has no logging level).
SYSLOG_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                     (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level; a level between two takes the lower one's."""
    for level, priority in SYSLOG_PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def use_color(mode: str, stream: object = None) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "JOURNAL_STREAM" not in os.environ


def stderr_is_journal(stream: object = None) -> bool:
    """Whether ``stream`` (stderr) is the journal stream systemd gave us: ``JOURNAL_STREAM``
    is ``device:inode`` of it (systemd.exec(5)). The variable alone is not enough: a child
    inherits it even when its stderr goes to a file (the RM's local replicas)."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    fileno = getattr(stream or sys.stderr, "fileno", None)
    if not sep or fileno is None:
        return False
    try:
        st = os.fstat(fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):  # no descriptor (a test's StringIO), or a bad variable
        return False


class CourseFormatter(logging.Formatter):
    """``[2026-11-24 10:00:00.123] <message>``; colour by record kind when enabled.

    ``journal``: ``<N><message>`` with N the record's syslog priority on every line, since
    journald splits a stream at each newline and reads the prefix per line (a traceback's
    lines without it would be entries at info); no timestamp, no colour."""

    def __init__(self, color: bool, journal: bool = False) -> None:
        super().__init__()
        self.color = color and not journal  # the prefix must be a line's first bytes
        self.journal = journal

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.localtime(record.created)
        return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname}: {message}"
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        if self.journal:
            prefix = f"<{syslog_priority(record.levelno)}>"
            return prefix + message.replace("\n", "\n" + prefix)
        line = f"[{self.formatTime(record)}] {message}"
        if not self.color:
            return line
        color = LEVEL_COLORS.get(record.levelno) or COLORS.get(getattr(record, "kind", ""), "")
        return f"{color}{line}{RESET}" if color else line


def setup_logging(color_mode: str = "auto", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CourseFormatter(use_color(color_mode, sys.stderr),
                                         journal=stderr_is_journal(sys.stderr)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # paramiko narrates every connection at INFO; the RM's own lines say what matters.
    logging.getLogger("paramiko").setLevel(logging.WARNING)


def msg_id(client: str, replica: str, request_num: int, direction: str) -> str:
    """The course's message identity: ``<C1, S1, 101, request>``."""
    return f"<{client}, {replica}, {request_num}, {direction}>"


def members_line(who: str, members: list[str]) -> str:
    """``GFD: 2 members: S1, S2`` / ``GFD: 1 member: S1`` / ``RM: 0 members``."""
    count = len(members)
    if count == 0:
        return f"{who}: 0 members"
    noun = "member" if count == 1 else "members"
    return f"{who}: {count} {noun}: {', '.join(members)}"
