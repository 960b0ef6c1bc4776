"""The store's Lua scripts: loaded once, called by SHA, reloaded if the server lost them.

A cell's scripts are ``_cell.lua`` (the helpers every cell script shares) followed by the script's own
file; the instance and session scripts stand alone. Each file opens with its KEYS, ARGV and reply.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError

from dragoman import metrics

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
    "room_leave",
    "room_raw_voice",
    "room_touch",
    "room_expire",
    "room_code_release",
    "room_drop_instance",
    "room_join_budget",
)


def _source(name: str) -> str:
    lua = resources.files("dragoman.store") / "lua"
    own = (lua / f"{name}.lua").read_text()
    return (lua / "_cell.lua").read_text() + "\n" + own if name in CELL_SCRIPTS else own


class Scripts:
    """The scripts of one store client, by name."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._sources = {name: _source(name) for name in (*CELL_SCRIPTS, *OTHER_SCRIPTS)}
        self._shas: dict[str, str] = {}
        metrics.SCRIPT_LATENCY.known(self._sources)

    async def load(self) -> None:
        for name, source in self._sources.items():
            self._shas[name] = await self._client.script_load(source)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()
        try:
            return await self._client.evalsha(self._shas[name], len(keys), *keys, *args)
        except NoScriptError:
            # The server restarted without its script cache (or was flushed): load and retry once.
            await self.load()
            return await self._client.evalsha(self._shas[name], len(keys), *keys, *args)
        finally:
            metrics.SCRIPT_LATENCY.observe(time.perf_counter() - started, name)
