"""The scheduler of one instance: its live connections, and the store's actions carried out on them.

Shared state lives in the store; this object holds only what is local: the node sockets and session
actors of this process, and HTTP long-poll waiters. Every store script returns *actions* (send this
attempt, cancel that one, deliver an outcome, drop a node) and ``apply`` carries them out.
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

from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from dragoman import __version__, metrics
from dragoman import protocol as p
from dragoman.config import Settings
from dragoman.connection import Connection
from dragoman.store import Action, Assign, Cancel, Created, DropNode, JobSpec, Outcome, Store

if TYPE_CHECKING:
    from dragoman.nodes import NodeLink
    from dragoman.session import SessionActor

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
        metrics.SESSIONS.read = lambda: len(self.sessions)
        metrics.NODES.read = lambda: len(self.nodes)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._announce()
        self._tasks = [
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

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except STORE_DOWN as exc:
                self.store_failed(exc)
            except Exception:
                log.exception("periodic %s failed", getattr(job, "__name__", job))
            else:
                if not self.store_healthy:
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

    async def _tick(self) -> None:
        await self.apply(await self.store.tick())

    async def reconcile(self) -> None:
        for node, counted, actual in await self.store.reconcile():
            log.warning("node %s: in-flight count repaired from its jobs: %d -> %d", node, counted, actual)

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

    async def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Assign):
                await self._assign(action)
            elif isinstance(action, Cancel):
                link = self.nodes.get(action.node)
                if link is not None:
                    link.conn.send_nowait(
                        p.encode(p.JobCancel(job_id=action.job_id, trace_id=action.trace or None, reason=action.reason))
                    )
            elif isinstance(action, Outcome):
                self._deliver(action)
            elif isinstance(action, DropNode):
                link = self.nodes.get(action.node)
                if link is not None:
                    log.warning(
                        "node %s: no heartbeat within %d ms, dropping it",
                        action.node,
                        self.settings.node_liveness_ms,
                    )
                    link.conn.close(1001)

    async def _assign(self, action: Assign) -> None:
        link = self.nodes.get(action.node)
        if link is not None and link.conn.send_nowait(p.assign_frame(action.body, action.attempt)):
            metrics.JOBS_DISPATCHED.inc()
            if action.attempt > 1:
                metrics.FAILOVERS.inc()
            actor = self.sessions.get(action.session)
            if actor is not None:
                actor.notify(action.job_id, "DISPATCHED")
            return
        # The node is not reachable from here: it is gone, and its attempts move on at once.
        log.warning("node %s unreachable for job %s; failing over", action.node, action.job_id)
        actor = self.sessions.get(action.session)
        if actor is not None:
            actor.notify(action.job_id, "ERROR", error_code="NODE_UNAVAILABLE")
        conn = link.conn_token if link is not None else "*"
        await self.apply(await self.store.node_gone(action.node, conn))

    def _deliver(self, outcome: Outcome) -> None:
        actor = self.sessions.get(outcome.session)
        if actor is not None:
            actor.resolve(outcome)
        else:
            metrics.JOBS_RESOLVED.inc(outcome.state)
        for future in list(self._waiters.get(outcome.job_id, ())):
            if not future.done():
                future.set_result(None)
