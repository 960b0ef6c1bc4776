"""A frozen node (issue 9, item 6): a real ``dragoman node`` process stopped with SIGSTOP keeps its socket open and
sends nothing, not even pongs. Its in-flight utterances must fail over to a healthy node before the session's gap
timeout gives them up, so they end in ``translation_result``, not ``missing_result``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from dragoman.config import ConfigError, load_settings

from conftest import StartDragoman
from peers import LinguaWebClient, pcm16


@pytest.fixture
async def nodes() -> AsyncIterator[Callable[..., subprocess.Popen[bytes]]]:
    """A factory of ``dragoman node --engine echo`` processes, all killed (and continued first) at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, *options: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "dragoman", "node", "--scheduler", url, "--engine", "echo", "--langs", "zh,en",
             "--log-level", "warning", *options],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        started.append(process)
        return process

    yield start
    for process in started:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        process.wait(10)


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    for _ in range(int(seconds / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


@pytest.mark.parametrize("jobs_after_the_freeze", [False, True], ids=["frozen-while-running", "frozen-socket-full"])
async def test_a_frozen_node_fails_over_before_the_gap_timeout(
    dragoman: StartDragoman, nodes: Callable[..., subprocess.Popen[bytes]], jobs_after_the_freeze: bool
) -> None:
    """The node freezes while it runs four jobs; or it freezes after the first, and three 2 MB jobs go to it
    after that, filling its socket's buffers (a close would wait for them to drain, for ever)."""
    # Scaled-down timers in the production order: ping detection (1.5 s) < gap timeout (8 s) < liveness, job timeout.
    d = await dragoman(
        ws_ping_interval_ms=500,
        ws_ping_timeout_ms=1000,
        gap_timeout_ms=8000,
        node_liveness_ms=45_000,
        job_timeout_ms=60_000,
        pending_timeout_ms=30_000,
    )
    audio = pcm16(200)
    async with httpx.AsyncClient(base_url=d.http) as http, LinguaWebClient(d.session_url) as client:

        async def registered(other_than: str = "") -> bool:
            return any(node_id != other_than for node_id in d.scheduler.nodes)

        async def holds(node_id: str, jobs: int) -> bool:
            cluster = (await http.get("/api/v1/cluster")).json()
            return any(n["node_id"] == node_id and n["current_jobs"] == jobs for n in cluster["nodes"])

        frozen = nodes(d.node_url, "--max-jobs", "4", "--echo-delay-ms", "60000")  # holds every job it gets
        await _until(registered)
        (frozen_id,) = d.scheduler.nodes
        await client.init(two_way=False)
        await client.utterance(0, audio)
        await _until(lambda: holds(frozen_id, 1))
        if jobs_after_the_freeze:
            os.kill(frozen.pid, signal.SIGSTOP)  # socket open, nothing read or sent any more
        later = pcm16(65_000) if jobs_after_the_freeze else audio  # 2 MB
        for i in range(1, 4):
            await client.utterance(i, later)
        await _until(lambda: holds(frozen_id, 4))
        if not jobs_after_the_freeze:
            os.kill(frozen.pid, signal.SIGSTOP)

        nodes(d.node_url, "--max-jobs", "8")  # a healthy node
        await _until(lambda: registered(other_than=frozen_id))  # (the frozen one may be gone already)
        for i in range(4, 8):  # the frozen node is full: these go to the healthy one and arm the gap timer
            await client.utterance(i, audio)
        outcomes = await client.outcomes(8, timeout=40)
        lost = [o for o in outcomes if o["type"] != "translation_result"]
        assert not lost, f"{len(lost)} of 8 outcomes lost: {lost}"
        assert [o["utterance_index"] for o in outcomes] == list(range(8))
        assert frozen_id not in d.scheduler.nodes  # its socket was closed by the ping timeout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DRAGOMAN_WS_PING_TIMEOUT_MS": "25000"}, "ws_ping_interval_ms \\+ ws_ping_timeout_ms = 30000 ms"),
        ({"DRAGOMAN_WS_PING_INTERVAL_MS": "0"}, "node_liveness_ms \\+ tick_interval_ms \\(no pings\\) = 45250 ms"),
        (
            {"DRAGOMAN_WS_PING_INTERVAL_MS": "0", "DRAGOMAN_JOB_TIMEOUT_MS": "40000"},
            "job_timeout_ms \\+ tick_interval_ms \\(no pings\\) = 40250 ms",
        ),
    ],
)
def test_timers_that_let_a_silent_node_outlive_the_gap_timeout_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=f"{message}, not before gap_timeout_ms \\(30000 ms\\)"):
        load_settings(environ=env)


def test_timers_that_detect_a_silent_node_in_time_are_accepted() -> None:
    assert load_settings(environ={}).ws_ping_timeout_ms == 10_000  # the defaults: 15 s < 30 s
    load_settings(environ={"DRAGOMAN_WS_PING_INTERVAL_MS": "0", "DRAGOMAN_NODE_LIVENESS_MS": "20000"})
    load_settings(environ={"DRAGOMAN_WS_PING_TIMEOUT_MS": "25000", "DRAGOMAN_GAP_TIMEOUT_MS": "40000"})


def test_serve_names_the_timers_in_one_line() -> None:
    env = {**os.environ, "DRAGOMAN_WS_PING_INTERVAL_MS": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "dragoman", "serve", "--port", "5999"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert run.returncode == 2
    assert "node_liveness_ms" in run.stderr and "gap_timeout_ms" in run.stderr and "Traceback" not in run.stderr
