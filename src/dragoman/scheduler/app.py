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

from dragoman import protocol as p
from dragoman.scheduler import http_api, metrics, ops, views
from dragoman.scheduler.admission import Admission, client_check, guarded, operator_check
from dragoman.scheduler.auth import Auth
from dragoman.scheduler.connection import FRAMES_EXTENSION, Connection, FrameReader
from dragoman.scheduler.fleet import Fleet
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.limits import ClientRates, RateLimitedLog
from dragoman.scheduler.nodes import NodeLink
from dragoman.scheduler.session import SessionActor

log = logging.getLogger(__name__)
_limit_log = RateLimitedLog(log)


def _mono_ms() -> float:
    return time.monotonic() * 1000


def _too_large(text: str, limit: int) -> bool:
    """The frame's UTF-8 size is over the limit (a character is at most 4 bytes: most frames skip encoding)."""
    return len(text) * 4 > limit and len(text.encode()) > limit


def _error(code: str, message: str) -> bytes:
    return p.encode(p.Error(code=code, message=message))


async def _text_frames(websocket: WebSocket, limit: int, socket: str) -> AsyncIterator[str | None]:
    """The socket's text frames until it closes; None for a frame over the size limit (counted as bad).
    Binary frames are ignored (F3). Under ``dragoman serve`` the frames come from the server's protocol
    directly (``FrameReader``), else as ASGI messages."""
    reader: FrameReader | None = websocket.scope.get("extensions", {}).get(FRAMES_EXTENSION)
    frames = reader.text_frames() if reader is not None else _asgi_text_frames(websocket)
    async for text in frames:
        if _too_large(text, limit):
            metrics.BAD_FRAMES.inc(socket)
            yield None
        else:
            yield text


async def _asgi_text_frames(websocket: WebSocket) -> AsyncIterator[str]:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text is not None:
            yield text


PUBLIC_PATHS = ("/", "/static/{name}")  # the landing page and the dashboard's files: no data in them


def create_app(scheduler: Scheduler, auth: Auth | None = None) -> Starlette:
    """The app; ``auth`` (default: from the settings) is what ``dragoman serve`` reloads on SIGHUP."""
    limit = scheduler.settings.max_message_bytes
    settings = scheduler.settings
    admission = Admission(auth or Auth(settings), settings.max_connections_per_peer)
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
        admitted = await admission.admit(websocket, "session")
        if admitted is None:
            return
        conn = connection(websocket, "client")
        if admitted.by_key:
            scheduler.rooms.admitted_by_key(conn, admitted.name)
        owned = _SocketSessions()
        rates = ClientRates(settings.max_messages_per_s, settings.max_audio_speed, limit)
        # In use once it opens a session (messages for other sockets' sessions are refused: see _own).
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
                if over := rates.frame():
                    _limited(conn, "messages_per_s", over)
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
                if over := rates.audio_bytes(_audio_chars(msg)):
                    _limited(conn, "audio_speed", over)
                    continue
                if isinstance(msg, p.SessionInit) and len(scheduler.sessions) >= settings.max_sessions:
                    metrics.LIMITED.inc("sessions")
                    _limit_log.log(logging.WARNING, "sessions", "session refused: %d held", settings.max_sessions)
                    conn.close(1013, f"this instance holds its maximum of {settings.max_sessions} sessions")
                    continue  # until the peer answers the close
                _route_client(scheduler, conn, owned, msg, received)
                in_use = in_use or isinstance(msg, p.SessionInit)
        finally:
            admission.leave(admitted)
            if handshake is not None:
                handshake.cancel()
            for actor in owned:
                actor.socket_closed()
            conn.close()

    async def node_socket(websocket: WebSocket) -> None:
        admitted = await admission.admit(websocket, "node")
        if admitted is None:
            return
        conn = connection(websocket, "node")
        link = NodeLink(scheduler, conn, owner=admitted.name, peer=admitted.peer)
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
            admission.leave(admitted)
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

    def operator(route: Route) -> Route:
        return Route(route.path, guarded(admission, operator_check, route.endpoint), methods=route.methods)

    def for_clients(route: Route) -> Route:
        if not route.path.startswith("/api/"):  # the API's description is public
            return route
        return Route(route.path, guarded(admission, client_check, route.endpoint), methods=route.methods)

    routes = [
        WebSocketRoute("/ws/session", session_socket),
        WebSocketRoute("/ws/node", node_socket),
        Route("/health", health),
        # The operator's views (metrics, dashboard and its live feed, traces) need the admin key once auth is on.
        *(route if route.path in PUBLIC_PATHS else operator(route) for route in ops.routes(scheduler, fleet)),
        *(for_clients(route) for route in http_api.routes(scheduler)),
        *(operator(route) for route in views.routes(scheduler, fleet)),
    ]
    return Starlette(routes=routes)


def _audio_chars(msg: p.Inbound) -> int:
    """The base64 audio a client message carries (what the audio rate limit counts)."""
    if isinstance(msg, p.AudioChunk):
        return len(msg.payload or "")
    if isinstance(msg, p.Utterance):
        return len(msg.audio)
    return 0


def _limited(conn: Connection, limit: str, why: str) -> None:
    """A frame over a rate limit: dropped, with an error the client can show; the socket stays open."""
    metrics.LIMITED.inc(limit)
    _limit_log.log(logging.WARNING, limit, "client socket over a limit: %s", why)
    conn.send_nowait(_error("RATE_LIMITED", f"Failed to process message: {why}"))


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


def _own(scheduler: Scheduler, owned: _SocketSessions, session_id: str) -> SessionActor | None:
    """The socket's own live session if ``session_id`` names it. Another socket's session is answered exactly
    as a session that does not exist: a message acts only on its own socket's session, and no answer tells
    whether another session exists."""
    live = owned.live(scheduler)
    return live if live is not None and live.id == session_id else None


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
        if _own(scheduler, owned, msg.session_id) is not None:
            now = int(time.time() * 1000)
            conn.send_nowait(p.encode(p.ServerHeartbeat(session_id=msg.session_id, timestamp=now)))
        else:
            conn.send_nowait(_error("INVALID_SESSION", "Session does not exist"))
    else:
        session_id: str = getattr(msg, "session_id")  # noqa: B009 - every remaining type names its session
        target = _own(scheduler, owned, session_id)
        if target is None:
            conn.send_nowait(
                _error("INTERNAL_ERROR", f"Failed to process message: Session does not exist: {p.excerpt(session_id)}")
            )
        else:
            target.submit(msg, received)
