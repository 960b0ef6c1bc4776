"""The client end's batched writes (``dragoman.websocket``): frames sent in one event-loop turn leave in one
write, in order, and the closing handshake follows whatever was queued before it. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from dragoman.websocket import BatchedWritesConnection


class _Recorder:
    def __init__(self) -> None:
        self.frames: list[str] = []
        self.close_code: int | None = None
        self.done = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # a close code other than 1000 ends the loop so
            async for frame in ws:
                assert isinstance(frame, str)
                self.frames.append(frame)
        self.close_code = ws.close_code
        self.done.set()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[_Recorder, str]]:
    rec = _Recorder()
    async with serve(rec.handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield rec, f"ws://127.0.0.1:{port}"


class _CountingWrites(BatchedWritesConnection):
    writes = 0

    def _write_unsent(self) -> None:
        if self._unsent:
            type(self).writes += 1
        super()._write_unsent()


async def test_frames_of_one_turn_leave_in_one_write_in_order(recorder: tuple[_Recorder, str]) -> None:
    rec, url = recorder
    _CountingWrites.writes = 0
    async with connect(url, create_connection=_CountingWrites) as ws:
        await asyncio.gather(*(ws.send(f"frame {i}") for i in range(200)))  # all sent within one turn
        await asyncio.sleep(0.05)
        assert _CountingWrites.writes == 1
        await ws.send("after")  # a later turn: a write of its own
    await asyncio.wait_for(rec.done.wait(), 5)
    assert rec.frames == [*(f"frame {i}" for i in range(200)), "after"]
    assert _CountingWrites.writes == 2


async def test_the_close_follows_the_frames_queued_before_it(recorder: tuple[_Recorder, str]) -> None:
    rec, url = recorder
    ws = await connect(url, create_connection=BatchedWritesConnection)
    for i in range(50):
        await ws.send(f"last words {i}")
    await ws.close(4000, "bye")  # in the same turn as the sends: they must not be lost behind it
    await asyncio.wait_for(rec.done.wait(), 5)
    assert rec.frames == [f"last words {i}" for i in range(50)]
    assert rec.close_code == 4000
