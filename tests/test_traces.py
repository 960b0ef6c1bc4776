"""Job and session traces: a completed, a failed-over and a timed-out utterance, told step by step."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from conftest import Running, StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk


async def trace_of(d: Running, job_id: str, until: str = "delivered") -> dict[str, Any]:
    """The job's trace once it has the step ``until`` (the cut and delivery are written every 100 ms)."""
    async with httpx.AsyncClient(base_url=d.http) as http:
        for _ in range(100):
            response = await http.get(f"/api/v1/jobs/{job_id}/trace")
            if response.status_code == 200 and any(s["e"] == until for s in response.json()["steps"]):
                body: dict[str, Any] = response.json()
                return body
            await asyncio.sleep(0.05)
    raise AssertionError(f"no {until!r} step in the trace of {job_id}: {response.text}")


def events(trace: dict[str, Any]) -> list[str]:
    """The steps of a trace, but ``waiting``: a job cut while the node's first heartbeat is still on its way
    to the store waits a moment (with several cells, it may also wait before it moves to the node's cell)."""
    return [step["e"] for step in trace["steps"] if step["e"] != "waiting"]


async def test_completed_utterance_trace_from_cut_to_delivery(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        node_id = await node.start()
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        await node.result(job)
        await client.outcomes(1)
        trace = await trace_of(d, job["job_id"])
        assert events(trace) == ["cut", "created", "assigned", "result", "outcome", "delivered"]
        assert trace["cut"]["reason"] == "is_final" and trace["cut"]["audio_ms"] > 0
        assert trace["session_id"] == client.session_id and trace["utterance_index"] == 0
        assert trace["trace_id"] == client.trace_id and trace["pair"] == "zh:en"
        [attempt] = trace["attempts"]
        assert attempt["node_id"] == node_id and attempt["instance"] == d.scheduler.instance_id
        assert attempt["result"] == "completed"
        assert trace["outcome"]["state"] == "completed"
        times = [step["t"] for step in trace["steps"][1:]]
        assert times == sorted(times)

        async with httpx.AsyncClient(base_url=d.http) as http:
            session = (await http.get(f"/api/v1/sessions/{client.session_id}/trace")).json()
            by_trace = (await http.get(f"/api/v1/traces/{client.trace_id}")).json()
            assert (await http.get("/api/v1/traces/no-such-trace")).status_code == 404
        [utterance] = session["utterances"]
        assert utterance["job_id"] == job["job_id"] and utterance["utterance_index"] == 0
        assert by_trace["session_id"] == client.session_id
        assert [u["job_id"] for u in by_trace["utterances"]] == [job["job_id"]]


async def test_failed_over_trace_names_both_nodes_and_why(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as healthy, LinguaWebClient(d.session_url) as client:
        doomed = LinguaNode(d.node_url)
        doomed_id = await doomed.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await doomed.next_job()
        healthy_id = await healthy.start()
        await doomed.close()
        retry = await healthy.next_job(timeout=3)
        await healthy.result(retry)
        await client.outcomes(1)
        trace = await trace_of(d, job["job_id"])
        # With several cells the job may move to the healthy node's cell: its trace follows it.
        assert events(trace) == ["cut", "created", "assigned", "failover", "assigned", "result", "outcome", "delivered"]
        assert trace["cut"]["reason"] == "utterance"
        first, second = trace["attempts"]
        assert (first["node_id"], first["failover_why"]) == (doomed_id, "NODE_UNAVAILABLE")
        assert (second["attempt"], second["node_id"], second["result"]) == (2, healthy_id, "completed")


async def test_timed_out_trace_ends_in_timed_out(dragoman: StartDragoman) -> None:
    d = await dragoman(job_timeout_ms=300, tick_interval_ms=50, failover_max_attempts=0)
    async with LinguaNode(d.node_url) as silent, LinguaWebClient(d.session_url) as client:
        await silent.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await silent.next_job()
        await client.outcomes(1, timeout=5)
        trace = await trace_of(d, job["job_id"])
        assert "failover" in events(trace) and events(trace)[-2:] == ["outcome", "delivered"]
        assert trace["outcome"] == {"state": "timed_out", "why": "JOB_TIMEOUT", "t": trace["outcome"]["t"]}


async def test_unknown_job_and_session_have_no_trace(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http) as http:
        assert (await http.get("/api/v1/jobs/job-nope/trace")).status_code == 404
        missing = await http.get("/api/v1/sessions/s-nope/trace")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"


async def test_trace_is_capped_and_expires_with_its_job(dragoman: StartDragoman) -> None:
    # One cell: the cap is per list, and a job that moves between cells has a list in each.
    d = await dragoman(pending_timeout_ms=60_000, failover_max_attempts=50, cells=1)
    async with httpx.AsyncClient(base_url=d.http) as http:  # no node: the job waits, and fails over
        created = await http.post("/api/v1/jobs", json={"src_lang": "zh", "tgt_lang": "en", "audio": "AAAA"})
    job_id = created.json()["job_id"]
    for _ in range(40):  # nodes come and go: the job is offered and loses its node again and again
        async with LinguaNode(d.node_url) as node:
            await node.start()
            await node.next_job()
        if len(await d.store.job_trace(job_id)) >= 64:
            break
    steps = await d.store.job_trace(job_id)
    assert len(steps) == 64 and steps[0]["e"] != "created"  # the oldest steps made room
    ttl = await d.store.client.pttl(d.store.keys.job_trace(0, job_id))
    assert 0 < ttl <= d.settings.binding_ttl_ms


async def test_steps_of_a_job_that_is_gone_leave_nothing_behind(dragoman: StartDragoman) -> None:
    d = await dragoman()
    await d.store.add_traces([("job-gone", 0, {"e": "delivered", "t": 1})], [])
    assert not await d.store.client.exists(d.store.keys.job_trace(0, "job-gone"))


async def test_instance_stamped_steps_keep_their_causal_place_whatever_the_clocks_say(
    dragoman: StartDragoman,
) -> None:
    # The cut and the delivery are stamped by an instance's clock, the other steps by the store's. An
    # instance clock that runs behind or ahead (or in the same millisecond) must not reorder them.
    d = await dragoman(cells=1)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await node.next_job()
        await node.result(job)
        await client.outcomes(1)
        trace = await trace_of(d, job["job_id"])
    skewed_delivery = {"e": "delivered", "t": int(trace["created_ms"]) - 5_000}  # a clock behind the store's
    skewed_cut = {"e": "cut", "t": int(trace["delivered_ms"]) + 5_000}  # a clock ahead of it
    await d.store.add_traces([(job["job_id"], 0, skewed_delivery), (job["job_id"], 0, skewed_cut)], [])
    steps = [step["e"] for step in await d.store.job_trace(job["job_id"]) if step["e"] != "waiting"]
    assert steps == ["cut", "cut", "created", "assigned", "result", "outcome", "delivered", "delivered"]
