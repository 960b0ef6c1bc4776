"""Session resume (the ``resume_session_id`` extension) and the death of an instance (SIGKILL)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from conftest import Running, free_port, start_dragoman
from peers import LinguaNode, LinguaWebClient, pcm16, voiced_chunk


@pytest.fixture
async def pair(any_store_url: str) -> AsyncIterator[tuple[Running, Running]]:
    prefix = f"resume-{uuid.uuid4().hex[:8]}"
    a = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50)
    b = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50)
    yield a, b
    for instance in (a, b):
        await instance.stop()


async def test_resumed_session_keeps_id_numbering_and_gets_missed_outcomes(pair: tuple[Running, Running]) -> None:
    a, b = pair
    async with LinguaNode(b.node_url, max_concurrent_jobs=8) as node:
        await node.start()
        first = LinguaWebClient(a.session_url)
        await first.open()
        ack = await first.init(two_way=False, src_lang="zh", tgt_lang="en")
        session_id = ack["session_id"]
        for i in range(3):
            await first.utterance(i, pcm16(100))
        jobs = [await node.next_job() for _ in range(3)]
        await node.result(jobs[0], text_translated="t0")
        await first.outcomes(1)  # index 0 delivered before the socket dies
        await first.close()
        await asyncio.sleep(0.2)
        await node.result(jobs[2], text_translated="t2")
        await node.result(jobs[1], text_translated="t1")  # answered while the client is away

        async with LinguaWebClient(b.session_url) as again:
            ack2 = await again.init(
                two_way=False,
                src_lang="ja",
                tgt_lang="ko",
                resume_session_id=session_id,
                resume_token=ack["resume_token"],
            )
            assert (ack2["session_id"], ack2["trace_id"], ack2["resumed"]) == (session_id, ack["trace_id"], True)
            missed = await again.outcomes(2)
            assert [(o["utterance_index"], o["text_translated"]) for o in missed] == [(1, "t1"), (2, "t2")]
            await again.expect_nothing(0.3, types={"translation_result"})  # index 0 is not sent twice
            # A resumed client sends again what it had no outcome for; what came before the resume is not redone.
            await again.utterance(2, pcm16(100))
            await again.expect_nothing(0.3, types={"error", "translation_result"})
            await node.expect_nothing(0.2, types={"job_assign"})
            # Numbering goes on, and the session keeps its first language settings.
            await again.utterance(3, pcm16(100))
            job = await node.next_job()
            assert (job["session_id"], job["utterance_index"]) == (session_id, 3)
            await again.chunk(voiced_chunk())
            await again.chunk(voiced_chunk(), is_final=True)
            streamed = await node.next_job()
            assert streamed["utterance_index"] == 4
            assert (streamed["src_lang"], streamed["tgt_lang"]) == ("zh", "en")


async def test_unknown_session_is_not_resumed(pair: tuple[Running, Running]) -> None:
    a, _ = pair
    async with LinguaWebClient(a.session_url) as client:
        ack = await client.init(resume_session_id="s-NOTTHERE")
        assert ack["session_id"] != "s-NOTTHERE" and ack["resumed"] is False


async def test_client_that_does_not_ask_gets_no_resumed_key(pair: tuple[Running, Running]) -> None:
    a, _ = pair
    async with LinguaWebClient(a.session_url) as client:
        ack = await client.init()
        assert "resumed" not in ack


def serve(
    store_url: str, prefix: str, port: int, stderr: int = subprocess.DEVNULL, **settings: str
) -> subprocess.Popen[bytes]:
    """A real ``dragoman serve`` on the shared store, with short presence and tick timers (``settings``: more
    ``DRAGOMAN_*`` variables)."""
    env = os.environ | {
        "DRAGOMAN_KEY_PREFIX": prefix,
        "DRAGOMAN_INSTANCE_TTL_MS": "1500",
        "DRAGOMAN_TICK_INTERVAL_MS": "100",
        "DRAGOMAN_RECONNECT_GRACE_MS": "1000",
        "DRAGOMAN_LOG_LEVEL": "warning",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--redis-url", store_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"instance on port {port} never became healthy")


async def test_instance_killed_under_load_loses_nothing(any_store_url: str) -> None:
    store_url = any_store_url
    prefix = f"kill-{uuid.uuid4().hex[:8]}"
    port_a, port_b = free_port(), free_port()
    a, b = serve(store_url, prefix, port_a), serve(store_url, prefix, port_b)
    try:
        await asyncio.gather(wait_healthy(port_a), wait_healthy(port_b))
        url = {port: f"ws://127.0.0.1:{port}" for port in (port_a, port_b)}
        node_a = LinguaNode(f"{url[port_a]}/ws/node", max_concurrent_jobs=64)
        node_b = LinguaNode(f"{url[port_b]}/ws/node", max_concurrent_jobs=64)
        clients = [LinguaWebClient(f"{url[port_a]}/ws/session") for _ in range(4)]
        for peer in (node_a, node_b, *clients):
            await peer.open()
        await node_a.start()
        await node_b.start()
        for c in clients:
            await c.init(two_way=False)
        per_client = 5
        for i in range(per_client):
            for c in clients:
                await c.utterance(i, pcm16(60))
        # Each node answers half of what it got, then instance A dies with the rest in flight.
        got_a, got_b = await node_a.jobs_within(0.5), await node_b.jobs_within(0.5)
        assert len(got_a) + len(got_b) == per_client * len(clients)
        for job in got_a[: len(got_a) // 2] + got_b[: len(got_b) // 2]:
            await (node_a if job in got_a else node_b).result(job)
        await asyncio.sleep(0.3)  # longer than the 100 ms in which delivery marks reach the store
        a.send_signal(signal.SIGKILL)
        a.wait()

        # Everyone reconnects to B: the node with its id, the clients resuming their sessions.
        node_a.url = f"{url[port_b]}/ws/node"
        await node_a.close()
        await node_a.open()
        await node_a.start()
        outcomes: dict[str, list[int]] = {}
        resumed = []
        for c in clients:
            delivered = [int(str(o["utterance_index"])) for o in await drain_outcomes(c)]  # got before A died
            session_id = c.session_id
            again = LinguaWebClient(f"{url[port_b]}/ws/session")
            await again.open()
            ack = await again.init(two_way=False, resume_session_id=session_id, resume_token=c.ack["resume_token"])
            assert ack["resumed"] is True
            outcomes[session_id or ""] = delivered
            resumed.append(again)
        # B's node answers what it still holds; A's unanswered attempts fail over once A is taken over.
        for job in got_b[len(got_b) // 2 :]:
            await node_b.result(job)
        for _ in range(40):
            for node in (node_a, node_b):
                for job in await node.jobs_within(0.05):
                    await node.result(job)
            if sum(len(v) for v in outcomes.values()) >= per_client * len(clients):
                break
            for again in resumed:
                for frame in await drain_outcomes(again):
                    outcomes[again.session_id or ""].append(int(str(frame["utterance_index"])))
        for again in resumed:
            for frame in await drain_outcomes(again):
                outcomes[again.session_id or ""].append(int(str(frame["utterance_index"])))
        for session_id, indexes in outcomes.items():
            assert sorted(indexes) == list(range(per_client)), (session_id, indexes)  # none lost, none twice
        for peer in (node_a, node_b, *clients, *resumed):
            await peer.close()
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)


async def drain_outcomes(client: LinguaWebClient) -> list[dict[str, object]]:
    """The outcome frames already received or arriving within 50 ms (also from a socket whose server died)."""
    frames = []
    try:
        while True:
            frame = await client.recv(timeout=0.05)
            if frame.get("type") in ("translation_result", "missing_result", "error"):
                frames.append(frame)
    except (TimeoutError, AssertionError):
        return frames


async def test_resume_delivers_only_what_follows_what_the_client_has(pair: tuple[Running, Running]) -> None:
    """After a crash the store's delivery mark may lag what the client got (it is written every 100 ms): the
    client says what it has (``resume_delivered_index``) and nothing up to it is sent twice."""
    a, b = pair
    async with LinguaNode(b.node_url, max_concurrent_jobs=8) as node:
        await node.start()
        first = LinguaWebClient(a.session_url)
        await first.open()
        ack = await first.init(two_way=False, src_lang="zh", tgt_lang="en")
        session_id, token = ack["session_id"], ack["resume_token"]
        for i in range(3):
            await first.utterance(i, pcm16(100))
        jobs = [await node.next_job() for _ in range(3)]
        for job in jobs[:2]:
            await node.result(job, text_translated=f"t{job['utterance_index']}")
        await first.outcomes(2)
        await first.close()
        await asyncio.sleep(0.3)
        await node.result(jobs[2], text_translated="t2")
        # What a crash before the mark's flush leaves behind: the store believes nothing was delivered, and the
        # session's job index still lists its jobs.
        crashed = [(await a.store.get_job(job["job_id"]), job["utterance_index"]) for job in jobs]
        index_key = a.store.keys.session_jobs(a.store.keys.home_cell(session_id), session_id)

        async def crash_state() -> None:
            await a.store.client.zadd(index_key, {f"{r.job_id}@{r.cell}": i for r, i in crashed if r is not None})
            await a.store.keep_sessions([(session_id, -1)])

        await crash_state()
        async with LinguaWebClient(b.session_url) as old_way:  # without the field: the mark decides
            await old_way.init(two_way=False, resume_session_id=session_id, resume_token=token)
            again = await old_way.outcomes(3)
            assert [o["utterance_index"] for o in again] == [0, 1, 2]
        await asyncio.sleep(0.3)
        await crash_state()
        async with LinguaWebClient(b.session_url) as client:
            await client.init(two_way=False, resume_session_id=session_id, resume_token=token, resume_delivered_index=1)
            [missed] = await client.outcomes(1)
            assert (missed["utterance_index"], missed["text_translated"]) == (2, "t2")
            await client.expect_nothing(0.3, types={"translation_result"})
