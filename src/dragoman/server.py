"""``dragoman serve``: the store (embedded unless a URL is given), the scheduler and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from dragoman.app import create_app
from dragoman.config import Settings
from dragoman.scheduler import Scheduler
from dragoman.store import Store
from dragoman.store.embedded import EmbeddedStore

log = logging.getLogger("dragoman")


class UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: ours stops the server, then the scheduler and the store."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, except that a peer that stopped reading is cut off, not waited for.

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


async def serve(settings: Settings) -> None:
    embedded: EmbeddedStore | None = None
    supervisor: asyncio.Task[None] | None = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedStore(settings.data_dir)
        url = await embedded.start()
        supervisor = asyncio.create_task(embedded.supervise(), name="embedded store supervisor")
        log.info("embedded valkey-server started: %s (data in %s)", url, embedded.data_dir)
    store = Store(settings, url)
    try:
        await store.open()
        scheduler = Scheduler(settings, store)
        await scheduler.start()
        config = uvicorn.Config(
            create_app(scheduler),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            lifespan="off",
            timeout_graceful_shutdown=5,  # then open sockets are closed; their work stays in the store
            **uvicorn_options(settings),
        )
        server = UvicornServer(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
        base = f"{settings.host}:{settings.port}"
        print(
            f"Dragoman {scheduler.instance_id} serving\n"
            f"  clients  ws://{base}/ws/session\n"
            f"  nodes    ws://{base}/ws/node\n"
            f"  health   http://{base}/health   metrics http://{base}/metrics   API http://{base}/openapi.json\n"
            f"  store    {url}",
            flush=True,
        )
        try:
            await server.serve()
        finally:
            await scheduler.stop()
    finally:
        with contextlib.suppress(Exception):
            await store.close()
        if supervisor is not None:
            supervisor.cancel()
        if embedded is not None:
            await embedded.stop()
            log.info("embedded valkey-server stopped")
