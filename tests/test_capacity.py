"""Selection: least-loaded live node with room, capacity respected, turn affinity."""

from __future__ import annotations

from collections import Counter

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk


async def test_load_is_spread_by_capacity_across_two_nodes(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with (
        LinguaNode(d.node_url, max_concurrent_jobs=2) as small,
        LinguaNode(d.node_url, max_concurrent_jobs=6) as big,
    ):
        await small.start()
        await big.start()
        clients = [LinguaWebClient(d.session_url) for _ in range(8)]
        for c in clients:
            await c.open()
            await c.init(two_way=False)
        for c in clients:
            await c.utterance(0, pcm16(100))
        # 8 jobs, room for 2 + 6: each node is filled exactly to its capacity, nothing more.
        got_small = [await small.next_job() for _ in range(2)]
        got_big = [await big.next_job() for _ in range(6)]
        await small.expect_nothing(0.2, types={"job_assign"})
        await big.expect_nothing(0.2, types={"job_assign"})
        assert len({j["session_id"] for j in got_small + got_big}) == 8
        for c in clients:
            await c.close()


async def test_full_node_gets_nothing_more_until_it_answers(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=1) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await client.utterance(1, pcm16(100))
        first = await node.next_job()
        await node.expect_nothing(0.3, types={"job_assign"})  # full: index 1 waits in the store
        await node.result(first)
        second = await node.next_job()  # the freed capacity takes the waiting job at once
        assert second["utterance_index"] == 1


async def test_least_loaded_node_is_chosen_for_new_sessions(dragoman: StartDragoman) -> None:
    # Least loaded within a cell: with several cells a session's jobs go to its home cell's nodes first.
    d = await dragoman(cells=1)
    async with LinguaNode(d.node_url, max_concurrent_jobs=4) as a, LinguaNode(d.node_url, max_concurrent_jobs=4) as b:
        await a.start()
        await b.start()
        clients = [LinguaWebClient(d.session_url) for _ in range(6)]
        for c in clients:
            await c.open()
            await c.init(two_way=False)
            await c.utterance(0, pcm16(100))
        counts = Counter({"a": len(await a.jobs_within()), "b": len(await b.jobs_within())})
        assert counts == Counter({"a": 3, "b": 3})
        for c in clients:
            await c.close()


async def test_jobs_of_one_turn_go_to_the_same_node(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as a, LinguaNode(d.node_url, max_concurrent_jobs=8) as b:
        await a.start()
        await b.start()
        async with LinguaWebClient(d.session_url) as client:
            await client.init()
            for _ in range(80):  # two MaxDuration cuts, then the closing cut: one turn of three jobs
                await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            got_a, got_b = await a.jobs_within(), await b.jobs_within()
            assert sorted([len(got_a), len(got_b)]) == [0, 3]
            assert len({j["turn_id"] for j in got_a + got_b}) == 1


async def test_two_way_job_needs_a_node_serving_both_directions(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=300)
    async with LinguaNode(d.node_url, langs=("zh",)) as zh_only, LinguaWebClient(d.session_url) as client:
        await zh_only.start()
        await client.init(lang_a="zh", lang_b="en")
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["code"] == "NO_AVAILABLE_NODE"
        await zh_only.expect_nothing(0.1, types={"job_assign"})
