"""``dragoman bench`` as a real process, on a small load: a smoke run that checks its report, not its speed."""

from __future__ import annotations

import json
import socket
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


def _live(*args: str) -> subprocess.CompletedProcess[str]:
    """``dragoman bench --live`` on a spawned scheduler, 2 echo nodes, steps of 6 s."""
    live = ["--live", "--spawn", "--nodes", "2", "--duration", "6", "--json", *args]
    return subprocess.run(
        [sys.executable, "-m", "dragoman", "bench", *live], capture_output=True, text=True, timeout=180
    )


def test_live_bench_ramps_up_speaking_sessions_and_loses_no_chunk() -> None:
    # Bounds no machine misses: the test is about what is counted, not about speed.
    run = _live("--sessions", "4", "--max-sessions", "8", "--p99-ms", "60000", "--late-ms", "60000")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert [step["sessions"] for step in report["steps"]] == [4, 8]
    for step in report["steps"]:
        # Each session begins a speech once per cycle (3.12 s of speech + 1.56 s of pause) within the 6 s.
        assert step["sessions_failed"] == 0 and step["utterances"] >= step["sessions"]
        assert step["completed"] == step["utterances"]
        assert step["lost"] == step["duplicated"] == step["errors"] == 0
        assert step["chunks_lost"] == step["chunks_duplicated"] == step["chunks_late"] == 0
        assert step["chunks"] >= 18 * step["sessions"]  # a whole speech and its pause each
        for figure in ("send_lag_ms", "finalize_to_job_assign_ms", "finalize_to_translation_result_ms"):
            assert set(step[figure]) == {"p50", "p90", "p99", "max"}
        # No job before the scheduler could cut it: the finalize point follows the endpointing rule.
        assert step["finalize_to_job_assign_ms"]["p50"] > 0
        assert step["scheduler_cpu_us_per_chunk"] > 0 and step["cpu_percent_of_one_core"]["scheduler"] > 0
        shares = step["scheduler_dispatch_within_ms"]  # the scheduler's own histogram, from /metrics
        assert list(shares) == ["0.5", "1", "2", "5", "10"] and shares["10"] <= 1
        assert step["ok"] and step["failed"] == []
    assert report["sessions_per_instance"] == 8
    assert report["scheduler_cpu_us_per_chunk"] == report["steps"][-1]["scheduler_cpu_us_per_chunk"]


def test_live_bench_stops_at_the_first_step_that_fails() -> None:
    run = _live("--sessions", "2", "--max-sessions", "8", "--p99-ms", "0.000001")  # no job_assign is that fast
    assert run.returncode == 0, run.stderr  # nothing lost: a slow step is a finding, not an error
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["plan"]["steps"] == [2, 4, 8]
    [step] = report["steps"]
    assert not step["ok"] and any("p99" in reason for reason in step["failed"])
    assert step["lost"] == step["chunks_lost"] == 0
    assert report["sessions_per_instance"] == 0 and "scheduler_cpu_us_per_chunk" not in report


def test_live_bench_rejects_a_pause_shorter_than_the_endpoint() -> None:
    for args, says in (
        # After 3.12 s of speech the scheduler cuts at 380 ms of pause, seen in the second chunk of it.
        (["--pause", "0.25"], "--pause must be at least 0.52 s"),
        (["--duration", "4"], "--duration must be more than one speech and its pause"),
        (["--sessions", "8", "--max-sessions", "4"], "--max-sessions must be at least --sessions"),
    ):
        run = subprocess.run(
            [sys.executable, "-m", "dragoman", "bench", "--live", "--spawn", *args], capture_output=True, text=True
        )
        assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)


def test_live_bench_says_why_when_no_session_opens() -> None:
    with socket.socket() as s:  # a loopback port where nothing listens
        s.bind(("127.0.0.1", 0))
        url = f"ws://127.0.0.1:{s.getsockname()[1]}"
    args = ["--live", "--scheduler", url, "--sessions", "2", "--max-sessions", "2", "--duration", "5"]
    run = subprocess.run([sys.executable, "-m", "dragoman", "bench", *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "no utterance could be sent" in run.stderr and "2 sessions failed" in run.stderr
