"""Settings: defaults < TOML file < DRAGOMAN_* environment < flags, and clear errors for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dragoman.config import ConfigError, Settings, load_settings


def test_precedence_file_then_environment_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "dragoman.toml"
    config.write_text('port = 6000\njob_timeout_ms = 1000\nredis_url = "redis://file:6379"\n')
    env = {"DRAGOMAN_JOB_TIMEOUT_MS": "2_000", "DRAGOMAN_REDIS_URL": "redis://env:6379"}
    settings = load_settings({"redis_url": "redis://flag:6379", "port": None}, str(config), env)
    assert settings.port == 6000  # from the file (the flag was not given)
    assert settings.job_timeout_ms == 2000  # the environment beats the file
    assert settings.redis_url == "redis://flag:6379"  # a flag beats both
    assert settings.pause_ms == Settings().pause_ms == 3000  # untouched defaults
    assert load_settings(environ={"DRAGOMAN_CONFIG": str(config)}).port == 6000


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("nonsense = 1\n", {}, "unknown setting 'nonsense'"),
        ('port = "high"\n', {}, "port: expected an integer"),
        ("port = [\n", {}, "config file"),
        ("", {"DRAGOMAN_PORT": "eighty"}, "port: expected an integer"),
        ("", {"DRAGOMAN_JOB_TIMEOUT_MS": "-5"}, "job_timeout_ms: must not be negative"),
    ],
)
def test_bad_settings_name_the_setting(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "dragoman.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(config_file=str(config), environ=env)


def test_missing_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dragoman", "serve", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "nope.toml" in run.stderr and "Traceback" not in run.stderr
