"""The HTTP job API: idempotent creation, status, long-poll, OpenAPI."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx

from dragoman.scheduler.store import JobRecord

from conftest import StartDragoman
from peers import LinguaNode, pcm16


def job_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "src_lang": "zh",
        "tgt_lang": "en",
        "audio": base64.b64encode(pcm16(200)).decode(),
        "audio_format": "pcm16",
        "sample_rate": 16000,
    }
    return body | overrides


async def test_job_runs_and_result_is_long_polled(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        created = await http.post("/api/v1/jobs", json=job_body(), headers={"Idempotency-Key": "k-1"})
        assert created.status_code == 202
        job_id = created.json()["job_id"]
        assert created.json()["status"] == "dispatched"
        assert created.headers["location"] == f"/api/v1/jobs/{job_id}"
        job = await node.next_job()
        assert job["job_id"] == job_id and job["is_manual_cut"] is True
        assert job["pipeline"]["use_tts"] is True

        poll = asyncio.create_task(http.get(f"/api/v1/jobs/{job_id}", params={"wait": 5}))
        await asyncio.sleep(0.1)
        assert not poll.done()  # waiting for the outcome
        await node.result(job, text_asr="你好", text_translated="hello", tts_audio="AAAA")
        status = (await poll).json()
        assert status["status"] == "completed" and status["attempt"] == 1
        assert status["result"]["text_translated"] == "hello" and status["result"]["tts_audio"] == "AAAA"
        assert status["node_id"] == node.node_id


async def test_same_key_sequential_returns_same_job(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        first = await http.post("/api/v1/jobs", json=job_body(), headers={"Idempotency-Key": "same"})
        second = await http.post("/api/v1/jobs", json=job_body(), headers={"Idempotency-Key": "same"})
        assert first.json()["job_id"] == second.json()["job_id"]
        assert second.headers["idempotent-replayed"] == "true"
        await node.next_job()
        await node.expect_nothing(0.3, types={"job_assign"})


async def test_concurrent_identical_requests_make_one_job_and_one_assign(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        headers = {"Idempotency-Key": "burst-7"}
        replies = await asyncio.gather(
            *(http.post("/api/v1/jobs", json=job_body(), headers=headers) for _ in range(50))
        )
        assert {r.status_code for r in replies} == {202}
        assert len({r.json()["job_id"] for r in replies}) == 1
        job = await node.next_job()
        assert job["job_id"] == replies[0].json()["job_id"]
        await node.expect_nothing(0.5, types={"job_assign"})


async def test_without_a_node_the_job_fails_after_the_pending_timeout(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=200)
    async with httpx.AsyncClient(base_url=d.http) as http:
        created = await http.post("/api/v1/jobs", json=job_body(src_lang="fr", tgt_lang="de"))
        assert created.json()["status"] == "pending"
        status = (await http.get(f"/api/v1/jobs/{created.json()['job_id']}", params={"wait": 5})).json()
        assert status["status"] == "failed" and status["error"]["code"] == "NO_AVAILABLE_NODE"


async def test_node_failure_is_reported(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        created = await http.post("/api/v1/jobs", json=job_body())
        job = await node.next_job()
        await node.fail(job, code="PROCESSING_ERROR", message="decoder crashed")
        status = (await http.get(f"/api/v1/jobs/{created.json()['job_id']}", params={"wait": 5})).json()
        assert status["status"] == "failed"
        assert status["error"] == {"code": "PROCESSING_ERROR", "message": "decoder crashed", "details": None}


async def test_openapi_document_describes_the_api(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http) as http:
        doc = (await http.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/v1/jobs",
        "/api/v1/jobs/{job_id}",
        "/api/v1/jobs/{job_id}/trace",
        "/api/v1/sessions/{session_id}/trace",
        "/api/v1/traces/{trace_id}",
    }
    request = doc["components"]["schemas"]["JobRequest"]
    assert {"src_lang", "tgt_lang", "audio"} <= set(request["required"])


async def test_an_outcome_landing_while_the_long_poll_reads_the_job_wakes_it(dragoman: StartDragoman) -> None:
    """The race of a long-poll, made deterministic: the job is read (still dispatched), and its outcome is
    delivered before that read returns. The poll's waiter must already be registered then, so the outcome
    wakes it; a waiter registered after the read is woken by nobody and only the 1 s re-read saves it."""
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        job_id = (await http.post("/api/v1/jobs", json=job_body())).json()["job_id"]
        job = await node.next_job()

        waiters: list[asyncio.Future[None]] = []
        wait_for, get_job = d.scheduler.wait_for, d.store.get_job

        def recording_wait_for(wanted: str) -> asyncio.Future[None]:
            waiters.append(wait_for(wanted))
            return waiters[-1]

        async def read_then_outcome(wanted: str) -> JobRecord | None:
            record = await get_job(wanted)
            if record is not None and record.state == "dispatched":
                delivered = wait_for(wanted)
                await node.result(job, text_translated="hello")
                await asyncio.wait_for(delivered, 10)  # the outcome reached this instance
            return record

        d.scheduler.wait_for = recording_wait_for  # type: ignore[method-assign]
        d.store.get_job = read_then_outcome  # type: ignore[method-assign]
        status = (await http.get(f"/api/v1/jobs/{job_id}", params={"wait": 30})).json()
        assert status["status"] == "completed"
        first = waiters[0]
        assert first.done() and not first.cancelled(), "the outcome woke nobody: the poll waited for its re-read"
