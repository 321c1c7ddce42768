"""The rest of the CLI an operator meets (issue 12): help for every option, --log-level on the
daemons, shell completion, and the errors that still lacked a "what to do".

Commands run in a subprocess, as typed; the daemons run for real against a cluster file whose
other ports nobody listens on.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_cli_errors import _actions  # the one walk over every subcommand's options

from ftds import cli
from ftds.cli import build_parser, main


def free_ports(count: int) -> list[int]:
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def write_cluster(dir: Path, rm_port: int | None = None) -> Path:
    """A 3-replica cluster file on loopback ports nobody listens on (the RM's may be given)."""
    ports = free_ports(8)
    (dir / "cluster.key").write_text(secrets.token_hex(32) + "\n")
    data = {
        "name": "test", "mode": "passive", "key_file": str(dir / "cluster.key"),
        "replicas": [{"id": f"S{i + 1}", "host": "127.0.0.1", "port": ports[i],
                      "control_port": ports[3 + i]} for i in range(3)],
        "gfd": {"host": "127.0.0.1", "port": ports[6]},
        "rm": {"host": "127.0.0.1", "port": rm_port or ports[7], "state_dir": str(dir)},
        "launcher": {"kind": "none"},
        "trace": {"requests": False, "color": "never"},
    }
    path = dir / "cluster.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def env(cwd: Path) -> dict[str, str]:
    return {**os.environ, "FTDS_CONFIG": str(cwd / "absent-default.yml")}


def ftds(*args: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ftds", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env(cwd))


def refused(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one stderr line of a refusal (no traceback, exact exit), which must say what to do."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "; " in lines[0], f"no 'what to do' in: {lines[0]}"
    return lines[0]


def daemon_stderr(args: list[str], cwd: Path, seconds: float = 1.5) -> str:
    """Run a daemon for ``seconds``, stop it as systemd would (SIGTERM), return its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "ftds", *args], cwd=cwd, env=env(cwd),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(seconds)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err
    return err


# ===================================================================== help ====
def test_every_option_and_argument_of_every_subcommand_has_help():
    walked = list(_actions(build_parser(), "ftds"))
    paths = {path for path, _ in walked}
    assert {"ftds chaos check", "ftds ctl reset-budget", "ftds local up"} <= paths
    missing = [f"{path} {'/'.join(action.option_strings) or action.dest}"
               for path, action in walked if not action.help]
    assert missing == []


def test_the_client_names_only_what_is_really_missing(tmp_path):
    line = refused(ftds("client", cwd=tmp_path), 2)
    assert "op, key" in line and "VALUE" not in line.split(";")[0]


# ================================================================ log level ====
DAEMONS = [["replica", "--id", "S1"], ["lfd", "--id", "S1"], ["gfd"], ["rm"]]


@pytest.mark.parametrize("daemon", DAEMONS, ids=lambda d: d[0])
def test_every_daemon_takes_a_log_level(daemon):
    parser = build_parser()
    assert parser.parse_args(daemon).log_level == "info"  # unchanged unless asked
    for name, level in (("debug", logging.DEBUG), ("WARNING", logging.WARNING),
                        ("error", logging.ERROR)):
        args = parser.parse_args([*daemon, "--log-level", name])
        assert cli.LOG_LEVELS[args.log_level] == level


@pytest.mark.parametrize("daemon", DAEMONS, ids=lambda d: d[0])
def test_an_unknown_log_level_is_a_usage_error(daemon, capsys):
    assert main([*daemon, "--log-level", "loud"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--log-level" in err[0] and "debug" in err[0], err


def test_the_log_level_reaches_the_daemons_logging(tmp_path):
    config = str(write_cluster(tmp_path))
    # The GFD says where it listens (info) and that the RM is unreachable (a warning).
    default = daemon_stderr(["gfd", "-c", config], tmp_path)
    assert "GFD: listening" in default and "WARNING" in default, default
    warning = daemon_stderr(["gfd", "-c", config, "--log-level", "warning"], tmp_path)
    assert "GFD: listening" not in warning and "WARNING: GFD" in warning, warning
    error = daemon_stderr(["gfd", "--log-level", "error", "-c", config], tmp_path)
    assert "GFD" not in error, error


# ================================================= errors that lacked a hint ====
def test_chaos_check_of_nothing_says_what_to_do(tmp_path):
    for target in (tmp_path / "no-such-run", tmp_path):
        line = refused(ftds("chaos", "check", str(target), cwd=tmp_path), 2)
        assert line.startswith("ftds chaos check: no histories to check"), line
        assert "ftds chaos run" in line, line


def test_a_daemon_whose_port_is_taken_says_which_and_what_to_do(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = str(write_cluster(tmp_path, rm_port=port))
        line = refused(ftds("rm", "-c", config, cwd=tmp_path), 1)
    assert f"127.0.0.1:{port}" in line or str(port) in line, line
    assert "in use" in line and "cluster file" in line, line


def test_local_reload_with_nothing_running_says_what_to_do(tmp_path):
    line = refused(ftds("local", "reload", "--dir", str(tmp_path / "run"), cwd=tmp_path), 1)
    assert "nothing running" in line and "ftds local up" in line, line


# =============================================================== completion ====
needs_shtab = pytest.mark.skipif(
    not shutil.which("bash") or subprocess.run(
        [sys.executable, "-c", "import shtab"], capture_output=True).returncode != 0,
    reason="shtab (the dev extra) and bash")


@needs_shtab
def test_bash_completion_is_a_valid_script_that_knows_the_commands(tmp_path):
    result = ftds("completion", "bash", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for word in ("reset-budget", "force-primary", "--log-level", "--config", "check-config"):
        assert word in script, word
    (tmp_path / "ftds.bash").write_text(script)
    # bash itself: the script parses, and once sourced "ftds ct<TAB>" completes to ctl.
    probe = ('source ftds.bash; COMP_WORDS=(ftds ct); COMP_CWORD=1; COMP_LINE="ftds ct"; '
             'COMP_POINT=${#COMP_LINE}; f=$(complete -p ftds | sed -E "s/.*-F ([^ ]+).*/\\1/");'
             ' "$f" ftds ct ftds; printf "%s\\n" "${COMPREPLY[@]}"')
    run = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 0, run.stderr
    assert "ctl" in run.stdout.split(), run.stdout


@needs_shtab
def test_zsh_completion_is_generated(tmp_path):
    result = ftds("completion", "zsh", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("#compdef ftds"), result.stdout[:200]


def test_completion_without_shtab_says_how_to_get_it(tmp_path):
    # A package that fails to import stands for one not installed (hosts lack the dev extra).
    shadow = tmp_path / "shadow" / "shtab"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no shtab here')\n")
    path = os.pathsep.join(filter(None, [str(shadow.parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-m", "ftds", "completion", "bash"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30,
                            env={**env(tmp_path), "PYTHONPATH": path})
    line = refused(result, 1)
    assert "shtab" in line and "pip install" in line, line
    assert result.stdout == ""


def test_completion_for_an_unknown_shell_is_a_usage_error(tmp_path):
    line = refused(ftds("completion", "fish", cwd=tmp_path), 2)
    assert "bash" in line and "zsh" in line, line


# ============================================================ a closed stdout ====
@pytest.mark.parametrize("command", [["completion", "bash"], ["check-config"]],
                         ids=["long output", "short output"])
def test_a_reader_that_went_away_is_not_an_error_line(tmp_path, command):
    """`ftds ... | head -1`: the reader has what it wanted; no traceback, no misleading line."""
    if command[0] == "completion" and needs_shtab.args[0]:
        pytest.skip("shtab")
    if command[0] == "check-config":
        command = [*command, "-c", str(write_cluster(tmp_path))]
    proc = subprocess.Popen([sys.executable, "-m", "ftds", *command], cwd=tmp_path,
                            env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.stdout.close()  # before it writes: every write finds no reader
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=30) == 141, err  # 128 + SIGPIPE, as the shell shows for cat
    assert err == "", err


# ====================================================== checked before dialing ====
@pytest.mark.parametrize("history", ["a-directory", "read-only/h.jsonl"])
def test_workload_history_that_cannot_be_written_is_refused_before_connecting(tmp_path,
                                                                             history):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "read-only").mkdir(mode=0o555)
    if os.access(tmp_path / "read-only", os.W_OK):
        (tmp_path / "read-only").rmdir()  # root writes anywhere: a missing directory instead
    config = str(write_cluster(tmp_path))
    # No replica listens: without the check this would dial, then exit 3.
    line = refused(ftds("workload", "-c", config, "--connect-timeout", "1", "--history",
                        history, cwd=tmp_path), 2)
    assert f"--history {history}" in line, line
