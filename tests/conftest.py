"""Fixtures: a real valkey-server and a real 3-master Valkey Cluster for the whole run, and real Dragoman
instances on loopback ports.

Each Dragoman started here gets its own key prefix, so tests share one store without seeing each other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from dragoman.config import Settings
from dragoman.scheduler.app import create_app
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.server import UvicornServer
from dragoman.scheduler.store import Store
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.transport import uvicorn_options

from cluster import ValkeyCluster
from peers import NODE_READY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
async def store_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    server = EmbeddedStore(tmp_path_factory.mktemp("valkey"))
    url = await server.start()
    yield url
    await server.stop()


@pytest.fixture(scope="session")
async def cluster_url() -> AsyncIterator[str]:
    """A Valkey Cluster of three masters on loopback ports (``redis+cluster://…``), started on first use."""
    async with ValkeyCluster() as cluster:
        yield cluster.url


@pytest.fixture(params=["store_url", "cluster_url"], ids=["single", "cluster"])
def any_store_url(request: pytest.FixtureRequest) -> str:
    """The single server's URL, then the cluster's: each fixture is started only if a test asks for it."""
    url: str = request.getfixturevalue(request.param)
    return url


@dataclass
class Running:
    """One Dragoman instance serving on 127.0.0.1."""

    port: int
    scheduler: Scheduler
    store: Store
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def session_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/session"

    @property
    def node_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/node"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def settings(self) -> Settings:
        return self.scheduler.settings

    async def node_ready(self, node_id: str) -> bool:
        """Whether the node's first heartbeat has reached the store (the node can be given jobs)."""
        return any(n.node_id == node_id and n.load for n in await self.store.nodes())  # a heartbeat's load

    async def stop(self) -> None:
        NODE_READY.pop(self.node_url, None)
        self.server.should_exit = True
        done, _ = await asyncio.wait([self.task], timeout=10)
        if not done:  # never let a stuck shutdown hang the suite
            self.task.cancel()
        await self.scheduler.stop()
        await self.store.close()


StartDragoman = Callable[..., Awaitable[Running]]


# The number of scheduling cells of the instances the tests start: CI runs the suite with one cell, then
# with several (DRAGOMAN_CELLS=4), so that every behaviour holds either way.
CELLS = int(os.environ.get("DRAGOMAN_CELLS", "1"))


async def start_dragoman(
    store_url: str, prefix: str | None = None, plain_uvicorn: bool = False, **overrides: Any
) -> Running:
    """``plain_uvicorn``: uvicorn's own WebSocket protocol, as under any ASGI server (frames as ASGI messages)."""
    settings = Settings(key_prefix=prefix or f"t-{uuid.uuid4().hex[:10]}", log_level="warning", cells=CELLS)
    settings = settings.replace(**overrides)
    store = Store(settings, store_url)
    await store.open()
    scheduler = Scheduler(settings, store)
    await scheduler.start()
    port, server, task = await serve_app(create_app(scheduler), **({} if plain_uvicorn else uvicorn_options(settings)))
    running = Running(port, scheduler, store, server, task)
    NODE_READY[running.node_url] = running.node_ready
    return running


async def serve_app(app: Any, **config: Any) -> tuple[int, UvicornServer, asyncio.Task[None]]:
    """Serve an ASGI app on a free loopback port; returns once it accepts connections."""
    port = free_port()
    options = {"log_level": "warning", "lifespan": "off", "timeout_graceful_shutdown": 3} | config
    server = UvicornServer(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    return port, server, task


@pytest.fixture
async def dragoman(store_url: str) -> AsyncIterator[StartDragoman]:
    """A factory: ``await dragoman(pause_ms=500)`` starts an instance with those settings."""
    running: list[Running] = []

    async def start(**overrides: Any) -> Running:
        instance = await start_dragoman(store_url, **overrides)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        await instance.stop()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"
