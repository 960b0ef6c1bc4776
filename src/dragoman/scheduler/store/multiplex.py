"""One store connection that many calls share at once (a standalone Redis/Valkey server).

A server answers the commands of one connection in the order they came, so calls need no connection of
their own: each call's command is written when its event-loop turn ends, in one write with every other
call of that turn, and the replies are matched to the calls by their order. The replies are parsed by
hiredis in the connection's ``data_received``, so a reply costs no task step, no pooled connection and no
timer of its own; one timer watches the oldest unanswered call instead (the pool's ``socket_timeout``).

redis-py makes the connection (TCP, TLS or Unix socket, authentication, database, protocol), then this
protocol takes over its transport. Errors are redis-py's: an error reply is the exception redis-py would
raise for it, a connection that fails is ``ConnectionError``, and a server that stops answering is
``TimeoutError``. The next call after a failure connects again.
"""

from __future__ import annotations

import asyncio
import collections
import copy
from typing import Any

import hiredis
import redis.asyncio as redis
from redis._parsers import BaseParser

DEFAULT_TIMEOUT_S = 5.0  # redis-py's default socket_timeout, when the URL sets none


class Multiplexed(asyncio.Protocol):
    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._writer: asyncio.StreamWriter | None = None  # kept while its transport is open (see _connect)
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader = hiredis.Reader()
        self._queued: list[bytes] = []  # commands of this turn, not yet written
        self._queued_replies: list[asyncio.Future[Any]] = []
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()  # written, in order
        self._timeout = DEFAULT_TIMEOUT_S
        self._watchdog: asyncio.TimerHandle | None = None
        self._progress = 0.0  # loop time of the last reply (or of the first call after none waited)
        self._closed = False

    async def execute(self, *args: Any) -> Any:
        """One command's reply; an error reply is raised as redis-py raises it."""
        reply = await self.send(args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """The future of one command's reply, an error reply being its value (an exception instance)."""
        loop = asyncio.get_running_loop()
        reply: asyncio.Future[Any] = loop.create_future()
        if self._closed:
            reply.set_result(redis.ConnectionError("the store client is closed"))
            return reply
        if not self._queued:
            loop.call_soon(self._flush)
        self._queued.append(pack(args))
        self._queued_replies.append(reply)
        return reply

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._fail(self._drain_queued(), redis.ConnectionError("the store client is closed"))
        if self._transport is not None:
            self._transport.close()

    # -- writing ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        if not self._queued:
            return
        if self._transport is None:
            if self._connecting is None:
                self._connecting = asyncio.get_running_loop().create_task(self._connect(), name="store connect")
            return  # written once connected
        commands, replies = self._queued, self._queued_replies
        self._queued, self._queued_replies = [], []
        if not self._waiting:
            self._progress = asyncio.get_running_loop().time()
        self._waiting.extend(replies)
        self._transport.write(b"".join(commands))
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(self._timeout, self._check)

    async def _connect(self) -> None:
        connection = self._pool.connection_class(**self._pool.connection_kwargs)
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
        except Exception as exc:  # redis-py's ConnectionError / TimeoutError / AuthenticationError
            self._fail(self._drain_queued(), exc)
            return
        finally:
            self._connecting = None
        if self._closed:
            await connection.disconnect()
            return
        self._timeout = connection.socket_timeout or DEFAULT_TIMEOUT_S
        self._reader = hiredis.Reader(replyError=BaseParser.parse_error)
        # The stream writer closes its transport when collected, so it is kept until the transport closes;
        # redis-py's connection lets go of it (it would warn of an unclosed connection when collected).
        writer: asyncio.StreamWriter = connection._writer  # type: ignore[assignment]  # set by connect()
        self._writer, connection._writer, connection._reader = writer, None, None
        transport: asyncio.Transport = writer.transport  # type: ignore[assignment]
        transport.set_protocol(self)
        self._transport = transport
        self._flush()

    def _drain_queued(self) -> list[asyncio.Future[Any]]:
        replies = self._queued_replies
        self._queued, self._queued_replies = [], []
        return replies

    # -- reading ----------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiting = self._waiting
        try:
            while waiting:
                reply = self._reader.gets()
                if reply is False:  # the rest of the reply is still on its way
                    break
                answered = waiting.popleft()
                if not answered.done():  # (a caller that was cancelled)
                    answered.set_result(reply)
        except hiredis.ProtocolError as exc:
            self._lose(redis.ConnectionError(f"the store sent a malformed reply: {exc}"))
            return
        self._progress = asyncio.get_running_loop().time()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._writer = None
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        why = f"the store closed the connection: {exc}" if exc else "the store closed the connection"
        self._fail(list(self._waiting), redis.ConnectionError(why))
        self._waiting.clear()
        if self._queued:  # calls of this turn: they go on a new connection
            asyncio.get_running_loop().call_soon(self._flush)

    def _check(self) -> None:
        """The oldest unanswered call has waited ``socket_timeout`` with no reply at all: the server hangs
        (or the network does). Every waiting call fails, and the connection is dropped."""
        self._watchdog = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._progress
        if idle < self._timeout:
            self._watchdog = loop.call_later(self._timeout - idle, self._check)
            return
        self._lose(redis.TimeoutError(f"the store sent no reply within {self._timeout:g} s"))

    def _lose(self, exc: Exception) -> None:
        """Fail the waiting calls with ``exc`` and drop the connection."""
        self._fail(list(self._waiting), exc)
        self._waiting.clear()
        if self._transport is not None:
            self._transport.abort()  # connection_lost follows, with nothing left waiting

    @staticmethod
    def _fail(replies: list[asyncio.Future[Any]], exc: BaseException) -> None:
        """Each reply gets an exception of its own: one instance raised by many callers would gather all
        their tracebacks."""
        for reply in replies:
            if not reply.done():
                reply.set_result(copy.copy(exc))


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in the wire format, packed by hiredis (C), byte for byte as redis-py packs it; a command of
    two words ("CONFIG GET") goes as two arguments, as redis-py sends it."""
    first = args[0]
    if isinstance(first, str) and " " in first:
        args = (*first.split(), *args[1:])
    packed: bytes = hiredis.pack_command(args)
    return packed
