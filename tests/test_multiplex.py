"""The store's shared connection (``Multiplexed``): many calls in flight on one connection, each with its own
reply or error, and what happens when the connection is killed, the server hangs, or the client closes.
Real valkey-server processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis
import trustme
from redis.exceptions import NoScriptError

from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store.multiplex import Multiplexed


@pytest.fixture
async def own_server(tmp_path: Path) -> AsyncIterator[str]:
    """A server of this test's own (these tests stop and kill things)."""
    server = EmbeddedStore(tmp_path)
    url = await server.start()
    yield url
    await server.stop()


def _line(url: str) -> tuple[redis.Redis, Multiplexed]:
    client = redis.from_url(url)
    return client, Multiplexed(client.connection_pool)


async def test_concurrent_calls_get_their_own_replies_in_order_on_one_connection(own_server: str) -> None:
    client, line = _line(own_server)
    try:
        await line.execute("SET", "k", "v")
        replies = await asyncio.gather(*(line.execute("INCR", "n") for _ in range(500)), line.execute("GET", "k"))
        assert replies == [*range(1, 501), b"v"]
        info = await client.info("clients")
        assert info["connected_clients"] == 2  # the line and this admin client: not one per call
    finally:
        await line.close()
        await client.aclose()


async def test_an_error_reply_is_its_callers_alone_and_typed_as_redis_py_types_it(own_server: str) -> None:
    client, line = _line(own_server)
    try:
        await line.execute("SET", "s", "text")
        results = await asyncio.gather(
            line.execute("INCR", "n2"),
            line.execute("LPUSH", "s", "x"),  # WRONGTYPE
            line.execute("EVALSHA", "0" * 40, 0),  # NOSCRIPT
            line.execute("INCR", "n2"),
            return_exceptions=True,
        )
        assert results[0] == 1 and results[3] == 2
        assert isinstance(results[1], redis.ResponseError) and "WRONGTYPE" in str(results[1])
        assert isinstance(results[2], NoScriptError)
    finally:
        await line.close()
        await client.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(own_server: str) -> None:
    client, line = _line(own_server)
    try:
        slow = asyncio.ensure_future(line.execute("BLPOP", "nothing", 0.3))  # answered (nil) after 0.3 s
        await asyncio.sleep(0.05)
        after = asyncio.ensure_future(line.execute("ECHO", "after"))
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await after == b"after"
        assert await line.execute("ECHO", "next") == b"next"
    finally:
        await line.close()
        await client.aclose()


async def test_a_killed_connection_fails_the_calls_in_flight_and_the_next_call_reconnects(own_server: str) -> None:
    client, line = _line(own_server)
    try:
        await line.execute("CLIENT", "SETNAME", "the-line")
        in_flight = asyncio.ensure_future(line.execute("BLPOP", "never", 5))
        await asyncio.sleep(0.1)
        await client.execute_command("CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal")
        with pytest.raises(redis.ConnectionError):
            await asyncio.wait_for(in_flight, 2)
        assert await line.execute("ECHO", "again") == b"again"
    finally:
        await line.close()
        await client.aclose()


async def test_a_hung_server_times_the_calls_out_and_the_line_recovers_after(own_server: str) -> None:
    client, line = _line(own_server + "?socket_timeout=0.5")
    pid = int((await client.info("server"))["process_id"])
    try:
        assert await line.execute("PING") is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            started = asyncio.get_running_loop().time()
            results = await asyncio.wait_for(
                asyncio.gather(*(line.execute("INCR", "hung") for _ in range(3)), return_exceptions=True), 5
            )
            waited = asyncio.get_running_loop().time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert 0.4 < waited < 3
        assert await line.execute("ECHO", "back") == b"back"
    finally:
        await line.close()
        await client.aclose()


async def test_an_unreachable_server_fails_each_call_with_a_connection_error(own_server: str, tmp_path: Path) -> None:
    server = EmbeddedStore(tmp_path / "gone")
    url = await server.start()
    await server.stop()
    client, line = _line(url)
    try:
        results = await asyncio.gather(*(line.execute("PING") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, redis.ConnectionError) for r in results), results
    finally:
        await line.close()
        await client.aclose()


async def test_calls_after_close_fail_at_once(own_server: str) -> None:
    client, line = _line(own_server)
    assert await line.execute("PING")
    await line.close()
    with pytest.raises(redis.ConnectionError, match="closed"):
        await line.execute("PING")
    await client.aclose()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def test_a_tls_store_works_and_reconnects(own_server: str, tmp_path: Path) -> None:
    """``rediss://``: redis-py makes the TLS connection, the line takes over its transport. (The embedded
    valkey is built without TLS: a TLS terminator in front of it, on loopback, with a CA of its own.)"""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    accepted: list[asyncio.StreamWriter] = []

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        up_reader, up_writer = await asyncio.open_unix_connection(own_server.removeprefix("unix://"))
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))

    proxy = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=server_ctx)
    port = proxy.sockets[0].getsockname()[1]
    client, line = _line(f"rediss://127.0.0.1:{port}?ssl_ca_certs={ca_pem}")
    try:
        assert await asyncio.gather(*(line.execute("INCR", "tls") for _ in range(100))) == list(range(1, 101))
        accepted[-1].transport.abort()  # the TLS connection drops
        with contextlib.suppress(redis.ConnectionError):  # a call may meet the drop, or a new connection
            await line.execute("PING")
        assert await line.execute("INCR", "tls") == 101
        assert len(accepted) == 2
    finally:
        await line.close()
        await client.aclose()
        proxy.close()
