"""The WebSocket transport under the app: uvicorn's protocol, with Dragoman's frame reader and writer and a
peer that stopped reading cut off, and the uvicorn options of both sockets."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dragoman.config import Settings
from dragoman.scheduler.connection import FRAMES_EXTENSION

log = logging.getLogger("dragoman")

# Frames received and not yet taken by the app: past either bound the socket is read no further (a frame can
# be up to twice max_message_bytes: the characters bound keeps a slow reader's backlog to about a MiB).
UNREAD_FRAMES = 64
UNREAD_CHARS = 1 << 20


class _AppQueue(asyncio.Queue[Any]):
    """uvicorn's queue of ASGI messages for the app, which also tells the frame reader the socket ended."""

    ended: Callable[[], None] | None = None

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item)
        if item["type"] == "websocket.disconnect" and self.ended is not None:
            self.ended()


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with Dragoman's frame reader and writer (``text_frames``,
    ``write_frames``: offered to the app as the scope extension ``dragoman.frames``), and a peer that stopped
    reading is cut off, not waited for.

    Closing a transport waits until its buffered bytes reach the peer, which for a frozen peer is never:
    its socket (and a node's attempts) would stay open. A ping timeout, or a close while the peer's
    buffer is full (``Connection`` dropping a slow reader), therefore aborts the transport."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._app_queue = _AppQueue()
        self.queue = self._app_queue
        self._unread: collections.deque[str] | None = None  # the frames, once the app reads them directly
        self._unread_chars = 0
        self._ended = False
        self._arrived: asyncio.Future[None] | None = None  # what text_frames waits on

    def keepalive_timeout(self) -> None:
        closing = self.close_sent or self.transport.is_closing()
        super().keepalive_timeout()
        if not closing:
            log.warning(
                "%s on %s: no pong within %g s; disconnected", _peer(self.client), self.scope["path"], self.ping_timeout
            )
        self.transport.abort()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # none when the handshake was refused
        if scope is not None:
            scope["extensions"][FRAMES_EXTENSION] = self

    async def text_frames(self) -> AsyncIterator[str]:
        """The peer's text frames as they arrive, until the socket ends: taken from the protocol, not as an
        ASGI message each (no message, queue entry, Starlette layer or pause of the socket per frame; the
        socket is paused only while ``UNREAD_FRAMES`` or ``UNREAD_CHARS`` wait). Binary frames are ignored
        (F3). The app reads the socket either this way or by ASGI ``receive``, not both."""
        unread: collections.deque[str] = collections.deque()
        while not self.queue.empty():  # what arrived before the app asked
            message: Any = self.queue.get_nowait()
            if message["type"] == "websocket.disconnect":
                self._ended = True
            elif message.get("text") is not None:
                unread.append(message["text"])
                self._unread_chars += len(message["text"])
        self._unread = unread
        self._app_queue.ended = self._end
        if not self._over_unread():
            self._resume()
        while True:
            while unread:
                frame = unread.popleft()
                self._unread_chars -= len(frame)
                if self.read_paused and not self._over_unread(half=True):
                    self._resume()
                yield frame
            if self._ended:
                return
            self._arrived = self.loop.create_future()
            await self._arrived

    def send_receive_event_to_app(self) -> None:
        if self._unread is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        self.frames = []
        if self.close_sent or self.curr_msg_data_type != "text":
            return  # past the app's close, or a binary frame (F3)
        try:
            text = data.decode()
        except UnicodeDecodeError:
            log.warning("%s on %s: a text frame that is not UTF-8; closed", _peer(self.client), self.scope["path"])
            self.conn.send_close(1007)
            self.handle_parser_exception()
            return
        self._unread.append(text)
        self._unread_chars += len(text)
        self._wake()
        if not self.read_paused and self._over_unread():
            self.read_paused = True
            self.transport.pause_reading()

    def _over_unread(self, half: bool = False) -> bool:
        frames, chars = (UNREAD_FRAMES // 2, UNREAD_CHARS // 2) if half else (UNREAD_FRAMES, UNREAD_CHARS)
        return self._unread is not None and (len(self._unread) >= frames or self._unread_chars >= chars)

    def _end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    def _resume(self) -> None:
        if self.read_paused and not self.transport.is_closing():
            self.read_paused = False
            self.transport.resume_reading()

    async def write_frames(self, frames: list[bytes]) -> None:
        """Text frames (UTF-8 bytes, as Dragoman encodes them) in one write: no str round trip, no ASGI
        message per frame, one system call for what one event-loop turn queued (``dragoman.scheduler.connection``)."""
        await self.writable.wait()
        if self.disconnected or self.close_sent:
            raise ClientDisconnected()
        for frame in frames:
            self.conn.send_text(frame)
        self.transport.write(b"".join(self.conn.data_to_send()))

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.handshake_complete and not self.writable.is_set():
            self.transport.abort()  # connection_lost tells the app: websocket.disconnect
            return
        await super().send(message)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a peer"


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The WebSocket options of uvicorn, for both sockets: frame size, pings, and the protocol above."""
    pings = settings.ws_ping_interval_ms > 0 and settings.ws_ping_timeout_ms > 0
    return {
        "ws": WebSocketProtocol,
        "ws_max_size": settings.max_message_bytes * 2,  # frames up to the limit get an error reply, not a close
        "ws_ping_interval": settings.ws_ping_interval_ms / 1000 if pings else None,
        "ws_ping_timeout": settings.ws_ping_timeout_ms / 1000 if pings else None,
        "ws_per_message_deflate": False,  # audio does not compress; deflate costs CPU and latency on every frame
    }
