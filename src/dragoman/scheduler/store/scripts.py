"""The store's Lua scripts: loaded once, called by SHA, reloaded if the server lost them.

A cell's scripts are ``_cell.lua`` (the helpers every cell script shares) followed by the script's own
file; the instance and session scripts stand alone. Each file opens with its KEYS, ARGV and reply.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from dragoman.scheduler import metrics

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

    Calls made in one event-loop turn (sessions creating jobs, a node's burst of results) go to the store
    together, in one pipeline: one write and one read for all of them instead of a round trip each. Each
    script is still one atomic call, run in the order the calls were made; each caller gets its own reply
    or its own error, as if it had called alone. (A Redis Cluster client pipelines no scripts: its calls go
    one by one, to their shards.)"""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._sources = {name: _source(name) for name in (*CELL_SCRIPTS, *OTHER_SCRIPTS)}
        self._shas: dict[str, str] = {}
        self._queued: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        metrics.SCRIPT_LATENCY.known(self._sources)

    async def load(self) -> None:
        for name, source in self._sources.items():
            self._shas[name] = await self._client.script_load(source)

    async def call(self, name: str, keys: list[str], args: list[Any]) -> Any:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        call = _Call(self._shas[name], keys, args, loop.create_future())
        if not self._queued:
            loop.call_soon(self._send_queued)
        self._queued.append(call)
        try:
            return await call.reply
        finally:
            metrics.SCRIPT_LATENCY.observe(time.perf_counter() - started, name)

    def _send_queued(self) -> None:
        calls, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._send(calls), name="store scripts")
        self._sending.add(task)  # held until done: a task nobody references may be collected
        task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            if len(calls) == 1:
                replies = [await self._evalsha(calls[0])]
            elif isinstance(self._client, RedisCluster):  # a cluster pipeline refuses EVALSHA: one call each
                replies = await asyncio.gather(*(self._evalsha(call) for call in calls), return_exceptions=True)
            else:
                async with self._client.pipeline(transaction=False) as pipe:
                    for call in calls:
                        pipe.evalsha(call.sha, len(call.keys), *call.keys, *call.args)
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed: every call of the batch gets the error
            for call in calls:
                _settle(call.reply, exc)
            if not isinstance(exc, Exception):
                raise
            return
        reloaded = False
        for call, reply in zip(calls, replies, strict=True):
            if isinstance(reply, NoScriptError):
                # The server restarted without its script cache (or was flushed): load (once) and retry once.
                try:
                    if not reloaded:
                        await self.load()
                        reloaded = True
                    reply = await self._evalsha(call)
                except Exception as exc:
                    reply = exc
            _settle(call.reply, reply)

    async def _evalsha(self, call: _Call) -> Any:
        try:
            return await self._client.evalsha(call.sha, len(call.keys), *call.keys, *call.args)
        except NoScriptError as exc:
            return exc


@dataclass(slots=True)
class _Call:
    sha: str
    keys: list[str]
    args: list[Any]
    reply: asyncio.Future[Any]


def _settle(reply: asyncio.Future[Any], result: Any) -> None:
    if reply.done():  # the caller gave up (cancelled)
        return
    if isinstance(result, asyncio.CancelledError):
        reply.cancel()
    elif isinstance(result, BaseException):
        reply.set_exception(result)
    else:
        reply.set_result(result)
