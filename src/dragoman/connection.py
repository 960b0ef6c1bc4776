"""One WebSocket's outgoing side: frames queue in order and a single writer task sends them.

Any task may send (``send_nowait``), so frames for one socket never interleave and a slow peer never
blocks the sender; a peer that falls ``max_backlog`` frames behind is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket

log = logging.getLogger(__name__)


class Connection:
    def __init__(self, websocket: WebSocket, name: str, max_backlog: int = 10_000) -> None:
        self.websocket = websocket
        self.name = name
        self.closed = False
        self._max_backlog = max_backlog
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name=f"writer {name}")

    def send_nowait(self, frame: bytes) -> bool:
        """Queue a frame; False when the socket is closed (the frame is dropped)."""
        if self.closed:
            return False
        if self._outbox.qsize() >= self._max_backlog:
            log.warning("%s: %d frames unsent, disconnecting the slow peer", self.name, self._max_backlog)
            self.close()
            return False
        self._outbox.put_nowait(frame)
        return True

    async def send(self, frame: bytes) -> bool:
        return self.send_nowait(frame)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close after the frames already queued; ``reason`` (at most 123 bytes) tells the peer why."""
        if not self.closed:
            self.closed = True
            self._close_code = code
            self._close_reason = reason
            self._outbox.put_nowait(None)

    async def _write(self) -> None:
        try:
            while (frame := await self._outbox.get()) is not None:
                await self.websocket.send_text(frame.decode())
            with contextlib.suppress(Exception):
                await self.websocket.close(self._close_code, self._close_reason)
        except Exception as exc:  # the peer went away: the reader sees the close and cleans up
            log.debug("%s: send failed: %s", self.name, exc)
            self.closed = True
