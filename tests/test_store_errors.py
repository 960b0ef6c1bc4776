"""``store_unavailable``: the errors a real valkey-server gives while it cannot take work, and the ones it
gives for a wrong command (which are bugs, not outages)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis._parsers.base import BaseParser
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store_errors import store_unavailable

from conftest import free_port

SPIN_LUA = "local n = 0 for i = 1, 500000000 do n = n + i end return 1"  # a second or more of Lua


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[redis.Redis]:
    server = EmbeddedStore(tmp_path / "store")
    await server.start()
    client = redis.Redis.from_url(server.url)
    yield client
    await client.aclose()
    await server.stop()


async def error_of(call: object) -> BaseException:
    try:
        await call  # type: ignore[misc]
    except Exception as exc:
        return exc
    raise AssertionError("the call succeeded")


async def test_out_of_memory_is_unavailable(client: redis.Redis) -> None:
    await client.config_set("maxmemory", "1")
    assert store_unavailable(await error_of(client.set("k", "v")))
    assert store_unavailable(await error_of(client.eval("return redis.call('SET', 'k', 'v')", 0)))


async def test_a_read_only_replica_and_a_replica_without_its_master_are_unavailable(client: redis.Redis) -> None:
    await client.replicaof("127.0.0.1", free_port())  # a master that is not there
    assert store_unavailable(await error_of(client.set("k", "v")))  # READONLY
    await client.config_set("replica-serve-stale-data", "no")
    assert store_unavailable(await error_of(client.get("k")))  # MASTERDOWN
    await client.replicaof("no", "one")


async def test_a_store_busy_running_a_script_is_unavailable(client: redis.Redis) -> None:
    await client.config_set("busy-reply-threshold", "50")
    spin = asyncio.create_task(client.eval(SPIN_LUA, 0))  # on one connection of the pool
    try:
        await asyncio.sleep(0.3)
        assert store_unavailable(await error_of(client.get("k")))  # BUSY, on another
    finally:
        await spin


async def test_a_refused_connection_is_unavailable() -> None:
    client = redis.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    assert store_unavailable(await error_of(client.ping()))
    await client.aclose()


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Valkey is loading the dataset in memory",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "CLUSTERDOWN The cluster is down",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "ERR Error running script (call to f_0123): @user_script:1: -READONLY You can't write against a replica.",
    ],
)
def test_replies_of_a_failover_or_a_loading_store_are_unavailable(reply: str) -> None:
    assert store_unavailable(BaseParser.parse_error(reply))


async def test_errors_of_a_wrong_command_are_not_unavailable(client: redis.Redis) -> None:
    await client.set("k", "v")
    assert not store_unavailable(await error_of(client.lpush("k", "x")))  # WRONGTYPE
    assert not store_unavailable(await error_of(client.evalsha("0" * 40, 0)))  # NOSCRIPT
    await client.xgroup_create("s", "g", mkstream=True)
    assert not store_unavailable(await error_of(client.xgroup_create("s", "g")))  # BUSYGROUP
    assert not store_unavailable(ValueError("a bug"))
