"""Failures: deadlines, node loss, node errors, failover limits; exactly one outcome per utterance."""

from __future__ import annotations

import asyncio

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16


async def test_silent_node_is_cancelled_and_the_job_moves_on(dragoman: StartDragoman) -> None:
    d = await dragoman(job_timeout_ms=300, tick_interval_ms=50)
    async with (
        LinguaNode(d.node_url) as silent,
        LinguaWebClient(d.session_url) as client,
    ):
        await silent.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        first = await silent.next_job()
        async with LinguaNode(d.node_url) as healthy:
            await healthy.start()
            cancel = await silent.expect("job_cancel", timeout=3)
            assert cancel == {
                "type": "job_cancel",
                "job_id": first["job_id"],
                "trace_id": first["trace_id"],
                "reason": "job_timeout",
            }
            retry = await healthy.next_job(timeout=3)
            assert retry["job_id"] == first["job_id"] and retry["attempt_id"] == 2  # B3: attempt + 1
            # The silent node answers late: its result is stale, the client sees only the second attempt's.
            await silent.result(first, text_translated="late")
            await healthy.result(retry, text_translated="on time")
            [outcome] = await client.outcomes(1)
            assert outcome["text_translated"] == "on time"
            await client.expect_nothing(0.3, types={"translation_result", "missing_result", "error"})


async def test_node_socket_close_fails_over_at_once(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as healthy, LinguaWebClient(d.session_url) as client:
        doomed = LinguaNode(d.node_url)
        await doomed.open()
        await doomed.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await doomed.next_job()
        await healthy.start()
        await doomed.close()
        retry = await healthy.next_job(timeout=3)
        assert (retry["job_id"], retry["attempt_id"]) == (job["job_id"], 2)
        await healthy.result(retry)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result"
        dispatched = [e for e in client.skipped_of("ui_event") if e["event"] == "DISPATCHED"]
        assert len(dispatched) == 2  # one per attempt


async def test_node_without_heartbeat_is_dropped_and_its_jobs_move(dragoman: StartDragoman) -> None:
    d = await dragoman(node_liveness_ms=400, tick_interval_ms=50)
    async with LinguaNode(d.node_url) as halfopen, LinguaWebClient(d.session_url) as client:
        await halfopen.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await halfopen.next_job()
        async with LinguaNode(d.node_url) as healthy:
            await healthy.start()
            for _ in range(6):  # only the healthy node keeps heart-beating
                await asyncio.sleep(0.1)
                await healthy.heartbeat()
            retry = await healthy.next_job(timeout=3)
            assert (retry["job_id"], retry["attempt_id"]) == (job["job_id"], 2)
            assert await halfopen.wait_closed(timeout=3) is not None  # its socket was closed


async def test_model_not_available_moves_the_job_and_excludes_the_node(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with (
        LinguaNode(d.node_url) as lacking,
        LinguaNode(d.node_url) as other,
        LinguaWebClient(d.session_url) as client,
    ):
        await lacking.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await lacking.next_job()
        await other.start()
        details = {"service_id": "nmt-m2m100", "service_version": "1.0.0", "reason": "not installed"}
        await lacking.fail(job, code="MODEL_NOT_AVAILABLE", message="missing", details=details)
        retry = await other.next_job()
        assert retry["attempt_id"] == 2
        await other.result(retry)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result"  # the error is not relayed: another node took it
        # The lacking node is skipped for this pair while excluded, even with room and session affinity.
        async with LinguaWebClient(d.session_url) as second:
            await second.init(two_way=False)
            await second.utterance(0, pcm16(100))
            await other.next_job()
            await lacking.expect_nothing(0.3, types={"job_assign"})


async def test_model_not_available_with_no_other_node_is_relayed(dragoman: StartDragoman) -> None:
    # With several cells the job first waits for a node of another cell, up to the pending timeout.
    d = await dragoman(pending_timeout_ms=1000)
    async with LinguaNode(d.node_url) as lacking, LinguaWebClient(d.session_url) as client:
        await lacking.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await lacking.next_job()
        await lacking.fail(job, code="MODEL_NOT_AVAILABLE", message="missing", details={"service_id": "tts"})
        [outcome] = await client.outcomes(1)
        assert outcome == {
            "type": "error",
            "code": "MODEL_NOT_AVAILABLE",
            "message": "missing",
            "details": {"service_id": "tts"},
        }


async def test_failovers_are_limited_then_the_slot_times_out(dragoman: StartDragoman) -> None:
    d = await dragoman(job_timeout_ms=200, tick_interval_ms=50, failover_max_attempts=1)
    nodes = [LinguaNode(d.node_url) for _ in range(3)]
    async with LinguaWebClient(d.session_url) as client:
        for node in nodes:
            await node.open()
            await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "missing_result" and outcome["reason"] == "gap_timeout"
        errors = [e for e in client.skipped_of("ui_event") if e["event"] == "ERROR"]
        assert [e["error_code"] for e in errors] == ["JOB_TIMEOUT"]
        for node in nodes:
            await node.jobs_within(0.2)
        received = [job for node in nodes for job in node.jobs]
        assert sorted(f["attempt_id"] for f in received) == [1, 2]  # one failover, never a third attempt
        assert len({f["job_id"] for f in received}) == 1
        for node in nodes:
            await node.close()


async def test_all_nodes_gone_then_one_comes_back_within_the_pending_timeout(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=3000)
    async with LinguaWebClient(d.session_url) as client:
        gone = LinguaNode(d.node_url)
        await gone.open()
        await gone.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await gone.next_job()
        await gone.close()  # the only node: the job waits for another
        await asyncio.sleep(0.3)
        async with LinguaNode(d.node_url) as back:  # a restarted node process: a new node id
            await back.start()
            retry = await back.next_job(timeout=3)
            assert (retry["job_id"], retry["attempt_id"]) == (job["job_id"], 2)
            await back.result(retry)
            [outcome] = await client.outcomes(1)
            assert outcome["type"] == "translation_result"


async def test_all_nodes_gone_and_none_comes_back(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=300, tick_interval_ms=50)
    async with LinguaWebClient(d.session_url) as client:
        gone = LinguaNode(d.node_url)
        await gone.open()
        await gone.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await gone.next_job()
        await gone.close()
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "missing_result" and outcome["reason"] == "gap_timeout"
        # The session is not wedged.
        async with LinguaNode(d.node_url) as fresh:
            await fresh.start()
            await client.utterance(1, pcm16(100))
            assert (await fresh.next_job())["utterance_index"] == 1


async def test_reconnected_node_keeps_its_id_but_never_gets_the_same_job(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=400, tick_interval_ms=50)
    async with LinguaWebClient(d.session_url) as client:
        node = LinguaNode(d.node_url)
        await node.open()
        node_id = await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await node.next_job()
        await node.close()
        await node.open()
        assert await node.start() == node_id  # the same id (§9.1)
        await node.expect_nothing(0.3, types={"job_assign"})  # N4/N5: it would reject it
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "missing_result"
        await client.utterance(1, pcm16(100))
        assert (await node.next_job())["utterance_index"] == 1  # and it gets new work
        await node.close()
