"""Packaging: what ``pip install`` reads (pyproject.toml) and what CI runs (.ci/run)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements() -> dict[str, Requirement]:
    return {r.name: r for r in map(Requirement, PROJECT["dependencies"])}


def test_httpx_gets_sniffio_so_it_detects_asyncio_without_a_failed_import() -> None:
    assert "sniffio" in requirements()


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    assert PROJECT["license"] == "MIT"
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    setuptools = next(Requirement(r) for r in build if r.startswith("setuptools"))
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77")


def test_the_core_dependencies_have_an_upper_bound_on_their_major_version() -> None:
    deps = requirements()
    for name in ("redis", "starlette", "uvicorn", "websockets", "msgspec"):
        assert any(s.operator == "<" for s in deps[name].specifier), f"{name} has no upper bound"


def test_ci_runs_the_readme_test_command_and_installs_the_test_extra_once() -> None:
    readme_command = "pip install -e '.[test]' && python -m pytest"
    assert readme_command in (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in ci.splitlines() if not line.lstrip().startswith("#")]
    installs = [line for line in commands if re.search(r"pip install .*\.\[test\]", line)]
    assert len(installs) == 1, installs
    assert installs[0].replace(" --quiet", "") == readme_command
