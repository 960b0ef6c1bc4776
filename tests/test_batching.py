"""Work that arrives together goes out together: store scripts called in one event-loop turn share one
pipeline, frames queued for a socket in one turn share one write, and a node's burst of results is handled
without one result waiting for the store round trip of the one before. Each keeps its own reply, error and
order. Real valkey-server, real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from dragoman.config import Settings
from dragoman.scheduler.connection import FRAMES_EXTENSION, Connection
from dragoman.scheduler.store import Store
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store.records import ProbeReply
from dragoman.scheduler.store.store import _PACKED, BATCH
from dragoman.scheduler.transport import UNREAD_CHARS, UNREAD_FRAMES, uvicorn_options

from conftest import StartDragoman, serve_app
from peers import LinguaNode, LinguaWebClient, pcm16


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = Store(Settings(key_prefix=f"b-{uuid.uuid4().hex[:8]}"), store_url)
    await s.open()
    yield s
    await s.close()


async def _connections(url: str) -> int:
    async with redis.from_url(url) as admin:
        info = await admin.info("clients")
    return int(info["connected_clients"]) - 1  # not this one


async def _probe(store: Store, pair: str = "zh:en") -> ProbeReply:
    return await store._cell("probe_cell", [store.keys.deadlines(0)], [pair], ProbeReply)


async def test_calls_of_one_turn_share_one_connection_and_each_gets_its_reply(store: Store, store_url: str) -> None:
    before = await _connections(store_url)
    replies = await asyncio.gather(*(_probe(store) for _ in range(50)))
    # One call at a time would have opened a pooled connection for each concurrent call.
    assert await _connections(store_url) - before <= 5  # (not 50; a little room for other clients of the server)
    assert all(isinstance(r, ProbeReply) and r.pairs == [] for r in replies)


async def test_an_error_in_a_batch_is_the_failing_callers_alone(store: Store) -> None:
    # The pair's set of groups is a string here: the script's SMEMBERS fails with WRONGTYPE.
    await store.client.set(store.keys.deadlines(0).removesuffix("deadlines") + "pair:ja:de", "not a set")
    results = await asyncio.gather(_probe(store), _probe(store, "ja:de"), _probe(store), return_exceptions=True)
    assert isinstance(results[0], ProbeReply) and isinstance(results[2], ProbeReply)
    assert isinstance(results[1], redis.ResponseError)


async def test_a_batch_survives_a_store_that_lost_its_scripts(store: Store) -> None:
    await store.client.script_flush()  # as after a restart without persistence
    replies = await asyncio.gather(*(_probe(store) for _ in range(10)))
    assert all(isinstance(r, ProbeReply) for r in replies)


async def test_every_call_of_a_batch_gets_the_error_of_an_unreachable_store(tmp_path: Path) -> None:
    server = EmbeddedStore(tmp_path)
    down = Store(Settings(key_prefix="b-down"), await server.start())
    await down.open()
    await server.stop()
    results = await asyncio.gather(*(_probe(down) for _ in range(5)), return_exceptions=True)
    await down.close()
    assert all(isinstance(r, redis.ConnectionError) for r in results), results


def _burst_app(frames: int) -> Starlette:
    async def burst(websocket: WebSocket) -> None:
        await websocket.accept()
        conn = Connection(websocket, "burst", max_unsent_bytes=1 << 20)
        for i in range(frames):  # all in one turn: one write under dragoman serve
            conn.send_nowait(b'{"n":%d}' % i)
        conn.close(4000, "done")
        async for _ in websocket.iter_text():
            pass

    return Starlette(routes=[WebSocketRoute("/burst", burst)])


@pytest.mark.parametrize("server", ["dragoman", "plain uvicorn"])
async def test_frames_queued_together_arrive_in_order_then_the_close(server: str) -> None:
    options: dict[str, Any] = uvicorn_options(Settings()) if server == "dragoman" else {}
    port, uvicorn_server, task = await serve_app(_burst_app(200), **options)
    try:
        async with connect(f"ws://127.0.0.1:{port}/burst") as ws:
            received = []
            with contextlib.suppress(ConnectionClosed):  # 4000 is not a normal close: iterating raises
                async for msg in ws:
                    received.append(msg)
            assert ws.close_code == 4000 and ws.close_reason == "done"
        assert received == [f'{{"n":{i}}}' for i in range(200)]
    finally:
        uvicorn_server.should_exit = True
        await task


@pytest.mark.parametrize("plain_uvicorn", [False, True], ids=["dragoman", "plain uvicorn"])
async def test_results_sent_just_before_the_node_closes_count(dragoman: StartDragoman, plain_uvicorn: bool) -> None:
    d = await dragoman(cells=1, plain_uvicorn=plain_uvicorn)  # plain: frames read and written as ASGI messages
    async with LinguaWebClient(d.session_url) as client:
        node = LinguaNode(d.node_url, max_concurrent_jobs=40)
        await node.start()
        await client.init(two_way=False)
        for i in range(30):
            await client.utterance(i, pcm16(100))
        jobs = [await node.next_job() for _ in range(30)]
        for job in jobs:  # a burst of results, then the socket closes at once
            await node.result(job)
        await node.close()
        outcomes = await client.outcomes(30)
    assert [o["type"] for o in outcomes] == ["translation_result"] * 30
    assert [o["utterance_index"] for o in outcomes] == list(range(30))


@pytest.mark.parametrize(
    "args",
    [
        ("EVALSHA", "f" * 40, 2, "{sched:0}:deadlines", "{sched:0}:job:j-1", 0.30000000000000004, 60_000, "x" * 3000),
        ("CONFIG GET", "maxmemory"),  # a command of two words goes as two
        ("SET", b"\x00\xff", "é", -1),
    ],
)
def test_the_store_packs_commands_as_redis_py_does(args: tuple[Any, ...]) -> None:
    for plain, packed in _PACKED.items():
        assert b"".join(packed().pack_command(*args)) == b"".join(plain().pack_command(*args)), packed


async def test_many_sessions_are_renewed_in_several_pipelines_and_every_one_counts(store: Store) -> None:
    sessions = [f"s-renew-{i}" for i in range(3 * BATCH + 5)]  # four pipelines
    for session in sessions:
        await store.open_session(session, "inst", "actor", b"{}", "trace")
    await store.keep_sessions([(session, i) for i, session in enumerate(sessions)])
    for i, session in enumerate(sessions):
        assert await store.client.hget(store.keys.session(session), "delivered") == str(i).encode()


def _slow_reader_app(slow_frames: int) -> Starlette:
    async def read(websocket: WebSocket) -> None:
        await websocket.accept()
        reader = websocket.scope["extensions"][FRAMES_EXTENSION]
        received = []
        async for text in reader.text_frames():
            if len(received) < slow_frames:  # slower than the frames arrive: the unread ones pile up
                await asyncio.sleep(0.002)
            received.append(text)
            if text == "end":
                break
        await websocket.send_text(json.dumps([[text[:8], len(text)] for text in received]))  # in order, whole
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/read", read)])


@pytest.mark.parametrize("size", ["small", "large"])
async def test_frames_read_directly_arrive_in_order_past_the_unread_bound(size: str) -> None:
    # Small frames pass the bound on frames waiting, large ones the bound on their characters.
    pad = "" if size == "small" else "x" * (UNREAD_CHARS // 8)
    frames = [f"f{i}{pad}" for i in range(5 * UNREAD_FRAMES if size == "small" else 40)]
    port, uvicorn_server, task = await serve_app(_slow_reader_app(2 * UNREAD_FRAMES), **uvicorn_options(Settings()))
    try:
        async with connect(f"ws://127.0.0.1:{port}/read") as ws:
            for frame in frames:
                await ws.send(frame)
            await ws.send(b"binary frames are ignored")
            await ws.send("end")
            assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == [[t[:8], len(t)] for t in [*frames, "end"]]
    finally:
        uvicorn_server.should_exit = True
        await task


async def test_a_text_frame_that_is_not_utf8_closes_its_socket_alone(dragoman: StartDragoman) -> None:
    d = await dragoman(cells=1)
    init = {"type": "session_init", "client_version": "t", "platform": "web", "src_lang": "zh", "tgt_lang": "en"}
    async with connect(d.session_url) as bad, connect(d.session_url) as good:
        await bad.send(b"\xff\xfe not UTF-8", text=True)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(bad.recv(), 5)
        assert bad.close_code == 1007
        await good.send(json.dumps(init))
        assert json.loads(await asyncio.wait_for(good.recv(), 5))["type"] == "session_init_ack"
