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
from typing import TYPE_CHECKING, TypeVar, assert_never

import msgspec
from redis.exceptions import ResponseError

from dragoman import __version__
from dragoman import protocol as p
from dragoman.config import Settings
from dragoman.scheduler import metrics
from dragoman.scheduler.auth import new_resume_token, resume_digest
from dragoman.scheduler.connection import Connection
from dragoman.scheduler.rooms import Rooms
from dragoman.scheduler.session import SessionActor
from dragoman.scheduler.store import (
    Action,
    Assign,
    Cancel,
    Created,
    DropNode,
    JobSpec,
    Notify,
    Outcome,
    Partial,
    RoomFrame,
    Routed,
    Store,
)
from dragoman.scheduler.store_errors import store_unavailable
from dragoman.scheduler.traces import TraceRecorder

if TYPE_CHECKING:
    from dragoman.scheduler.nodes import NodeLink

log = logging.getLogger(__name__)

__all__ = ["Connection", "Scheduler"]

T = TypeVar("T")


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
        self._stopping = False
        self.store_healthy = True
        self.delivered_dirty: set[str] = set()  # sessions that released outcomes since the last flush
        self.traces = TraceRecorder(store)
        self.rooms = Rooms(self)
        metrics.SESSIONS.read = lambda: len(self.sessions)
        metrics.NODES.read = lambda: len(self.nodes)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open_inbox(self.instance_id)
        await self._announce(first=True)
        self._tasks = [
            asyncio.create_task(self._consume_inbox(), name="inbox"),
            asyncio.create_task(self._every(0.1, self._flush_delivered, proves_store=False), name="delivered"),
            asyncio.create_task(self._every(self.settings.instance_ttl_ms / 3000, self._announce), name="announce"),
            asyncio.create_task(self._every(self.settings.tick_interval_ms / 1000, self._tick), name="tick"),
            asyncio.create_task(
                self._every(self.settings.reconcile_interval_ms / 1000, self.reconcile), name="reconcile"
            ),
            asyncio.create_task(
                self._every(self.settings.room_check_interval_ms / 1000, self.rooms.sweep), name="rooms"
            ),
        ]

    async def stop(self) -> None:
        self._stopping = True  # a store client may turn a cancellation into an error: the loops check this
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in list(self.nodes.values()):
            link.conn.close(1001)
        for actor in list(self.sessions.values()):
            actor.conn.close(1001)
        await self.traces.stop()
        with contextlib.suppress(Exception):
            await self.store.leave(self.instance_id)

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]], proves_store: bool = True) -> None:
        """Run ``job`` every ``seconds``. A job that may return without calling the store (``proves_store``
        False) does not count as the store being reachable again, so health does not flap during an outage."""
        while not self._stopping:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as exc:
                if store_unavailable(exc):
                    self.store_failed(exc)
                else:
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
            except Exception as exc:
                if not store_unavailable(exc):
                    raise
                self.store_failed(exc)
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _announce(self, first: bool = False) -> None:
        description = json.dumps(
            {
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "version": __version__,
                "started_at_ms": self.started_at_ms,
                "sessions": len(self.sessions),
            }
        ).encode()
        if not await self.store.announce(self.instance_id, description, first):
            await self._rejoin()
        if self.sessions:
            await self.store.keep_sessions([(sid, actor.delivered) for sid, actor in self.sessions.items()])

    async def _rejoin(self) -> None:
        """Another instance took this one over (it was paused or cut off for longer than instance_ttl_ms):
        the taker ended its nodes and deleted its inbox. Rejoin cleanly: the inbox again, and every node
        socket closed so that its node registers afresh (its attempts have failed over). Sessions go on:
        their records still name this instance, so their outcomes come back through the new inbox."""
        log.warning(
            "instance %s was taken over by another instance (paused or cut off from the store for longer than "
            "%d ms); rejoining: inbox recreated, %d node socket(s) closed for their nodes to register again",
            self.instance_id,
            self.settings.instance_ttl_ms,
            len(self.nodes),
        )
        await self.store.open_inbox(self.instance_id)
        for link in list(self.nodes.values()):
            link.conn.close(1012)
        self.rooms.rejoin_all()  # the taker took this instance's members out of their rooms

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
        for taken in await self.store.take_instances():
            await self._take_over(taken.instance, taken.nodes)

    async def _take_over(self, instance: str, nodes: list[str]) -> None:
        """A dead instance, now this one's alone: end the nodes it held and carry out its inbox."""
        log.warning("instance %s is gone; taking over its %d node(s) and its inbox", instance, len(nodes))
        for node in nodes:
            await self.apply(await self.store.node_gone(node, "*", instance))
        for envelope in await self.store.take_inbox(instance):
            await self.apply([envelope.message], forwarded=True, hops=envelope.hops)
        await self.rooms.instance_gone(instance)

    async def reconcile(self) -> None:
        for repair in await self.store.reconcile():
            log.warning(
                "node %s: in-flight count repaired from its jobs: %d -> %d", repair.node, repair.counted, repair.actual
            )

    # -- sessions -----------------------------------------------------------------------------------

    def open_session(self, conn: Connection, init: p.SessionInit) -> SessionActor:
        resume_token = new_resume_token()
        actor = SessionActor(
            self, conn, init, p.new_session_id(), p.new_uuid(), resume_digest=resume_digest(resume_token)
        )
        self.sessions[actor.id] = actor
        resumed = False if init.resume_session_id else None  # said only to a client that asked
        ack = p.SessionInitAck.new(actor.id, actor.trace_id, resumed=resumed, resume_token=resume_token)
        conn.send_nowait(p.encode(ack))
        return actor

    async def resume_session(self, conn: Connection, init: p.SessionInit) -> SessionActor:
        """``session_init`` with ``resume_session_id`` (§18.2): the same session, on this socket, with its
        numbering, settings and missed outcomes; or a new session when it cannot be resumed. A resume must
        present the session's ``resume_token``: without it, the old session is left as it is and nothing
        about it is told (a new session starts, as for an unknown id)."""
        session_id = init.resume_session_id or ""
        token = p.new_uuid()
        if not init.resume_token:
            return self.open_session(conn, init)
        try:
            claim = await self.store.claim_session(
                session_id, "*", self.instance_id, token, resume=resume_digest(init.resume_token)
            )
            previous = claim.previous_owner
            snapshot = await self.store.session_snapshot(session_id) if claim.claimed else None
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self.store_failed(exc)
            snapshot = None
        if snapshot is None:
            return self.open_session(conn, init)
        if init.resume_delivered_index is not None and init.resume_delivered_index > snapshot.delivered:
            # The client has more than the store knows was delivered (the delivery marks are written every
            # 100 ms, so a crash loses the last ones): deliver only what follows what it has.
            delivered = init.resume_delivered_index
            jobs = [job for job in snapshot.jobs if job[0] > delivered]
            snapshot = msgspec.structs.replace(snapshot, delivered=delivered, jobs=jobs)
        old = self.sessions.get(session_id)
        if old is not None:
            old.supersede()
        first = msgspec.json.decode(snapshot.init, type=p.SessionInit)
        ack = p.SessionInitAck.new(session_id, snapshot.trace, resumed=True, resume_token=init.resume_token)
        conn.send_nowait(p.encode(ack))
        actor = SessionActor(self, conn, first, session_id, token, resumed=snapshot)
        self.sessions[session_id] = actor
        log.info("session %s resumed (was held by %s)", session_id, previous or "nobody")
        return actor

    # -- jobs ---------------------------------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> Created:
        created = await self.store.create_job(spec)
        if created.status == "created":
            metrics.JOBS_CREATED.inc()
        frame = spec.body.decode()  # the store does not send back the job_assign it was just given
        await self.apply(
            [
                a if not isinstance(a, Assign) or a.frame else msgspec.structs.replace(a, frame=frame)
                for a in created.actions
            ]
        )
        return created

    async def cancel_jobs(self, jobs: list[tuple[str, int]], reason: str) -> None:
        """Best effort: if the store is unreachable, the jobs' own deadlines end them later."""
        try:
            await self.apply(await self.store.cancel_jobs(jobs, reason))
        except Exception as exc:
            if not store_unavailable(exc):
                raise
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

    async def apply(self, actions: list[Action] | list[Routed], forwarded: bool = False, hops: int = 0) -> None:
        """Carry out actions on this instance's sockets; what belongs to a socket another instance holds is
        posted to that instance's inbox (once: a ``forwarded`` action is never posted on again, except an
        outcome following its session to a new owner)."""
        for action in actions:
            match action:
                case Assign():
                    await self._assign(action, forwarded)
                case Outcome():
                    await self._deliver(action, forwarded, hops)
                case Cancel():
                    frame = p.encode(
                        p.JobCancel(job_id=action.job_id, trace_id=action.trace or None, reason=action.reason)
                    )
                    if not self._to_node(action.node, frame):
                        await self._post(action.instance, action, forwarded)
                case DropNode():
                    link = self.nodes.get(action.node)
                    if link is not None:
                        log.warning("node %s: no heartbeat within its liveness window; dropping it", action.node)
                        link.conn.close(1001)
                    else:
                        await self._post(action.instance, action, forwarded)
                case Notify():
                    actor = self.sessions.get(action.session)
                    if actor is not None:
                        actor.notify(action.job_id, action.event, action.error_code)
                case Partial():
                    actor = self.sessions.get(action.session)
                    if actor is not None:
                        actor.partial(p.decode_partial(action.raw))
                case RoomFrame():
                    self.rooms.received(action)
                case _:
                    assert_never(action)

    async def _post(self, instance: str, message: Routed, forwarded: bool, hops: int = 0) -> bool:
        """Post to the instance that holds the socket; False if there is none to post to."""
        if forwarded or not instance or instance == self.instance_id:
            return False
        await self.store.post(instance, message, hops)
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
        assert action.frame is not None, "every assign carries its job_assign by now"
        if self._to_node(action.node, p.assign_frame(action.frame.encode(), action.attempt)):
            metrics.JOBS_DISPATCHED.inc()
            if action.attempt > 1:
                metrics.failed_over(action.job_id, action.node, action.attempt)
            await self.notify(action.session, action.owner, action.job_id, "DISPATCHED")
            return
        if await self._post(action.instance, action, forwarded):
            return
        # Nobody can reach the node: it is gone, and its attempts move on at once.
        log.warning("node %s unreachable for job %s; failing over", action.node, action.job_id)
        await self.notify(action.session, action.owner, action.job_id, "ERROR", "NODE_UNAVAILABLE")
        # Only the socket that held the node when the store chose it: a registration made since (the node
        # reconnected, here or elsewhere) is not ended by this stale attempt.
        link = self.nodes.get(action.node)
        await self.apply(await self.store.node_gone(action.node, link.conn_token if link else action.conn or "*"))

    async def _deliver(self, outcome: Outcome, forwarded: bool, hops: int) -> None:
        for future in list(self._waiters.get(outcome.job_id, ())):
            if not future.done():
                future.set_result(None)
        actor = self.sessions.get(outcome.session)
        if actor is not None:
            actor.resolve(outcome)
            return
        if await self._post(outcome.owner, outcome, forwarded):
            return
        if outcome.owner and hops == 0:
            # The job's creator no longer holds the session (resumed elsewhere, or a taken-over instance):
            # follow the session record to its owner, once.
            owner = await self.store.session_owner(outcome.session)
            if owner and owner != self.instance_id:
                await self.store.post(owner, outcome, hops + 1)
                return
        # nobody to deliver to: it stays in the store (an HTTP API job, or a session gone)
        metrics.job_resolved(outcome.job_id, outcome.state, outcome.created_ms, outcome.dispatched_ms)

    async def _consume_inbox(self) -> None:
        """Carry out what other instances posted here; acknowledged once carried out (an entry that cannot
        be decoded is logged and acknowledged too). Nothing ends this loop but the instance stopping."""
        delay = 0.05
        while not self._stopping:
            try:
                entries = await self.store.read_inbox(self.instance_id, block_ms=1000)
                # Carried out together: what one entry waits for (a ui_event posted back to the session's
                # instance, a lookup) shares the store's round trips with the others' instead of waiting for
                # them, and what each sends on a socket it sends before its first wait, in the entries' order.
                # An entry that fails is logged and does not keep the rest of its batch from being carried out.
                done = await asyncio.gather(
                    *(self.apply([e.message], forwarded=True, hops=e.hops) for _, e in entries if e is not None),
                    return_exceptions=True,
                )
                for failed in (d for d in done if isinstance(d, Exception)):
                    if store_unavailable(failed):
                        self.store_failed(failed)
                    else:
                        log.error("instance %s: inbox entry failed: %r", self.instance_id, failed, exc_info=failed)
                if entries:
                    await self.store.ack_inbox(self.instance_id, [entry_id for entry_id, _ in entries])
                delay = 0.05
                continue
            except Exception as exc:
                if store_unavailable(exc):
                    self.store_failed(exc)
                elif isinstance(exc, ResponseError) and "NOGROUP" in str(exc):  # deleted: this one was taken over
                    log.warning("instance %s: inbox gone (%s); recreating it", self.instance_id, exc)
                    with contextlib.suppress(Exception):
                        await self.store.open_inbox(self.instance_id)
                else:
                    log.exception("instance %s: inbox entry failed; going on", self.instance_id)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
