"""``benchmarks/memory.py`` and ``benchmarks/frozen_node.py`` against a real ``dragoman serve``: the cheap cases,
so the scripts keep working and what they report stays true (the figures themselves are in docs/BENCHMARKS.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_memory_benchmark_reports_the_limits() -> None:
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "memory.py"), "sessions", "body"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {line.split(" | ")[0].strip("| "): line for line in run.stdout.splitlines()[2:]}
    assert "sessions held by the server: 1;" in rows["sessions"]
    assert "413 Request Entity Too Large" in rows["body"]


def test_frozen_node_benchmark_loses_nothing() -> None:
    pings = {"DRAGOMAN_WS_PING_INTERVAL_MS": "500", "DRAGOMAN_WS_PING_TIMEOUT_MS": "1000"}  # (the defaults: 15 s)
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "frozen_node.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **pings},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "outcomes {'translation_result': 16}; lost 0" in run.stdout
