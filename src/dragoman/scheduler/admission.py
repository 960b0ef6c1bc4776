"""Opening a socket: the per-address connection limit, authentication, and the audit line of a refusal.

A refused socket is accepted and then closed with a code and a reason (1008 for authentication, 1013 for a
limit), so that the peer learns why; it never reaches the node or session code, so no job reaches it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from dragoman.scheduler import metrics
from dragoman.scheduler.auth import Auth, Verdict
from dragoman.scheduler.limits import PeerConnections, RateLimitedLog

audit_log = logging.getLogger("dragoman.audit")
SocketPath = Literal["node", "session"]
POLICY = 1008  # the close code of an authentication refusal
TRY_LATER = 1013  # the close code of a limit


@dataclass(frozen=True)
class Admitted:
    name: str  # the token / key name ('' without authentication)
    peer: str  # the peer's address
    by_key: bool = False  # a client socket admitted by its client key (not by its Origin)


class Admission:
    def __init__(self, auth: Auth, max_connections_per_peer: int) -> None:
        self.auth = auth
        self.peers = PeerConnections(max_connections_per_peer)
        self.audit = RateLimitedLog(audit_log)

    async def admit(self, websocket: WebSocket, path: SocketPath) -> Admitted | None:
        """Accept the socket; None when it is refused (then it is closed). An admitted socket must be
        ``leave``-d when it ends."""
        peer = websocket.client.host if websocket.client else "unknown"
        await websocket.accept()
        if not self.peers.enter(peer):
            metrics.LIMITED.inc("connections_per_peer")
            reason = f"over {self.peers.limit} open connections from your address"
            self.refused(path, peer, reason)
            await websocket.close(TRY_LATER, reason)
            return None
        query, headers = websocket.query_params, websocket.headers
        verdict = self.auth.node(headers, query) if path == "node" else self.auth.session(headers, query)
        if verdict.refused:
            self.peers.leave(peer)
            metrics.REFUSED.inc(path, verdict.refused)
            self.refused(path, peer, verdict.refused)
            await websocket.close(POLICY, verdict.refused)
            return None
        return Admitted(verdict.name, peer, verdict.by_key)

    def leave(self, admitted: Admitted) -> None:
        self.peers.leave(admitted.peer)

    def refused(self, path: SocketPath | Literal["http"], peer: str, why: str) -> None:
        """The audit line of a refusal, at most one a second per path and reason (a flood stays a line)."""
        what = "HTTP call" if path == "http" else f"{path} socket"
        self.audit.log(logging.WARNING, f"{path}: {why}", "%s from %s refused: %s", what, peer, why)


Endpoint = Callable[[Request], Awaitable[Response]]


def guarded(admission: Admission, check: Callable[[Auth, Request], Verdict], endpoint: Endpoint) -> Endpoint:
    """``endpoint`` behind ``check``: a refused call gets 401 with the reason; an admitted one finds the key's
    name in ``request.state.client_scope`` (what it creates belongs to that name)."""

    async def checked(request: Request) -> Response:
        verdict = check(admission.auth, request)
        if verdict.refused:
            peer = request.client.host if request.client else "unknown"
            metrics.REFUSED.inc("http", verdict.refused)
            admission.refused("http", peer, verdict.refused)
            return JSONResponse(
                {"error": "unauthorized", "message": verdict.refused},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="dragoman"'},
            )
        request.state.client_scope = verdict.name
        return await endpoint(request)

    return checked


def operator_check(auth: Auth, request: Request) -> Verdict:
    return auth.operator(request.headers, request.query_params.get("key"))


def client_check(auth: Auth, request: Request) -> Verdict:
    return auth.api(request.headers)
