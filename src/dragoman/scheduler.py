"""The scheduler of one instance: its live connections, and the store's actions carried out on them.

Shared state lives in the store; this object holds only what is local: the node sockets and session
actors of this process, and HTTP long-poll waiters. Every store script returns *actions* (send this
attempt, cancel that one, deliver an outcome, drop a node) and ``apply`` carries them out: on a socket of this
instance directly, else through the inbox of the instance that holds the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import msgspec
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from dragoman import __version__, metrics
from dragoman import protocol as p
from dragoman.config import Settings
from dragoman.connection import Connection
from dragoman.session import SessionActor
from dragoman.store import (
    Action,
    Assign,
    Cancel,
    Created,
    DropNode,
    InstanceGone,
    JobSpec,
    Notify,
    Outcome,
    Partial,
    Routed,
    Store,
)

if TYPE_CHECKING:
    from dragoman.nodes import NodeLink

log = logging.getLogger(__name__)

__all__ = ["STORE_DOWN", "Connection", "Scheduler"]

T = TypeVar("T")
STORE_DOWN = (ConnectionError, TimeoutError, BusyLoadingError, OSError)  # the store is unreachable or loading


class Scheduler:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{p.new_uuid()[:8]}"
        self.started_at_ms = int(time.time() * 1000)
        self.sessions: dict[str, SessionActor] = {}
        self.nodes: dict[str, NodeLink] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.store_healthy = True
        self.delivered_dirty: set[str] = set()  # sessions that released outcomes since the last flush
        metrics.SESSIONS.read = lambda: len(self.sessions)
        metrics.NODES.read = lambda: len(self.nodes)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open_inbox(self.instance_id)
        await self._announce()
        self._tasks = [
            asyncio.create_task(self._consume_inbox(), name="inbox"),
            asyncio.create_task(self._every(0.1, self._flush_delivered, proves_store=False), name="delivered"),
            asyncio.create_task(self._every(self.settings.instance_ttl_ms / 3000, self._announce), name="announce"),
            asyncio.create_task(self._every(self.settings.tick_interval_ms / 1000, self._tick), name="tick"),
            asyncio.create_task(
                self._every(self.settings.reconcile_interval_ms / 1000, self.reconcile), name="reconcile"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.nodes.values()):
            link.conn.close(1001)
        for actor in list(self.sessions.values()):
            actor.conn.close(1001)
        with contextlib.suppress(Exception):
            await self.store.leave(self.instance_id)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]], proves_store: bool = True) -> None:
        """Run ``job`` every ``seconds``. A job that may return without calling the store (``proves_store``
        False) does not count as the store being reachable again, so health does not flap during an outage."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except STORE_DOWN as exc:
                self.store_failed(exc)
            except Exception:
                log.exception("periodic %s failed", getattr(job, "__name__", job))
            else:
                if proves_store and not self.store_healthy:
                    log.warning("store reachable again")
                    self.store_healthy = True

    def store_failed(self, exc: BaseException) -> None:
        """Note an unreachable store: /health answers 503 until the next periodic call succeeds."""
        metrics.STORE_ERRORS.inc()
        if self.store_healthy:
            log.warning("store unavailable (%s); retrying", exc)
        self.store_healthy = False

    async def durable(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a store call for work already accepted (a node's result, a closed socket), retrying with
        backoff while the store is unreachable, for up to ``store_retry_ms``; then the error is raised."""
        deadline = asyncio.get_running_loop().time() + self.settings.store_retry_ms / 1000
        delay = 0.05
        while True:
            try:
                return await call()
            except STORE_DOWN as exc:
                self.store_failed(exc)
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _announce(self) -> None:
        description = json.dumps(
            {
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "started_at_ms": self.started_at_ms,
                "sessions": len(self.sessions),
            }
        ).encode()
        await self.store.announce(self.instance_id, description)
        if self.sessions:
            await self.store.keep_sessions([(sid, actor.delivered) for sid, actor in self.sessions.items()])

    async def _flush_delivered(self) -> None:
        """Record, for a resume, up to which index each session has delivered: batched for all sessions
        every 100 ms, off the hot path (a crash may re-send the last 100 ms of outcomes after a resume;
        each carries its utterance_index, and the Dragoman client drops repeats)."""
        if not self.delivered_dirty:
            return
        dirty, self.delivered_dirty = self.delivered_dirty, set()
        live = [(sid, self.sessions[sid].delivered) for sid in dirty if sid in self.sessions]
        try:
            await self.store.keep_sessions(live)
        except BaseException:
            self.delivered_dirty |= dirty
            raise

    async def _tick(self) -> None:
        await self.apply(await self.store.tick())

    async def reconcile(self) -> None:
        for node, counted, actual in await self.store.reconcile():
            log.warning("node %s: in-flight count repaired from its jobs: %d -> %d", node, counted, actual)

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, conn: Connection, init: p.SessionInit) -> SessionActor:
        actor = SessionActor(self, conn, init, p.new_session_id(), p.new_uuid())
        self.sessions[actor.id] = actor
        resumed = False if init.resume_session_id else None  # said only to a client that asked
        conn.send_nowait(p.encode(p.SessionInitAck.new(actor.id, actor.trace_id, resumed=resumed)))
        return actor

    async def resume_session(self, conn: Connection, init: p.SessionInit) -> SessionActor:
        """``session_init`` with ``resume_session_id`` (§18.2): the same session, on this socket, with its
        numbering, settings and missed outcomes; or a new session when it cannot be resumed."""
        session_id = init.resume_session_id or ""
        token = p.new_uuid()
        try:
            previous = await self.store.claim_session(session_id, "*", self.instance_id, token)
            snapshot = await self.store.session_snapshot(session_id) if previous is not None else None
        except STORE_DOWN as exc:
            self.store_failed(exc)
            snapshot = None
        if snapshot is None:
            return self.open_session(conn, init)
        old = self.sessions.get(session_id)
        if old is not None:
            old.supersede()
        first = msgspec.json.decode(snapshot.init, type=p.SessionInit)
        conn.send_nowait(p.encode(p.SessionInitAck.new(session_id, snapshot.trace, resumed=True)))
        actor = SessionActor(self, conn, first, session_id, token, resumed=snapshot)
        self.sessions[session_id] = actor
        log.info("session %s resumed (was held by %s)", session_id, previous or "nobody")
        return actor

    # -- jobs ---------------------------------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> Created:
        created = await self.store.create_job(spec)
        if created.status == "created":
            metrics.JOBS_CREATED.inc()
        await self.apply(created.actions)
        return created

    async def cancel_jobs(self, job_ids: list[str], reason: str) -> None:
        """Best effort: if the store is unreachable, the jobs' own deadlines end them later."""
        try:
            await self.apply(await self.store.cancel_jobs(job_ids, reason))
        except STORE_DOWN as exc:
            self.store_failed(exc)

    def wait_for(self, job_id: str) -> asyncio.Future[None]:
        """A future done when this instance sees the job's outcome (HTTP long-poll)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(future)
        future.add_done_callback(lambda f: self._forget_waiter(job_id, f))
        return future

    def _forget_waiter(self, job_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters and future in waiters:
            waiters.remove(future)
            if not waiters:
                del self._waiters[job_id]

    # -- carrying out the store's actions -----------------------------------------------------------

    async def apply(self, actions: list[Action] | list[Routed], forwarded: bool = False) -> None:
        """Carry out actions on this instance's sockets; what belongs to a socket another instance holds is
        posted to that instance's inbox (once: a ``forwarded`` action is never posted on again)."""
        for action in actions:
            if isinstance(action, Assign):
                await self._assign(action, forwarded)
            elif isinstance(action, Outcome):
                await self._deliver(action, forwarded)
            elif isinstance(action, Cancel):
                frame = p.encode(p.JobCancel(job_id=action.job_id, trace_id=action.trace or None, reason=action.reason))
                if not self._to_node(action.node, frame):
                    await self._post(action.instance, action, forwarded)
            elif isinstance(action, DropNode):
                link = self.nodes.get(action.node)
                if link is not None:
                    log.warning("node %s: no heartbeat within its liveness window; dropping it", action.node)
                    link.conn.close(1001)
                else:
                    await self._post(action.instance, action, forwarded)
            elif isinstance(action, Notify):
                actor = self.sessions.get(action.session)
                if actor is not None:
                    actor.notify(action.job_id, action.event, action.error_code)
            elif isinstance(action, Partial):
                actor = self.sessions.get(action.session)
                if actor is not None:
                    actor.partial(p.decode_partial(action.raw))
            elif isinstance(action, InstanceGone):
                log.warning("instance %s is gone; taking over its inbox", action.instance)
                await self.apply(await self.store.take_inbox(action.instance), forwarded=True)

    async def _post(self, instance: str, message: Routed, forwarded: bool) -> bool:
        """Post to the instance that holds the socket; False if there is none to post to."""
        if forwarded or not instance or instance == self.instance_id:
            return False
        await self.store.post(instance, message)
        return True

    def _to_node(self, node: str, frame: bytes) -> bool:
        link = self.nodes.get(node)
        return link is not None and link.conn.send_nowait(frame)

    async def notify(self, session: str, owner: str, job_id: str, event: str, error_code: str | None = None) -> None:
        """A ui_event for a session, wherever it is held."""
        actor = self.sessions.get(session)
        if actor is not None:
            actor.notify(job_id, event, error_code)
        else:
            await self._post(owner, Notify(session, job_id, event, error_code), forwarded=False)

    async def _assign(self, action: Assign, forwarded: bool) -> None:
        if self._to_node(action.node, p.assign_frame(action.body, action.attempt)):
            metrics.JOBS_DISPATCHED.inc()
            if action.attempt > 1:
                metrics.FAILOVERS.inc()
            await self.notify(action.session, action.owner, action.job_id, "DISPATCHED")
            return
        if await self._post(action.instance, action, forwarded):
            return
        # Nobody can reach the node: it is gone, and its attempts move on at once.
        log.warning("node %s unreachable for job %s; failing over", action.node, action.job_id)
        await self.notify(action.session, action.owner, action.job_id, "ERROR", "NODE_UNAVAILABLE")
        link = self.nodes.get(action.node)
        await self.apply(await self.store.node_gone(action.node, link.conn_token if link else "*"))

    async def _deliver(self, outcome: Outcome, forwarded: bool) -> None:
        for future in list(self._waiters.get(outcome.job_id, ())):
            if not future.done():
                future.set_result(None)
        actor = self.sessions.get(outcome.session)
        if actor is not None:
            actor.resolve(outcome)
        elif not await self._post(outcome.owner, outcome, forwarded):
            metrics.JOBS_RESOLVED.inc(outcome.state)  # nobody to deliver to: it stays in the store

    async def _consume_inbox(self) -> None:
        """Carry out what other instances posted here; acknowledged once carried out."""
        delay = 0.05
        while True:
            try:
                entries = await self.store.read_inbox(self.instance_id, block_ms=1000)
                if entries:
                    await self.apply([message for _, message in entries], forwarded=True)
                    await self.store.ack_inbox(self.instance_id, [entry_id for entry_id, _ in entries])
                delay = 0.05
            except STORE_DOWN as exc:
                self.store_failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
