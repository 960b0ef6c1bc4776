"""The WebSocket transport under the app: uvicorn's protocol, with Dragoman's frame writer and a peer that
stopped reading cut off, and the uvicorn options of both sockets."""

from __future__ import annotations

import logging
from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dragoman.config import Settings
from dragoman.scheduler.connection import FRAMES_EXTENSION

log = logging.getLogger("dragoman")


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, with Dragoman's frame writer (``write_frames``, offered to the app as the
    scope extension ``dragoman.frames``), and a peer that stopped reading is cut off, not waited for.

    Closing a transport waits until its buffered bytes reach the peer, which for a frozen peer is never:
    its socket (and a node's attempts) would stay open. A ping timeout, or a close while the peer's
    buffer is full (``Connection`` dropping a slow reader), therefore aborts the transport."""

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
