"""Several instances sharing one store: work crosses instances through their inboxes."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Running, start_dragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk


@pytest.fixture
async def pair(any_store_url: str) -> AsyncIterator[tuple[Running, Running]]:
    prefix = f"multi-{uuid.uuid4().hex[:8]}"
    a = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50)
    b = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50)
    yield a, b
    for instance in (a, b):
        await instance.stop()


async def test_session_on_one_instance_and_node_on_another(pair: tuple[Running, Running]) -> None:
    a, b = pair
    async with LinguaNode(b.node_url) as node, LinguaWebClient(a.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(3):
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
        jobs = [await node.next_job() for _ in range(3)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2]
        for job in reversed(jobs):
            await node.result(job, text_translated=f"t{job['utterance_index']}")
        outcomes = await client.outcomes(3)
        assert [o["text_translated"] for o in outcomes] == ["t0", "t1", "t2"]
        events = [e["event"] for e in client.skipped_of("ui_event")]
        assert events.count("DISPATCHED") == 3  # sent by b, delivered to a's client


async def test_concurrent_identical_job_requests_on_two_instances_make_one_job(
    pair: tuple[Running, Running],
) -> None:
    a, b = pair
    body = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(100)).decode()}
    headers = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    async with LinguaNode(a.node_url) as node, httpx.AsyncClient() as http:
        await node.start()
        posts = [http.post(f"{x.http}/api/v1/jobs", json=body, headers=headers) for x in (a, b) * 20]
        replies = await asyncio.gather(*posts)
        assert len({r.json()["job_id"] for r in replies}) == 1
        job = await node.next_job()
        await node.expect_nothing(0.3, types={"job_assign"})
        await node.result(job, text_translated="once")
        # Either instance answers for the job.
        status = (await http.get(f"{b.http}/api/v1/jobs/{job['job_id']}", params={"wait": 5})).json()
        assert status["status"] == "completed" and status["result"]["text_translated"] == "once"


async def test_both_instances_see_every_node(pair: tuple[Running, Running]) -> None:
    a, b = pair
    async with LinguaNode(a.node_url) as n1, LinguaNode(b.node_url) as n2, httpx.AsyncClient() as http:
        await n1.start()
        await n2.start()
        for instance in (a, b):
            cluster = (await http.get(f"{instance.http}/api/v1/cluster")).json()
            assert {n["node_id"] for n in cluster["nodes"]} == {n1.node_id, n2.node_id}
            assert cluster["online_instances"] == 2


async def test_three_instances_session_node_and_api_each_on_another(any_store_url: str) -> None:
    prefix = f"three-{uuid.uuid4().hex[:8]}"
    a, b, c = [await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50) for _ in range(3)]
    try:
        body = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(100)).decode()}
        async with (
            LinguaNode(c.node_url) as node,
            LinguaWebClient(a.session_url) as client,
            httpx.AsyncClient() as http,
        ):
            await node.start()
            await client.init(two_way=False)
            await client.utterance(0, pcm16(100))
            created = (await http.post(f"{b.http}/api/v1/jobs", json=body)).json()
            jobs = {j["session_id"]: j for j in [await node.next_job(), await node.next_job()]}
            for job in jobs.values():
                await node.result(job, text_translated=job["session_id"])
            [outcome] = await client.outcomes(1)
            assert outcome["text_translated"] == client.session_id
            status = (await http.get(f"{a.http}/api/v1/jobs/{created['job_id']}", params={"wait": 5})).json()
            assert status["status"] == "completed"
            cluster = (await http.get(f"{b.http}/api/v1/cluster")).json()
            assert cluster["total_instances"] == 3 and cluster["online_nodes"] == 1
            assert all(i["inbox_pending"] == 0 for i in cluster["instances"])
    finally:
        for instance in (a, b, c):
            await instance.stop()


async def test_an_undecodable_inbox_entry_is_skipped_and_the_inbox_goes_on(
    pair: tuple[Running, Running], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    inbox = a.store.keys.inbox(a.scheduler.instance_id)
    # Garbage, an entry of another version, and one without the envelope field, written by "another instance".
    await a.store.client.xadd(inbox, {"e": b"\xc1 not msgpack"})
    await a.store.client.xadd(inbox, {"e": b"\x82\xa1v\x09\xa7message\x80"})
    await a.store.client.xadd(inbox, {"k": b"outcome", "m": b"old format"})
    async with LinguaNode(b.node_url) as node, LinguaWebClient(a.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await node.result(await node.next_job(), text_translated="still delivered")
        [outcome] = await client.outcomes(1)  # through a's inbox, after the bad entries
        assert outcome["text_translated"] == "still delivered"
    for _ in range(50):
        length, pending = await a.store.inbox_stats(a.scheduler.instance_id)
        if length == 0:
            break
        await asyncio.sleep(0.05)
    assert (length, pending) == (0, 0)  # every entry acknowledged and deleted, the bad ones too
    skipped = [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(skipped) == 3
    assert not [r for r in caplog.records if r.exc_info is not None]
