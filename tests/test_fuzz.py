"""Bounded fuzzing of a real instance: seeded mutants of lingua frames on both sockets and the HTTP API.

Each run sends a few thousand mutants (tests/fuzzing.py) and then asserts what PROTOCOL.md §2.3 promises: every
certainly invalid frame was answered (INVALID_MESSAGE on /ws/session, a log line on /ws/node, 400/422 over HTTP),
no socket was closed (except the prescribed 1008 for an invalid node_id), nothing was logged with a traceback,
no log line or reply quotes input at length, a normal round trip works through the fuzzed sockets afterwards,
and the process's memory stays bounded. benchmarks/fuzz.py runs the same mutator for 100,000 frames and more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from fuzzing import Mutator, fuzz_client, fuzz_http, fuzz_node, reading, round_trip, rss_bytes

from conftest import StartDragoman
from peers import LinguaWebClient

CLIENT_FRAMES = 4_000
NODE_FRAMES = 4_000
HTTP_REQUESTS = 600
RSS_GROWTH_BOUND = 300 * 1024 * 1024
MAX_LOG_CHARS = 1_000


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog, also for uvicorn's loggers (they do not propagate: an exception in the ASGI app logs there)."""
    caplog.set_level(logging.INFO, logger="dragoman")
    uvicorn = logging.getLogger("uvicorn")
    uvicorn.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        uvicorn.removeHandler(caplog.handler)


@pytest.mark.parametrize("seed", [9, 2026])
async def test_fuzzed_frames_are_answered_and_leave_the_instance_working(
    dragoman: StartDragoman, all_logs: pytest.LogCaptureFixture, seed: int
) -> None:
    d = await dragoman(pending_timeout_ms=300, utterance_reorder_ms=500, close_grace_ms=500)
    rss_before, _ = rss_bytes()
    mutator = Mutator(seed, max_string=64_000)
    async with LinguaWebClient(d.session_url) as client, httpx.AsyncClient(base_url=d.http, timeout=15) as http:
        await client.init(two_way=False)
        sent = await fuzz_client(client, mutator, CLIENT_FRAMES)
        assert sent.certainly_invalid > CLIENT_FRAMES // 3 and sent.errors_answered >= sent.certainly_invalid

        async with reading(client):
            api = await fuzz_http(http, mutator, HTTP_REQUESTS)
            start = len(all_logs.records)
            node, fed = await fuzz_node(d.node_url, "node-FUZZ0000", mutator, NODE_FRAMES)
        assert api.errors_answered >= api.certainly_invalid > HTTP_REQUESTS // 3
        ignored = sum("invalid message ignored" in r.getMessage() for r in all_logs.records[start:])
        assert ignored >= fed.certainly_invalid > NODE_FRAMES // 3  # each one logged (§2.3)

        try:
            await round_trip(client, node)
            assert (await http.get("/health")).status_code == 200
        finally:
            await node.close()

    lines = all_logs.records
    tracebacks = [r.getMessage() for r in lines if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert not tracebacks, tracebacks[:5]
    assert max((len(r.getMessage()) for r in lines), default=0) < MAX_LOG_CHARS
    rss_after, _ = rss_bytes()
    assert rss_after - rss_before < RSS_GROWTH_BOUND, (rss_before, rss_after)
