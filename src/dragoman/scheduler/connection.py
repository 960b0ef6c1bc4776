"""One WebSocket's outgoing side: frames queue in order and a single writer task sends them.

Any task may send (``send_nowait``), so frames for one socket never interleave and a slow peer never
blocks the sender; a peer that falls ``max_backlog`` frames or ``max_unsent_bytes`` behind is disconnected
at once (the frames still queued are dropped: a peer that does not read would never get them).

The writer sends every frame queued by the time it runs: under ``dragoman serve`` they go in one write to the
socket (the server's ``dragoman.frames`` extension, see ``dragoman.scheduler.transport``), so the frames one
event-loop turn makes for a socket cost one system call, not one each. Under another ASGI server they go one
by one. The same extension reads (``FrameReader``): the app takes the socket's frames from it, not as ASGI
messages.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

SLOW_READER = 1008  # policy violation: the close code of a peer dropped for not reading its frames
FRAMES_EXTENSION = "dragoman.frames"  # the ASGI scope extension of a server that reads and writes frames directly


class FrameReader(Protocol):
    """What the server's WebSocket protocol offers under ``FRAMES_EXTENSION`` for reading."""

    def text_frames(self) -> AsyncIterator[str]:
        """The peer's text frames until the socket ends, without an ASGI message each."""
        ...


class FrameWriter(Protocol):
    """What the server's WebSocket protocol offers under ``FRAMES_EXTENSION``."""

    async def write_frames(self, frames: list[bytes]) -> None:
        """Send text frames (UTF-8 bytes) in one write, once the transport takes writes."""


class Connection:
    def __init__(self, websocket: WebSocket, name: str, max_unsent_bytes: int, max_backlog: int = 10_000) -> None:
        self.websocket = websocket
        self.name = name
        self.closed = False
        self._max_backlog = max_backlog
        self._max_unsent_bytes = max_unsent_bytes
        self._unsent_bytes = 0
        self._close_code = 1000
        self._close_reason = ""
        self._outbox: collections.deque[bytes] = collections.deque()
        self._ready = asyncio.Event()  # set when a frame is queued or the socket closes
        writer: FrameWriter | None = websocket.scope.get("extensions", {}).get(FRAMES_EXTENSION)
        self._write_frames = writer.write_frames if writer is not None else self._send_one_by_one
        self._writer = asyncio.create_task(self._write(), name=f"writer {name}")

    def send_nowait(self, frame: bytes) -> bool:
        """Queue a frame; False when the socket is closed (the frame is dropped)."""
        if self.closed:
            return False
        if len(self._outbox) >= self._max_backlog:
            self._drop_slow_reader(f"{self._max_backlog} frames unsent")
            return False
        if self._unsent_bytes + len(frame) > self._max_unsent_bytes:
            self._drop_slow_reader(f"over {self._max_unsent_bytes} bytes unsent")
            return False
        self._unsent_bytes += len(frame)
        self._outbox.append(frame)
        self._ready.set()
        return True

    async def send(self, frame: bytes) -> bool:
        return self.send_nowait(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued; ``reason`` (at most 123 bytes) tells the peer why."""
        if not self.closed:
            self.closed = True
            self._close_code = code
            self._close_reason = reason
            self._ready.set()

    def _drop_slow_reader(self, why: str) -> None:
        """Disconnect now, without the queued frames: the writer may be stuck on the full socket."""
        log.warning("%s: %s, disconnecting the slow peer", self.name, why)
        self.closed = True
        self._writer.cancel()
        self._clear()
        asyncio.create_task(self._close_now(f"slow reader: {why}"))  # noqa: RUF006 - it finishes by itself

    async def _close_now(self, reason: str) -> None:
        with contextlib.suppress(Exception):  # the server aborts a socket whose peer does not read
            await self.websocket.close(SLOW_READER, reason)

    def _clear(self) -> None:
        self._outbox.clear()
        self._unsent_bytes = 0

    async def _send_one_by_one(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.websocket.send_text(frame.decode())

    async def _write(self) -> None:
        try:
            while self._outbox or not self.closed:
                if not self._outbox:
                    await self._ready.wait()
                    self._ready.clear()
                    continue
                frames = list(self._outbox)
                self._clear()
                await self._write_frames(frames)
            with contextlib.suppress(Exception):
                await self.websocket.close(self._close_code, self._close_reason)
        except Exception as exc:  # the peer went away: the reader sees the close and cleans up
            log.debug("%s: send failed: %s", self.name, exc)
            self.closed = True
            self._clear()
