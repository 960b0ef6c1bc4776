"""The store's Lua scripts: loaded once, called by SHA, reloaded if the server lost them.

Every script is ``_lib.lua`` (the shared helpers) followed by the script's own file, so one helper
definition serves all of them. Every call carries the common ARGV header that ``_lib.lua`` reads.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.exceptions import NoScriptError

SCRIPT_NAMES = (
    "create_job",
    "complete_job",
    "mark_job",
    "cancel_jobs",
    "register_node",
    "heartbeat_node",
    "node_gone",
    "tick",
    "announce_instance",
    "reconcile",
    "claim_session",
)


def _source(name: str) -> str:
    lua = resources.files("dragoman.store") / "lua"
    return (lua / "_lib.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


class Scripts:
    """The scripts of one store connection, by name."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._sources = {name: _source(name) for name in SCRIPT_NAMES}
        self._shas: dict[str, str] = {}

    async def load(self) -> None:
        for name, source in self._sources.items():
            self._shas[name] = await self._client.script_load(source)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._client.evalsha(self._shas[name], len(keys), *keys, *args)
        except NoScriptError:
            # The server restarted without its script cache (or was flushed): load and retry once.
            await self.load()
            return await self._client.evalsha(self._shas[name], len(keys), *keys, *args)
