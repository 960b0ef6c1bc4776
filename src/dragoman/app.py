"""The ASGI app of one instance: the two WebSockets, health, metrics and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from dragoman import http_api, metrics, ops, views
from dragoman import protocol as p
from dragoman.connection import Connection
from dragoman.fleet import Fleet
from dragoman.nodes import NodeLink
from dragoman.scheduler import Scheduler
from dragoman.session import SessionActor

log = logging.getLogger(__name__)


def _mono_ms() -> float:
    return time.monotonic() * 1000


def _too_large(text: str, limit: int) -> bool:
    """The frame's UTF-8 size is over the limit (a character is at most 4 bytes: most frames skip encoding)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def _error(code: str, message: str) -> bytes:
    return p.encode(p.Error(code=code, message=message))


async def _text_frames(websocket: WebSocket, limit: int, socket: str) -> AsyncIterator[str | None]:
    """The socket's text frames until it closes; None for a frame over the size limit (counted as bad).
    Binary frames are ignored (F3)."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is None:
            continue
        if _too_large(text, limit):
            metrics.BAD_FRAMES.inc(socket)
            yield None
        else:
            yield text


def create_app(scheduler: Scheduler) -> Starlette:
    limit = scheduler.settings.max_message_bytes
    settings = scheduler.settings
    fleet = Fleet(scheduler)

    def connection(websocket: WebSocket, name: str) -> Connection:
        return Connection(websocket, name, max_unsent_bytes=settings.max_unsent_bytes)

    def close_unless(conn: Connection, first: str, done: Callable[[], bool]) -> asyncio.TimerHandle | None:
        """Close the socket if it has not sent its first message (``done``) within ``handshake_timeout_ms``."""
        timeout = settings.handshake_timeout_ms

        def check() -> None:
            if not done():
                log.info("%s socket sent no %s within %d ms; closed", conn.name, first, timeout)
                conn.close(1008, f"no {first} within {timeout} ms")

        return asyncio.get_running_loop().call_later(timeout / 1000, check) if timeout else None

    async def session_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        conn = connection(websocket, "client")
        owned = _SocketSessions()
        # In use once it opens a session, or sends to a live one (lingua's API gateway sends its utterances on
        # a socket of their own).
        in_use = False
        handshake = close_unless(conn, "session_init", lambda: in_use)
        try:
            async for text in _text_frames(websocket, limit, "session"):
                received = _mono_ms()
                if text is None:
                    conn.send_nowait(
                        _error("INVALID_MESSAGE", f"Invalid message format: message larger than {limit} bytes")
                    )
                    continue
                try:
                    msg = p.decode_client(text)
                except p.ProtocolError as exc:
                    metrics.BAD_FRAMES.inc("session")
                    if exc.wrong_direction:
                        log.warning("client sent a message of the wrong direction: %s", p.excerpt(text))
                    else:
                        conn.send_nowait(_error("INVALID_MESSAGE", f"Invalid message format: {exc.detail}"))
                    continue
                _route_client(scheduler, conn, owned, msg, received)
                named = getattr(msg, "session_id", None)
                in_use = in_use or isinstance(msg, p.SessionInit) or named in scheduler.sessions
        finally:
            if handshake is not None:
                handshake.cancel()
            for actor in owned:
                actor.socket_closed()
            conn.close()

    async def node_socket(websocket: WebSocket) -> None:
        await websocket.accept()
        conn = connection(websocket, "node")
        link = NodeLink(scheduler, conn)
        handshake = close_unless(conn, "node_register", lambda: link.node_id is not None)
        try:
            async for text in _text_frames(websocket, limit, "node"):
                if text is None:
                    log.warning("node %s: frame over %d bytes ignored", link.node_id, limit)
                    continue
                try:
                    await link.handle(text)
                except Exception:  # a store outage or a bug: log it, keep the socket (§2.3)
                    metrics.STORE_ERRORS.inc()
                    log.exception("node %s: failed to handle a frame", link.node_id)
        finally:
            if handshake is not None:
                handshake.cancel()
            conn.close()
            try:
                await link.closed()
            except Exception:  # the store is down: the node's liveness runs out instead
                log.exception("node %s: failed to record the closed socket", link.node_id)

    async def health(request: Request) -> Response:
        if scheduler.store_healthy:
            return PlainTextResponse("OK")
        return PlainTextResponse("store unavailable", status_code=503)

    routes = [
        WebSocketRoute("/ws/session", session_socket),
        WebSocketRoute("/ws/node", node_socket),
        Route("/health", health),
        *ops.routes(scheduler, fleet),
        *http_api.routes(scheduler),
        *views.routes(scheduler, fleet),
    ]
    return Starlette(routes=routes)


class _SocketSessions(list[SessionActor]):
    """The sessions a client socket opened, and whether a resume is under way on it."""

    resuming = 0

    def live(self, scheduler: Scheduler) -> SessionActor | None:
        """The socket's session while it lasts (until session_close_ack, or a resume elsewhere)."""
        return next((a for a in self if scheduler.sessions.get(a.id) is a), None)


async def _resume(scheduler: Scheduler, conn: Connection, owned: _SocketSessions, msg: p.SessionInit) -> None:
    """Resume a session (a store round trip, so off the reader's path); the client waits for its ack."""
    owned.resuming += 1
    try:
        actor = await scheduler.resume_session(conn, msg)
    finally:
        owned.resuming -= 1
    owned.append(actor)
    if conn.closed:  # the socket closed while the store answered
        actor.socket_closed()


def _second_session(scheduler: Scheduler, owned: _SocketSessions) -> str | None:
    """Why a session_init is refused: one session per socket (lingua's clients open a socket per session),
    so a socket cannot pile up sessions. After session_close_ack the socket may open the next one."""
    live = owned.live(scheduler)
    if live is None and not owned.resuming:
        owned[:] = []  # closed sessions: nothing left to tell them
        return None
    which = f"session {live.id}" if live is not None else "a session being resumed"
    return f"Failed to process message: this socket already has {which}; one session per socket (close it first)"


def _route_client(
    scheduler: Scheduler, conn: Connection, owned: _SocketSessions, msg: p.Inbound, received: float
) -> None:
    """Hand one client message to its session's actor, or answer it here (§5)."""
    if isinstance(msg, p.SessionInit) and (refused := _second_session(scheduler, owned)):
        conn.send_nowait(_error("INTERNAL_ERROR", refused))
    elif isinstance(msg, p.SessionInit) and msg.resume_session_id:
        asyncio.create_task(_resume(scheduler, conn, owned, msg))  # noqa: RUF006 - it finishes by itself
    elif isinstance(msg, p.SessionInit):
        owned.append(scheduler.open_session(conn, msg))
    elif isinstance(msg, p.RoomMessage):
        current = owned.live(scheduler)  # room messages act on the socket's current session (§5.7)
        if current is None:
            conn.send_nowait(_error("INTERNAL_ERROR", "Failed to process message: Session not initialized"))
        else:
            current.submit(msg, received)
    elif isinstance(msg, p.ClientHeartbeat):
        if msg.session_id in scheduler.sessions:
            now = int(time.time() * 1000)
            conn.send_nowait(p.encode(p.ServerHeartbeat(session_id=msg.session_id, timestamp=now)))
        else:
            conn.send_nowait(_error("INVALID_SESSION", "Session does not exist"))
    else:
        session_id: str = getattr(msg, "session_id")  # noqa: B009 - every remaining type names its session
        target = scheduler.sessions.get(session_id)
        if target is None:
            conn.send_nowait(
                _error("INTERNAL_ERROR", f"Failed to process message: Session does not exist: {p.excerpt(session_id)}")
            )
        else:
            target.submit(msg, received)
