"""A store reply lost after the script ran (a timeout): the node's result is sent again, and the retry yields
the same outcome, so the client still gets its result (before, the retry saw the job resolved and the client
got ``gap_timeout`` for a job that had completed)."""

from __future__ import annotations

from typing import Any

from redis.exceptions import TimeoutError as StoreTimeout

from dragoman.scheduler.store.records import ResultReply

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16


async def test_a_result_whose_store_reply_was_lost_is_still_delivered(dragoman: StartDragoman) -> None:
    d = await dragoman(gap_timeout_ms=3000)
    complete_job = d.store.complete_job
    lost: list[str] = []

    async def reply_lost_once(*args: Any, **kwargs: Any) -> ResultReply:
        reply = await complete_job(*args, **kwargs)  # the script ran and resolved the job...
        if not lost:
            lost.append(reply.verdict)
            raise StoreTimeout("Timeout reading from the store")  # ...but its reply never arrived
        return reply

    d.store.complete_job = reply_lost_once  # type: ignore[method-assign]
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        await client.utterance(1, pcm16(100))
        first, second = await node.next_job(), await node.next_job()
        await node.result(first, text_translated="zero")
        await node.result(second, text_translated="one")
        outcomes = await client.outcomes(2)
    assert lost == ["accepted"]
    assert [(o["type"], o.get("text_translated")) for o in outcomes] == [
        ("translation_result", "zero"),
        ("translation_result", "one"),
    ]
