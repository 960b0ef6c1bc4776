"""The command line explains itself: a version, and help that shows defaults and required options."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from dragoman import __version__

COMMANDS = ("serve", "node", "translate", "status", "bench")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"COLUMNS": "120", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "dragoman", *args], capture_output=True, text=True, env=env)


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dragoman {__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_no_markup(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout and not re.search(r"\[/?(bold|dim|red|green)\]", done.stdout)


def test_node_help_says_which_options_are_required() -> None:
    text = run("node", "--help").stdout
    required = text[text.index("required (") :]
    assert "--engine" in required and "--langs" in required


def test_bench_and_serve_help_show_defaults() -> None:
    bench = run("bench", "--help").stdout
    for default in ("(default 20)", "(default 4)", "(default 30)", "(default 256)", "as many as --duration allows"):
        assert default in bench
    serve = run("serve", "--help").stdout
    assert "(default 5010)" in serve and "(default text)" in serve and "(default off)" in serve


def test_bad_log_format_is_refused() -> None:
    done = run("serve", "--log-format", "xml")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    env_done = subprocess.run(
        [sys.executable, "-m", "dragoman", "serve"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "DRAGOMAN_LOG_FORMAT": "xml"},
    )
    assert env_done.returncode == 2 and "log_format: must be one of text, json" in env_done.stderr
