"""A short soak: utterances stream while node processes are SIGKILLed and replaced every two seconds.

Runs ``benchmarks/failover.py`` (real ``dragoman serve``, real node processes) on a small load and checks what it
reports: every utterance ends in exactly one outcome, and nothing is left behind in the store.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "failover.py"


def test_node_kills_under_load_lose_nothing_and_leave_nothing() -> None:
    args = ["--utterances", "1200", "--rate", "100", "--sessions", "20", "--nodes", "3", "--kill-every", "2"]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *args, "--delay-ms", "200"], capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["utterances_sent"] == 1200
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["outcome_types"] == {"translation_result": 1200}  # failed over, never given up
    assert report["nodes_killed"] >= 4 and report["failed_over_attempts"] > 0
    assert set(report["inflight_after"].values()) == {0}  # capacity released on every path
    assert report["job_keys_without_ttl"] == []
