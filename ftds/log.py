"""Log lines in the course's words, coloured on a terminal and plain in the journal.

Every daemon logs through the standard ``logging`` module; this module only decides the format.
A record may carry ``extra={"kind": ...}`` to choose its colour: sent, received, state, reply,
heartbeat, membership, checkpoint, decision.
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


def use_color(mode: str, stream: object = None) -> bool:
    if mode == "always":
        return True
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and "JOURNAL_STREAM" not in os.environ


class CourseFormatter(logging.Formatter):
    """``[2026-11-24 10:00:00.123] <message>``; colour by record kind when enabled."""

    def __init__(self, color: bool) -> None:
        super().__init__()
        self.color = color

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = time.localtime(record.created)
        return time.strftime("%Y-%m-%d %H:%M:%S", t) + f".{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname}: {message}"
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        line = f"[{self.formatTime(record)}] {message}"
        if not self.color:
            return line
        color = LEVEL_COLORS.get(record.levelno) or COLORS.get(getattr(record, "kind", ""), "")
        return f"{color}{line}{RESET}" if color else line


def setup_logging(color_mode: str = "auto", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CourseFormatter(use_color(color_mode, sys.stderr)))
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
