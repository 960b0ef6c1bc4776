"""The one-shot ``utterance`` path (PROTOCOL.md §5.3, §11.3): every index dispatched, in index order."""

from __future__ import annotations

import base64

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16


async def test_several_indexes_are_all_dispatched_in_order(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False, src_lang="zh", tgt_lang="en")
        audio = pcm16(300)
        for i in range(4):  # B7: lingua dispatched only index 0
            await client.utterance(i, audio)
        jobs = [await node.next_job() for _ in range(4)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2, 3]
        job = jobs[0]
        assert job["audio_format"] == "pcm16" and job["sample_rate"] == 16000
        assert base64.b64decode(job["audio"]) == audio
        assert job["is_manual_cut"] is True  # a whole turn: the node must not hold it (§11.2)
        assert "padding_ms" not in job
        assert len({j["turn_id"] for j in jobs}) == 4
        for j in jobs:
            await node.result(j)
        outcomes = await client.outcomes(4)
        assert [o["utterance_index"] for o in outcomes] == [0, 1, 2, 3]


async def test_client_pipeline_is_honoured(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        pipeline = {"use_asr": True, "use_nmt": True, "use_tts": False, "use_semantic": True, "use_tone": False}
        await client.utterance(0, pcm16(200), pipeline=pipeline, trace_id="trace-x", dialect="yue")
        job = await node.next_job()
        assert job["pipeline"] == pipeline  # B8: lingua overwrote it
        assert job["trace_id"] == "trace-x" and job["dialect"] == "yue"


async def test_out_of_order_indexes_wait_for_the_missing_one(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(2, pcm16(100))
        await client.utterance(1, pcm16(100))
        await node.expect_nothing(0.2, types={"job_assign"})
        await client.utterance(0, pcm16(100))
        jobs = [await node.next_job() for _ in range(3)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2]


async def test_missing_index_is_skipped_after_the_reorder_wait(dragoman: StartDragoman) -> None:
    d = await dragoman(utterance_reorder_ms=300)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(1, pcm16(100))  # index 0 never comes
        job = await node.next_job(timeout=3)
        assert job["utterance_index"] == 1
        await node.result(job)
        [outcome] = await client.outcomes(1)
        assert outcome["utterance_index"] == 1  # no slot exists for index 0: nothing waits for it


async def test_used_index_is_rejected(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await node.next_job()
        await client.utterance(0, pcm16(100))
        error = await client.expect("error")
        assert error == {"type": "error", "code": "INVALID_MESSAGE", "message": "utterance_index 0 already used"}
        await node.expect_nothing(0.2, types={"job_assign"})


async def test_no_node_on_utterance_path_uses_lingua_error(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=200)
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False, src_lang="ja", tgt_lang="ko")
        await client.utterance(0, pcm16(100), src_lang="ja", tgt_lang="ko")
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["code"] == "INTERNAL_ERROR"
        assert outcome["message"].startswith("Failed to process message:") and "ja:ko" in outcome["message"]


async def test_streaming_counter_moves_past_utterance_indexes(dragoman: StartDragoman) -> None:
    from peers import voiced_chunk

    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        await client.utterance(0, pcm16(100))
        await client.utterance(1, pcm16(100))
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        jobs = [await node.next_job() for _ in range(3)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2]
        assert jobs[2]["audio_format"] == "opus"


async def test_held_utterances_are_bounded(dragoman: StartDragoman) -> None:
    from dragoman.scheduler.session import MAX_HELD_UTTERANCES

    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=1000) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        for i in range(1, MAX_HELD_UTTERANCES + 2):  # index 0 never comes
            await client.utterance(i, pcm16(20))
        jobs = await node.jobs_within(1.0)  # well before utterance_reorder_ms (5 s)
        assert [j["utterance_index"] for j in jobs] == list(range(1, MAX_HELD_UTTERANCES + 2))
