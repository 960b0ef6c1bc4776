"""A compute node's socket (``/ws/node``): registration, heartbeats, results (PROTOCOL.md §7-§9).

Malformed or unexpected node frames are logged, never answered (§2.3). Results are matched by
``job_id``, ``node_id`` and ``attempt_id`` in the store, never by socket (§9.1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from dragoman import logs
from dragoman import protocol as p
from dragoman.langs import node_pairs
from dragoman.scheduler import metrics
from dragoman.scheduler.connection import Connection
from dragoman.scheduler.store import DRAIN_LIMIT, Outcome, Partial
from dragoman.scheduler.store_errors import store_unavailable

if TYPE_CHECKING:
    from dragoman.scheduler.instance import Scheduler

log = logging.getLogger(__name__)

# Failures another node may not have: the job moves on instead of failing (§11.6).
RETRYABLE = frozenset(
    {
        "MODEL_NOT_AVAILABLE",
        "MODEL_LOAD_FAILED",
        "NO_GPU_AVAILABLE",
        "NODE_OVERLOADED",
        "NMT_TIMEOUT",
        "TTS_TIMEOUT",
    }
)
MAX_RESULTS_IN_FLIGHT = 256  # results of one node socket handled at once (see NodeLink._start_result)
INVALID_NODE_ID = 1008  # WebSocket close code "policy violation": the registration breaks a rule of ours


class NodeLink:
    def __init__(self, scheduler: Scheduler, conn: Connection, owner: str = "", peer: str = "") -> None:
        self.scheduler = scheduler
        self.conn = conn
        self.owner = owner  # the name of the node token the socket presented ('' without node tokens)
        self.peer = peer
        self.conn_token = p.new_uuid()
        self.node_id: str | None = None
        self.capacity = scheduler.settings.default_node_capacity
        self.languages: p.LanguageCapabilities | None = None
        self._results: set[asyncio.Task[None]] = set()  # results being handled (see _start_result)

    async def handle(self, raw: str | bytes) -> None:
        if self.conn.closed:  # closed by Dragoman (a refused node_register): frames still buffered count for nothing
            return
        try:
            msg = p.decode_node(raw)
        except p.ProtocolError as exc:
            metrics.BAD_FRAMES.inc("node")
            what = "wrong-direction message" if exc.wrong_direction else "invalid message"
            log.warning("node %s: %s ignored: %s", self.node_id or "(unregistered)", what, exc.detail)
            return
        if isinstance(msg, p.NodeRegister):
            await self._register(msg)
        elif self.node_id is None:
            log.warning("unregistered node socket sent %s; ignored", type(msg).__name__)
        elif isinstance(msg, p.NodeError):
            log.warning(
                "node %s reports %s: %s %s",
                self.node_id,
                p.excerpt(msg.code),
                p.excerpt(msg.message),
                p.excerpt(msg.details),
            )
        elif msg.node_id != self.node_id:
            log.warning("node %s: %s names node %s; ignored", self.node_id, type(msg).__name__, p.excerpt(msg.node_id))
        elif isinstance(msg, p.NodeHeartbeat):
            await self._heartbeat(msg)
        elif isinstance(msg, p.JobResult):
            await self._start_result(msg, raw)
        elif isinstance(msg, p.NodeAsrPartial):
            actor = self.scheduler.sessions.get(msg.session_id)
            if actor is not None:
                actor.partial(msg)
            else:  # rare (lingua's node never streams partials): find the session's instance
                owner = await self.scheduler.store.session_owner(msg.session_id)
                if owner and owner != self.scheduler.instance_id:
                    data = raw.decode() if isinstance(raw, bytes) else raw
                    await self.scheduler.store.post(owner, Partial(msg.session_id, data))
        elif isinstance(msg, p.JobAck | p.JobStarted):
            mark = "accepted" if isinstance(msg, p.JobAck) else "running"
            found = await self.scheduler.store.mark_job(msg.job_id, self.node_id, msg.attempt_id, mark)
            if found.found and isinstance(msg, p.JobAck):
                await self.scheduler.notify(found.session, found.owner, msg.job_id, "NODE_ACCEPTED")

    def _capacity(self, announced: int | None) -> int:
        if announced is not None and announced >= 1:
            self.capacity = announced
        return self.capacity

    async def _register(self, msg: p.NodeRegister) -> None:
        if msg.node_id and not p.valid_node_id(msg.node_id):
            # No error frame goes to a node (§2.3), so the close says why; the node retries after its backoff.
            log.warning("node_register refused: node_id %r is not %s", p.excerpt(msg.node_id), p.NODE_ID_RULE)
            self.conn.close(INVALID_NODE_ID, f"invalid node_id: {p.NODE_ID_RULE}")
            return
        node_id = msg.node_id or p.new_node_id()
        if self.node_id is not None and self.node_id != node_id:
            await self.closed()  # the socket re-registers as another node: the old one is gone
        # A token per registration, not per socket: an action still naming an earlier registration (a stale
        # assign whose node was unreachable) never ends this one, even on the same socket.
        self.conn_token = p.new_uuid()
        self.languages = msg.language_capabilities
        info = p.encode(
            {
                "version": msg.version,
                "platform": msg.platform,
                "hardware": msg.hardware,
                "installed_services": msg.installed_services or [],
                "capability_by_type": msg.capability_by_type,
                "features_supported": msg.features_supported,
                "language_capabilities": msg.language_capabilities,
            }
        )
        capacity = self._capacity(msg.max_concurrent_jobs)
        try:
            registered = await self.scheduler.store.register_node(
                node_id, self.conn_token, self.scheduler.instance_id, capacity, info, owner=self.owner
            )
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            # Without the store the node cannot be scheduled: close, and it registers again after its backoff.
            self.scheduler.store_failed(exc)
            self.conn.close(1011)
            return
        if registered.refused:
            metrics.REFUSED.inc("node", "node id of another token")
            log.warning(
                "node socket from %s (token %s): node id %s belongs to another token; closed",
                self.peer,
                self.owner,
                node_id,
            )
            self.conn.close(1008, f"node id {node_id} is registered with another token")
            return
        previous = self.scheduler.nodes.get(node_id)
        self.node_id = node_id
        logs.bind(node_id=node_id)  # on every line this socket's task logs from now on
        self.scheduler.nodes[node_id] = self
        if previous is not None and previous is not self:
            log.info("node %s registered on a new socket; closing the old one", node_id)
            previous.conn.close(1000)
        self.conn.send_nowait(p.encode(p.NodeRegisterAck.new(node_id)))
        log.info("node %s registered from %s (token %s, capacity %d)", node_id, self.peer, self.owner or "-", capacity)

    async def _heartbeat(self, msg: p.NodeHeartbeat) -> None:
        assert self.node_id is not None
        if msg.language_capabilities is not None:
            self.languages = msg.language_capabilities
        langs = self.languages
        pairs = node_pairs(langs.asr_languages or [], langs.semantic_languages or []) if langs else []
        load = p.encode(
            {
                "resource_usage": msg.resource_usage,
                "installed_services": msg.installed_services,
                "capability_by_type": msg.capability_by_type,
                "processing_metrics": msg.processing_metrics,
                "language_capabilities": langs,
            }
        )
        capacity = self._capacity(msg.max_concurrent_jobs)
        reply = await self.scheduler.store.heartbeat_node(
            self.node_id, self.conn_token, pairs, capacity, load, drain=DRAIN_LIMIT
        )
        if not reply.ok:
            log.warning("node %s: heartbeat on a socket that no longer holds the node; closing it", self.node_id)
            self.conn.close(1000)
        await self.scheduler.apply(reply.actions)

    async def _start_result(self, msg: p.JobResult, raw: str | bytes) -> None:
        """Handle a result without holding up the socket's next frames: a burst of results from one node
        reaches the store in one round trip (``dragoman.scheduler.store.scripts``), not one after the other. Each
        result's store call is made in the order the results arrived; at most ``MAX_RESULTS_IN_FLIGHT``
        are handled at once, then the socket is read no further until one is done."""
        if len(self._results) >= MAX_RESULTS_IN_FLIGHT:
            await asyncio.wait(self._results, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.get_running_loop().create_task(self._logged_result(msg, raw), name="node result")
        self._results.add(task)
        task.add_done_callback(self._results.discard)

    async def _logged_result(self, msg: p.JobResult, raw: str | bytes) -> None:
        logs.bind(job_id=msg.job_id, trace_id=msg.trace_id)  # for this task's lines: a task per result
        try:
            await self._result(msg, raw)
        except Exception:  # a store outage past store_retry_ms, or a bug: the job's deadline moves it on
            metrics.STORE_ERRORS.inc()
            log.exception("node %s: failed to handle the result for %s", self.node_id, p.excerpt(msg.job_id))

    async def _result(self, msg: p.JobResult, raw: str | bytes) -> None:
        assert self.node_id is not None
        block_ms = 0
        if msg.success:
            kind = "empty" if msg.is_empty else "completed"
        elif msg.error is not None and msg.error.code in RETRYABLE:
            kind = "retry"
            if msg.error.code == "MODEL_NOT_AVAILABLE":
                block_ms = self.scheduler.settings.model_exclusion_ms
        else:
            kind = "failed"
        node_id = self.node_id
        text = raw.decode() if isinstance(raw, bytes) else raw
        # A retry after a lost reply is safe: the script answers the same result with the same outcome.
        reply = await self.scheduler.durable(
            lambda: self.scheduler.store.complete_job(
                msg.job_id, node_id, msg.attempt_id, kind, text, block_ms, drain=DRAIN_LIMIT
            )
        )
        if reply.verdict != "accepted":
            metrics.STALE_RESULTS.inc(reply.verdict)
            log.info(
                "node %s: %s result for %s (attempt %d) dropped",
                self.node_id,
                reply.verdict,
                p.excerpt(msg.job_id),
                msg.attempt_id,
            )
        # The accepted outcome comes back without the result this socket just sent: put it in.
        actions = [
            msgspec.structs.replace(a, detail=text)
            if isinstance(a, Outcome) and a.job_id == msg.job_id and a.detail is None
            else a
            for a in reply.actions
        ]
        await self.scheduler.apply(actions)

    async def closed(self) -> None:
        """The socket closed: the node leaves every pool at once and its attempts fail over (after the
        results it sent before closing: they count)."""
        if self._results:
            await asyncio.wait(self._results)
        node_id, self.node_id = self.node_id, None
        if node_id is None:
            return
        if self.scheduler.nodes.get(node_id) is self:
            del self.scheduler.nodes[node_id]
        gone = await self.scheduler.durable(
            lambda: self.scheduler.store.node_gone(node_id, self.conn_token, self.scheduler.instance_id)
        )
        await self.scheduler.apply(gone)
