"""Log lines for journald: a syslog priority prefix on every line, no timestamp of our own."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from ftds.log import CourseFormatter, setup_logging, stderr_is_journal


def _record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("ftds.test", level, __file__, 1, msg, (), exc_info)


@pytest.mark.parametrize(("level", "prefix"), [
    (logging.CRITICAL, "<2>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>"), (5, "<7>"), (45, "<3>"),
])
def test_journal_lines_carry_the_syslog_priority_and_no_timestamp(level, prefix):
    line = CourseFormatter(color=False, journal=True).format(_record(level, "S1: view 2.1"))
    assert line.startswith(prefix)
    assert "S1: view 2.1" in line
    assert "[20" not in line  # journald stamps the entry itself
    assert "\n" not in line


def test_every_line_of_a_traceback_keeps_its_priority():
    # journald splits a stream at each newline and parses the prefix per line: a continuation
    # line without one would land at the stream's default priority (info).
    text = CourseFormatter(color=False, journal=True).format(
        _record(logging.ERROR, "RM: relaunch failed\nsecond line", exc=True))
    lines = text.split("\n")
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines), lines
    assert lines[0] == "<3>ERROR: RM: relaunch failed"
    assert lines[1] == "<3>second line"
    assert lines[-1] == "<3>ValueError: boom"


def test_journal_lines_are_never_coloured():
    line = CourseFormatter(color=True, journal=True).format(_record(logging.WARNING, "x"))
    assert "\033[" not in line


def test_the_terminal_format_is_unchanged():
    fmt = CourseFormatter(color=False)
    line = fmt.format(_record(logging.WARNING, "S2 down"))
    assert line.startswith("[20") and line.endswith("] WARNING: S2 down")
    assert not line.startswith("<")
    lines = fmt.format(_record(logging.ERROR, "bad", exc=True)).split("\n")
    assert not any(line.startswith("<") for line in lines)


def test_stderr_is_journal_matches_device_and_inode(tmp_path, monkeypatch):
    path = tmp_path / "stream"
    with open(path, "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert stderr_is_journal(stream)
        # Inherited by a child whose stderr went elsewhere (a log file): not the journal.
        assert not stderr_is_journal(other)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not stderr_is_journal(stream)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not stderr_is_journal(stream)


def test_setup_logging_chooses_the_journal_format(tmp_path, monkeypatch):
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        monkeypatch.setattr(sys, "stderr", stream)
        root = logging.getLogger()
        saved = root.handlers[:], root.level
        try:
            setup_logging("auto")
            logging.getLogger("ftds.test").warning("restart budget exhausted for S2")
            root.handlers[0].flush()
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
    assert (tmp_path / "stream").read_text() == \
        "<4>WARNING: restart budget exhausted for S2\n"
