"""The store's Lua scripts: loaded once, called by SHA, reloaded if the server lost them.

A cell's scripts are ``_cell.lua`` (the helpers every cell script shares) followed by the script's own
file; the instance and session scripts stand alone. Each file opens with its KEYS, ARGV and reply.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError

from dragoman.scheduler import metrics
from dragoman.scheduler.store.multiplex import Multiplexed

CELL_SCRIPTS = (
    "create_job",
    "settle_slot",
    "complete_job",
    "mark_job",
    "cancel_jobs",
    "register_node",
    "heartbeat_node",
    "node_gone",
    "tick",
    "reconcile",
    "probe_cell",
    "take_waiting",
    "adopt_job",
    "finish_move",
)
OTHER_SCRIPTS = (
    "announce_instance",
    "take_instances",
    "claim_session",
    "room_create",
    "room_join",
    "room_remove",
    "room_raw_voice",
    "room_touch",
    "room_expire",
    "room_code_release",
    "room_join_budget",
)


def _source(name: str) -> str:
    lua = resources.files("dragoman.scheduler.store") / "lua"
    own = (lua / f"{name}.lua").read_text()
    return (lua / "_cell.lua").read_text() + "\n" + own if name in CELL_SCRIPTS else own


class Scripts:
    """The scripts of one store client, by name.

    On a standalone server every call goes over one shared connection (``Multiplexed``): the calls of one
    event-loop turn (sessions creating jobs, a node's burst of results) reach the store in one write and
    their replies in a few reads, instead of a round trip and a pooled connection each. Each script is
    still one atomic call, run in the order the calls were made; each caller gets its own reply or its
    own error, as if it had called alone. A Redis Cluster client sends each call to its shard."""

    def __init__(self, client: redis.Redis, line: Multiplexed | None) -> None:
        self._client = client
        self._sources = {name: _source(name) for name in (*CELL_SCRIPTS, *OTHER_SCRIPTS)}
        self._shas: dict[str, str] = {}
        self._loading: asyncio.Task[None] | None = None
        # A Cluster client sends each call to its shard; a standalone server takes them on the shared line.
        self._evalsha: Callable[..., Awaitable[Any]] = (
            client.evalsha if line is None else functools.partial(line.execute, "EVALSHA")
        )
        metrics.SCRIPT_LATENCY.known(self._sources)

    async def load(self) -> None:
        for name, source in self._sources.items():
            self._shas[name] = await self._client.script_load(source)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            try:
                return await self._evalsha(self._shas[name], len(keys), *keys, *args)
            except NoScriptError:
                # The server restarted without its script cache (or was flushed): load (once for all the
                # calls that found them gone) and retry once.
                await self._reload()
                return await self._evalsha(self._shas[name], len(keys), *keys, *args)
        finally:
            metrics.SCRIPT_LATENCY.observe(time.perf_counter() - started, name)

    async def _reload(self) -> None:
        if self._loading is None or self._loading.done():
            self._loading = asyncio.get_running_loop().create_task(self.load(), name="store scripts load")
        await asyncio.shield(self._loading)
