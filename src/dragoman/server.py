"""``dragoman serve``: the store (embedded unless a URL is given), the scheduler and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator

import uvicorn

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
            ws_max_size=settings.max_message_bytes * 2,  # frames up to the limit get an error reply, not a close
            ws_ping_interval=20,
            ws_per_message_deflate=False,  # audio does not compress; deflate costs CPU and latency on every frame
            lifespan="off",
            timeout_graceful_shutdown=5,  # then open sockets are closed; their work stays in the store
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
