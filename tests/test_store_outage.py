"""The store goes away and comes back: sockets stay open, work that cannot be done is answered, nothing
accepted is lost, and the instance resumes by itself."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as redis

from dragoman.scheduler.store.embedded import EmbeddedStore

from conftest import start_dragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk

JOB = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(200)).decode()}


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    server = EmbeddedStore(tmp_path / "store")
    await server.start()
    yield server
    await server.stop()


async def health(http: httpx.AsyncClient) -> int:
    return (await http.get("/health")).status_code


async def until_health(http: httpx.AsyncClient, status: int) -> None:
    for _ in range(100):
        if await health(http) == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never answered {status}")


async def test_outage_is_answered_and_work_resumes(own_store: EmbeddedStore) -> None:
    d = await start_dragoman(own_store.url, tick_interval_ms=50)
    try:
        async with (
            LinguaNode(d.node_url) as node,
            LinguaWebClient(d.session_url) as client,
            httpx.AsyncClient(base_url=d.http) as http,
        ):
            await node.start()
            await client.init()
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            accepted = await node.next_job()  # a job accepted before the outage

            await own_store.stop()
            await until_health(http, 503)
            # New work cannot be scheduled: the client is told, and its socket stays usable.
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            # The node answers the accepted job during the outage: the result waits for the store.
            await node.result(accepted, text_translated="kept")
            await asyncio.sleep(0.3)
            beat = await client.heartbeat()
            assert beat["session_id"] == client.session_id

            await own_store.start()  # same data directory: the append-only file brings the jobs back
            await until_health(http, 200)
            outcomes = await client.outcomes(2, timeout=10)
            assert outcomes[0]["type"] == "translation_result" and outcomes[0]["text_translated"] == "kept"
            assert outcomes[1]["type"] == "error" and outcomes[1]["code"] == "SCHEDULER_DEPENDENCY_DOWN"

            # And the session goes on.
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            job = await node.next_job(timeout=10)
            assert job["utterance_index"] == 2
            await node.result(job)
            [after] = await client.outcomes(1)
            assert after["type"] == "translation_result" and after["utterance_index"] == 2
    finally:
        await d.stop()


async def test_embedded_store_is_restarted_when_it_dies(tmp_path: Path) -> None:
    server = EmbeddedStore(tmp_path / "store")
    await server.start()
    supervisor = asyncio.create_task(server.supervise())
    try:
        d = await start_dragoman(server.url, tick_interval_ms=50)
        try:
            async with httpx.AsyncClient(base_url=d.http) as http:
                assert server._process is not None
                server._process.kill()  # the store crashes
                await until_health(http, 503)
                await until_health(http, 200)  # the supervisor brought it back
        finally:
            await d.stop()
    finally:
        supervisor.cancel()
        await server.stop()


async def test_outage_longer_than_the_timeouts_still_gives_one_outcome(own_store: EmbeddedStore) -> None:
    d = await start_dragoman(own_store.url, tick_interval_ms=50, job_timeout_ms=300, pending_timeout_ms=300)
    try:
        async with (
            LinguaNode(d.node_url) as node,
            LinguaWebClient(d.session_url) as client,
            httpx.AsyncClient(base_url=d.http) as http,
        ):
            await node.start()
            await client.init()
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            job = await node.next_job()
            await own_store.stop()
            await until_health(http, 503)
            await asyncio.sleep(1.0)  # past the job's deadline while the store is away
            await node.result(job)
            await own_store.start()
            await until_health(http, 200)
            [outcome] = await client.outcomes(1, timeout=10)
            assert outcome["utterance_index"] == 0
            assert outcome["type"] in ("translation_result", "missing_result")
            await client.expect_nothing(1.0, types={"translation_result", "missing_result", "error"})
            await node.heartbeat()
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            job = await node.next_job(timeout=10)
            await node.result(job)
            [after] = await client.outcomes(1)
            assert after["type"] == "translation_result" and after["utterance_index"] == 1
    finally:
        await d.stop()


async def every_http_route_answers(http: httpx.AsyncClient, job_id: str) -> dict[str, int]:
    routes = {
        "POST /api/v1/jobs": http.post("/api/v1/jobs", json=JOB),
        "GET /api/v1/jobs/{id}": http.get(f"/api/v1/jobs/{job_id}"),
        "GET /api/v1/jobs/{id}?wait": http.get(f"/api/v1/jobs/{job_id}", params={"wait": 1}),
        "GET /api/v1/cluster": http.get("/api/v1/cluster"),
        "GET /api/v1/stats": http.get("/api/v1/stats"),
    }
    answers = {}
    for route, call in routes.items():
        response = await call
        answers[route] = response.status_code
        if response.status_code == 503:
            body = response.json()
            assert body["error"] == "SCHEDULER_DEPENDENCY_DOWN" and body["message"], (route, body)
    return answers


async def test_http_api_answers_503_json_while_the_store_is_down_and_logs_it_once(
    own_store: EmbeddedStore, caplog: pytest.LogCaptureFixture
) -> None:
    d = await start_dragoman(own_store.url, tick_interval_ms=50)
    try:
        async with httpx.AsyncClient(base_url=d.http) as http:
            job_id = (await http.post("/api/v1/jobs", json=JOB)).json()["job_id"]
            caplog.clear()
            with caplog.at_level(logging.WARNING):
                await own_store.stop()
                await until_health(http, 503)
                for _ in range(3):
                    assert set((await every_http_route_answers(http, job_id)).values()) == {503}
                await asyncio.sleep(1.0)  # the periodic jobs keep failing meanwhile
                assert await health(http) == 503
                await own_store.start()
                await until_health(http, 200)
                assert set((await every_http_route_answers(http, job_id)).values()) <= {200, 202}
            messages = [r.getMessage() for r in caplog.records]
            assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
            assert sum(m.startswith("store unavailable") for m in messages) == 1, messages
            assert messages.count("store reachable again") == 1, messages
    finally:
        await d.stop()


async def test_http_api_answers_503_while_the_store_refuses_writes(own_store: EmbeddedStore) -> None:
    d = await start_dragoman(own_store.url)
    admin = redis.Redis.from_url(own_store.url)
    try:
        async with httpx.AsyncClient(base_url=d.http) as http:
            await admin.config_set("maxmemory", "1")  # every write is refused: OOM
            try:
                refused = await http.post("/api/v1/jobs", json=JOB)
            finally:
                await admin.config_set("maxmemory", "0")
            assert refused.status_code == 503 and refused.json()["error"] == "SCHEDULER_DEPENDENCY_DOWN"
            assert (await http.post("/api/v1/jobs", json=JOB)).status_code == 202
    finally:
        await admin.aclose()
        await d.stop()


async def test_a_store_that_refuses_writes_is_an_outage_everywhere(
    own_store: EmbeddedStore, caplog: pytest.LogCaptureFixture
) -> None:
    """OOM is not a connection error, but it is as much an outage: a node's registration is refused with a
    close (it registers again after its backoff) instead of neither an ack nor a close, a session's utterance gets
    SCHEDULER_DEPENDENCY_DOWN, /health answers 503, no traceback; all recover when the store does."""
    d = await start_dragoman(own_store.url, tick_interval_ms=50)
    admin = redis.Redis.from_url(own_store.url)
    try:
        async with httpx.AsyncClient(base_url=d.http) as http, LinguaWebClient(d.session_url) as client:
            await client.init(two_way=False)
            await admin.config_set("maxmemory", "1")  # every write is refused: OOM
            try:
                async with LinguaNode(d.node_url) as refused:
                    await refused.send(refused.register_frame())
                    assert await refused.wait_closed() == 1011
                await client.utterance(0, pcm16(100))
                error = await client.expect("error")
                assert error["code"] == "SCHEDULER_DEPENDENCY_DOWN"
                await until_health(http, 503)
            finally:
                await admin.config_set("maxmemory", "0")
            await until_health(http, 200)
            async with LinguaNode(d.node_url) as node:
                await node.start()
                await client.utterance(1, pcm16(100))
                await node.result(await node.next_job(), text_translated="back")
                [outcome] = await client.outcomes(1)
                assert outcome["text_translated"] == "back"
        assert not [r for r in caplog.records if r.exc_info is not None]
    finally:
        await admin.aclose()
        await d.stop()
