"""``dragoman bench`` as a real process, on a small load: a smoke run that checks its report, not its speed."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_spawns_a_scheduler_and_reports_every_figure() -> None:
    args = ["--spawn", "--sessions", "3", "--nodes", "2", "--utterances", "10", "--duration", "20", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "dragoman", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["utterances_sent"] == 30
    assert report["completed"] == 30 and report["lost"] == 0 and report["duplicated"] == 0 and report["errors"] == 0
    assert report["utterances_per_s"] > 0
    for figure in ("finalize_to_job_assign_ms", "finalize_to_translation_result_ms"):
        assert set(report[figure]) == {"p50", "p90", "p99", "max"}
        assert 0 < report[figure]["p50"] <= report[figure]["max"]
    assert report["store_round_trips_per_utterance"] >= 2
    assert report["peak_rss_mb"]["scheduler"] > 0 and report["peak_rss_mb"]["store"] > 0


def test_bench_rejects_bad_arguments_with_one_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dragoman", "bench", "--spawn", "--sessions", "0"], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "must be positive" in run.stderr and "Traceback" not in run.stderr
