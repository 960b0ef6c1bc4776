"""End to end on a real 3-master Valkey Cluster: one Dragoman instance, a scripted lingua node and web client
(the streaming flow), and the HTTP job API's idempotency under concurrency."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster

from conftest import Running, start_dragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk


@pytest.fixture
async def d(cluster_url: str) -> AsyncIterator[Running]:
    instance = await start_dragoman(cluster_url)
    assert isinstance(instance.store.client, RedisCluster)  # really on the cluster
    yield instance
    await instance.stop()


async def test_streaming_flow_on_the_cluster(d: Running) -> None:
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        ack = await client.init()
        audio = [voiced_chunk(), voiced_chunk(), voiced_chunk()]
        for chunk in audio:
            await client.chunk(chunk)
        await client.chunk(b"", is_final=True)
        for _ in range(2):
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)

        jobs = [await node.next_job() for _ in range(3)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2]
        assert {j["session_id"] for j in jobs} == {client.session_id}
        assert [j["attempt_id"] for j in jobs] == [1, 1, 1]
        assert base64.b64decode(jobs[0]["audio"]) == b"".join(audio)
        assert jobs[0]["trace_id"] == ack["trace_id"]

        await node.partial(jobs[0], "你")
        partial = await client.expect("asr_partial")
        assert partial["job_id"] == jobs[0]["job_id"] and partial["text"] == "你"

        # Answered out of order, delivered in order.
        await node.result(jobs[2], text_asr="三", text_translated="three")
        await node.empty_result(jobs[1])
        await node.result(jobs[0], text_asr="你好", text_translated="hello", tts_audio="AAAA")
        outcomes = await client.outcomes(3)
        assert [o["type"] for o in outcomes] == ["translation_result", "missing_result", "translation_result"]
        assert [o["utterance_index"] for o in outcomes] == [0, 1, 2]
        assert (outcomes[0]["text_translated"], outcomes[0]["tts_audio"]) == ("hello", "AAAA")
        assert outcomes[2]["text_translated"] == "three"
        events = [(f["event"], f["job_id"]) for f in client.skipped_of("ui_event")]
        assert ("DISPATCHED", jobs[0]["job_id"]) in events and ("NMT_DONE", jobs[0]["job_id"]) in events

        record = await d.store.get_job(jobs[0]["job_id"])
        assert record is not None and record.state == "completed" and record.node == node.node_id
        assert record.detail.startswith("{") and "你好" in record.detail  # the outcome replaced the audio

        # The HTTP views read the store with a pipeline (nodes) and MGET (instances): routed on the cluster too.
        async with httpx.AsyncClient(base_url=d.http) as http:
            view = (await http.get("/api/v1/cluster")).json()
        assert [n["node_id"] for n in view["nodes"]] == [node.node_id]
        assert view["nodes"][0]["online"] is True and view["nodes"][0]["current_jobs"] == 0
        assert d.scheduler.instance_id in [i["instance_id"] for i in view["instances"]]

        await client.close_session("done")
        close = await client.expect("session_close_ack")
        assert close["session_id"] == client.session_id


async def test_concurrent_identical_http_requests_make_one_job_on_the_cluster(d: Running) -> None:
    body = {
        "src_lang": "zh",
        "tgt_lang": "en",
        "audio": base64.b64encode(pcm16(200)).decode(),
        "audio_format": "pcm16",
        "sample_rate": 16000,
    }
    headers = {"Idempotency-Key": "cluster-burst-1"}
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()
        replies = await asyncio.gather(*(http.post("/api/v1/jobs", json=body, headers=headers) for _ in range(50)))
        assert {r.status_code for r in replies} == {202}
        job_ids = {r.json()["job_id"] for r in replies}
        assert len(job_ids) == 1
        [job_id] = job_ids
        assert sum(r.headers.get("idempotent-replayed") == "true" for r in replies) == 49
        job = await node.next_job()
        assert job["job_id"] == job_id
        await node.expect_nothing(0.5, types={"job_assign"})  # one job_assign, to one node

        await node.result(job, text_asr="你好", text_translated="hello")
        status = (await http.get(f"/api/v1/jobs/{job_id}", params={"wait": 5})).json()
        assert status["status"] == "completed" and status["attempt"] == 1
        assert status["result"]["text_translated"] == "hello"
