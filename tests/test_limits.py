"""Memory bounds (issue 9, item 12): every buffer that input can fill has a byte limit, and hitting it gives a
clear error or a clear close, never a silent loss and never unbounded memory. Real sockets, small limits."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, pcm16

FAILED = "Failed to process message: "


def _job_body(audio: bytes) -> bytes:
    return json.dumps({"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(audio).decode()}).encode()


async def _raw_post(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, dict[str, str]]:
    """POST /api/v1/jobs over a plain socket, sending only ``body_parts`` of the body; the status and the JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + head)
        for part in body_parts:
            writer.write(part)
            await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        headers: dict[str, str] = {}
        while (line := await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
        return int(status_line.split()[1]), json.loads(body)
    finally:
        writer.close()


async def test_http_body_over_the_limit_is_refused_before_it_is_read(dragoman: StartDragoman) -> None:
    d = await dragoman(max_http_body_bytes=4096)
    # Content-Length says 300 MB; only 1 KB is ever sent: the answer cannot wait for the rest.
    status, problem = await _raw_post(d.port, b"Content-Length: 300000000\r\n\r\n", [b"{" + b" " * 1023])
    assert status == 413, problem
    assert problem["error"] == "payload_too_large" and "max_http_body_bytes (4096 bytes)" in problem["message"]
    # Chunked (no Content-Length): counted as it arrives, refused past the limit although it never ends.
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    status, problem = await _raw_post(d.port, b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 6)
    assert status == 413 and problem["error"] == "payload_too_large", problem
    # A body within the limit still makes its job.
    async with httpx.AsyncClient(base_url=d.http) as http:
        created = await http.post("/api/v1/jobs", content=_job_body(pcm16(50)))
        assert created.status_code == 202, created.text
        too_big = await http.post("/api/v1/jobs", content=_job_body(pcm16(200)))  # 6.4 KB of audio
        assert too_big.status_code == 413 and too_big.json()["error"] == "payload_too_large"


async def test_held_utterances_are_bounded_per_session_and_nothing_accepted_is_lost(dragoman: StartDragoman) -> None:
    audio = pcm16(100)  # 3.2 KB, 4.3 KB of base64
    size = len(base64.b64encode(audio))
    d = await dragoman(max_held_bytes_per_session=2 * size, utterance_reorder_ms=60_000)
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init(two_way=False)
        await client.utterance(1, audio)
        await client.utterance(2, audio)  # two held: the budget is full
        await client.utterance(3, audio)
        refused = await client.expect("error")
        assert refused["code"] == "INTERNAL_ERROR"
        assert refused["message"].startswith(f"{FAILED}utterance_index 3 not held: this session holds")
        assert "max_held_bytes_per_session" in refused["message"]
        await client.utterance(0, audio)  # the missing index: 0, 1 and 2 go out, in order
        jobs = [await node.next_job() for _ in range(3)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2]
        await client.utterance(3, audio)  # the refused index may be sent again; in order now, it is not held
        jobs.append(await node.next_job())
        for job in jobs:
            await node.result(job)
        outcomes = await client.outcomes(4)
        assert [(o["type"], o["utterance_index"]) for o in outcomes] == [("translation_result", i) for i in range(4)]


async def test_held_utterances_are_bounded_per_instance(dragoman: StartDragoman) -> None:
    audio = pcm16(100)
    size = len(base64.b64encode(audio))
    d = await dragoman(max_held_bytes=size, utterance_reorder_ms=60_000)
    async with LinguaWebClient(d.session_url) as first, LinguaWebClient(d.session_url) as second:
        await first.init(two_way=False)
        await second.init(two_way=False)
        await first.utterance(5, audio)  # held: the instance's whole budget
        await first.heartbeat()  # (its reply proves the utterance was handled and nothing else was sent)
        await second.utterance(5, audio)
        refused = await second.expect("error")
        assert refused["code"] == "INTERNAL_ERROR" and "max_held_bytes " in refused["message"], refused
        await first.close_session()  # releases its held utterance (dispatched): the budget is free again
        await second.utterance(6, audio)
        await second.heartbeat()
        assert not second.skipped_of("error")


async def test_one_session_per_socket(dragoman: StartDragoman) -> None:
    d = await dragoman(close_grace_ms=200)
    async with LinguaWebClient(d.session_url) as client:
        ack = await client.init()
        first = ack["session_id"]
        for _ in range(3):  # it used to make a session each time (20,000 of them on one socket)
            await client.send({"type": "session_init", "client_version": "v", "platform": "web", "src_lang": "zh",
                               "tgt_lang": "en"})  # fmt: skip
            refused = await client.expect("error")
            assert refused["code"] == "INTERNAL_ERROR" and f"already has session {first}" in refused["message"]
        assert list(d.scheduler.sessions) == [first]
        assert (await client.heartbeat())["session_id"] == first  # the session is untouched
        await client.close_session()
        await client.expect("session_close_ack", session_id=first)
        second = (await client.init())["session_id"]  # closed: the socket may open the next one
        assert second != first and list(d.scheduler.sessions) == [second]


async def test_slow_reader_is_dropped_by_unsent_bytes(
    dragoman: StartDragoman, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 1024 * 1024
    d = await dragoman(max_unsent_bytes=limit, ws_ping_interval_ms=0)  # no pings: the byte limit alone acts
    async with LinguaNode(d.node_url) as node:
        await node.start()
        slow = await connect(d.session_url, max_queue=1, ping_interval=None)
        await slow.send(json.dumps({"type": "session_init", "client_version": "v", "platform": "web",
                                    "src_lang": "zh", "tgt_lang": "en"}))  # fmt: skip
        session_id = json.loads(await slow.recv())["session_id"]
        await slow.send(json.dumps({"type": "utterance", "session_id": session_id, "utterance_index": 0,
                                    "manual_cut": True, "src_lang": "zh", "tgt_lang": "en",
                                    "audio": base64.b64encode(pcm16(100)).decode(), "audio_format": "pcm16",
                                    "sample_rate": 16000}))  # fmt: skip
        job = await node.next_job()
        slow.transport.pause_reading()  # the client stops reading; the node streams 200 KB partials at it
        with caplog.at_level(logging.WARNING, logger="dragoman.scheduler.connection"):
            for i in range(200):  # 40 MB: past the kernel's buffers and the limit (pings would come much later)
                await node.partial(job, text=f"{i} " + "x" * 200_000)
                if session_id not in d.scheduler.sessions:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("the slow reader was never dropped")
        drops = [r.getMessage() for r in caplog.records if "slow peer" in r.getMessage()]
        assert drops == [f"client: over {limit} bytes unsent, disconnecting the slow peer"]  # logged once
        slow.transport.resume_reading()
        with pytest.raises(ConnectionClosed):
            for _ in range(1000):
                await asyncio.wait_for(slow.recv(), 5)
        # Everything else goes on: the node still works for a new session.
        async with LinguaWebClient(d.session_url) as client:
            await client.init(two_way=False)
            await client.utterance(0, pcm16(100))
            await node.result(await node.next_job())
            assert (await client.outcomes(1))[0]["type"] == "translation_result"


def _writers() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("writer "))


async def test_sockets_that_never_introduce_themselves_are_closed(dragoman: StartDragoman) -> None:
    d = await dragoman(handshake_timeout_ms=300)
    before = _writers()
    async with LinguaWebClient(d.session_url) as owner:
        await owner.init(two_way=False)
        idle = [LinguaWebClient(d.session_url) for _ in range(5)] + [LinguaNode(d.node_url) for _ in range(5)]
        for peer in idle:
            await peer.open()
        await idle[0].send({"type": "audio_chunk", "session_id": "s-NOPE", "seq": 0, "is_final": False})
        await idle[0].expect("error")  # a frame for no session does not count as an introduction
        # Naming another socket's session does not count either (a message acts only on its own socket's session).
        stranger = LinguaWebClient(d.session_url)
        await stranger.open()
        stranger.session_id = owner.session_id
        await stranger.send({"type": "client_heartbeat", "session_id": owner.session_id, "timestamp": 1})
        await stranger.expect("error", code="INVALID_SESSION")
        idle.append(stranger)
        node = LinguaNode(d.node_url)
        await node.start()
        for peer in idle:
            assert await peer.wait_closed(timeout=10) == 1008
        assert idle[0].ws is not None and idle[0].ws.close_reason == "no session_init within 300 ms"
        assert idle[5].ws is not None and idle[5].ws.close_reason == "no node_register within 300 ms"
        await asyncio.sleep(0.5)
        assert (await owner.heartbeat())["session_id"] == owner.session_id
        await node.heartbeat()
        assert node.node_id in d.scheduler.nodes
        for peer in [*idle, node]:
            await peer.close()
    for _ in range(100):  # nothing of a closed socket is left behind
        if _writers() == before and not d.scheduler.nodes:
            break
        await asyncio.sleep(0.05)
    assert _writers() == before and not d.scheduler.nodes and not d.scheduler.sessions
