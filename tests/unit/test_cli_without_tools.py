"""``ftds bench``, ``ftds chaos`` and ``ftds local demo`` where the development tools (ftds-tools)
are not installed, as on a host: one line on stderr saying what to install, exit 1, no
traceback (issue 12). The tools are made unimportable in the child before the CLI runs.

The arguments are ones that would end quickly even if the tools were imported after all (help,
an empty directory to judge, a run directory that is a file), so a failure here never starts a
benchmark or a cluster.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

WITHOUT_TOOLS = ("import sys\n"
                 "sys.modules['ftds_tools'] = None  # as if ftds-tools were not installed\n"
                 "from ftds.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")


def ftds(args: list[str], cwd: Path, code: str = WITHOUT_TOOLS) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("args", "prog"), [
    (["bench", "core", "--help"], "ftds bench"),
    (["chaos", "check", "."], "ftds chaos check"),
    (["local", "demo", "--dir", "not-a-dir"], "ftds local demo"),
])
def test_a_tool_command_without_the_tools_says_how_to_get_them(tmp_path: Path, args: list[str],
                                                               prog: str) -> None:
    (tmp_path / "not-a-dir").write_text("")
    result = ftds(args, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: "), lines[0]
    assert "development tool" in lines[0] and "pip install -e tools" in lines[0], lines[0]
    assert result.stdout == ""


def test_with_the_tools_installed_the_command_reaches_them(tmp_path: Path) -> None:
    result = ftds(["bench", "core", "--help"], tmp_path,
                  code="import sys\nfrom ftds.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
