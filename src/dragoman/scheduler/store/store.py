"""The store: every piece of shared state, changed only through one atomic script per mutation.

``Store`` is the narrow interface the scheduler uses: typed calls in, typed records out (store/records.py);
key and field names never leave this package. Scheduling state is split into cells (store/keys.py); a job
is created in its session's home cell, or in another cell when the home cell has no usable node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection

from dragoman.config import Settings
from dragoman.scheduler.store.keys import Keys
from dragoman.scheduler.store.multiplex import Multiplexed, pack
from dragoman.scheduler.store.records import (
    VERSION,
    Action,
    ActionsReply,
    AdoptReply,
    AnnounceReply,
    Assign,
    ClaimReply,
    Created,
    CreateReply,
    Envelope,
    FinishReply,
    HeartbeatReply,
    InstanceRecord,
    JobRecord,
    JobSpec,
    JoinBudgetReply,
    MarkReply,
    NodeRecord,
    ProbeReply,
    ReconcileReply,
    RegisterReply,
    ReleasedReply,
    Repair,
    ResultReply,
    RoomMember,
    RoomReply,
    RoomState,
    Routed,
    SessionSnapshot,
    SettleReply,
    TakeInstancesReply,
    TakenInstance,
    TakeReply,
    TickReply,
)
from dragoman.scheduler.store.scripts import Scripts

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")
INBOX_GROUP = "dragoman"
TRACE_MAX = 64  # steps kept per job (as lua/_cell.lua's TRACE_MAX)
SESSION_TRACE_MAX = 256  # cuts kept per session
DRAIN_LIMIT = 8  # waiting jobs tried per freed capacity or heartbeat
MOVE_LEASE_MS = 5000  # a job moving between cells is the mover's this long; then any tick finishes the move


class StoreConfigError(RuntimeError):
    """The store holds a deployment that these settings cannot serve (a different number of cells)."""


_INSTANCE_STEPS = ("cut", "delivered")  # trace steps an instance writes (the scripts write the others)


def now_ms() -> int:
    return int(time.time() * 1000)


def group_id(pairs: list[str]) -> str:
    """The capability group of a node that serves these directed pairs: nodes that announce the same
    languages share one group, and with it one place for their load."""
    if not pairs:
        return ""
    return hashlib.blake2b(" ".join(sorted(pairs)).encode(), digest_size=8).hexdigest()


CLUSTER_SCHEME = "redis+cluster://"
BATCH = 64  # items sent together where an instance writes many at once (Store._in_batches)
INBOX_MAX = 100_000  # entries an inbox keeps (approximately); the oldest are trimmed first
Command = tuple[Any, ...]  # a command and its arguments, as the server takes them


def connect(url: str, max_connections: int, timeout_s: float) -> redis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://``, or ``redis+cluster://h1:p1,h2:p2``
    for a Redis/Valkey Cluster (any reachable node names it; the client discovers the rest). A call waits
    up to ``timeout_s`` for one of ``max_connections`` pooled connections instead of failing at once."""
    if url.startswith(CLUSTER_SCHEME):
        hosts = url.removeprefix(CLUSTER_SCHEME).split("/", 1)[0]
        nodes = []
        for host_port in filter(None, hosts.split(",")):
            host, _, port = host_port.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        if not nodes:
            raise ValueError(f"{url}: no cluster node given")
        cluster: redis.Redis = RedisCluster(  # type: ignore[assignment]
            startup_nodes=nodes, decode_responses=False, max_connections=max_connections
        )
        return cluster
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=timeout_s)
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return redis.Redis(connection_pool=pool, decode_responses=False, health_check_interval=0)


class _HiredisPacking:
    """Commands packed by hiredis (C) instead of redis-py's loop in Python, about five times faster: every
    script call carries some twenty arguments (redis-py's asyncio connections do not use hiredis for this)."""

    def pack_command(self, *args: Any) -> list[bytes]:
        return [pack(args)]


class _TcpConnection(_HiredisPacking, Connection):
    pass


class _UnixConnection(_HiredisPacking, UnixDomainSocketConnection):
    pass


class _TlsConnection(_HiredisPacking, SSLConnection):
    pass


_PACKED: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    UnixDomainSocketConnection: _UnixConnection,
    SSLConnection: _TlsConnection,
}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_record(job_id: str, cell: int, raw: dict[bytes, bytes]) -> JobRecord | None:
    if not raw:
        return None

    def get(name: str) -> str:
        return _s(raw.get(name.encode(), b""))

    dispatched = get("dispatched_ms")
    return JobRecord(
        job_id=job_id,
        cell=cell,
        state=get("state"),
        attempt=int(get("attempt") or 0),
        node=get("node"),
        session=get("session"),
        index=int(get("index") or 0),
        tgt=get("tgt"),
        pair=get("pair"),
        owner=get("owner"),
        trace=get("trace"),
        created_ms=int(get("created_ms") or 0),
        dispatched_ms=int(dispatched) if dispatched else None,
        detail=get("data"),
    )


def _member(job_id: str, cell: int) -> str:
    return f"{job_id}@{cell}"


def _parse_member(member: bytes | str) -> tuple[str, int]:
    job_id, _, cell = _s(member).rpartition("@")
    return job_id, int(cell)


class Store:
    """One deployment's store: its client, the scripts bound to it, and typed calls."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.keys = Keys(settings.key_prefix, settings.cells)
        timeout = settings.store_pool_timeout_ms / 1000
        self.client = connect(url, settings.store_max_connections, timeout)
        self.blocking = connect(url, 4, timeout)  # blocking inbox reads never hold up request/response traffic
        self._calls = asyncio.Semaphore(settings.store_max_connections)
        self._line = None if isinstance(self.client, RedisCluster) else Multiplexed(self.client.connection_pool)
        self._scripts = Scripts(self.client, self._line)
        self._header_tail = [
            settings.job_timeout_ms,
            settings.pending_timeout_ms,
            settings.failover_max_attempts + 1,
            settings.binding_ttl_ms,
        ]

    @property
    def cells(self) -> int:
        return self.settings.cells

    async def open(self) -> None:
        await self.client.ping()
        await self._check_cells()
        await self._scripts.load()

    async def _check_cells(self) -> None:
        """The number of cells is fixed for a deployment: changing it would route keys to other slots."""
        key = self.keys.meta_cells
        await self.client.set(key, self.cells, nx=True)
        stored = int(await self.client.get(key) or self.cells)
        if stored != self.cells:
            raise StoreConfigError(
                f"cells: this store's deployment (key_prefix {self.settings.key_prefix!r}) runs with "
                f"{stored} cells, not {self.cells}; start with cells = {stored}, or use another key_prefix"
            )

    async def close(self) -> None:
        if self._line is not None:
            await self._line.close()
        await self.client.aclose()
        await self.blocking.aclose()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[None]:
        """At most ``store_max_connections`` calls at once; a burst waits its turn (bounded by the pool
        timeout) instead of failing."""
        await self._acquire()
        try:
            yield
        finally:
            self._calls.release()

    async def _acquire(self) -> None:
        if not self._calls.locked():  # the common case: no timer
            await self._calls.acquire()
            return
        try:
            await asyncio.wait_for(self._calls.acquire(), self.settings.store_pool_timeout_ms / 1000)
        except TimeoutError:
            raise redis.ConnectionError("no store connection free within the pool timeout") from None

    async def _script(self, name: str, keys: list[str], args: list[Any], reply: type[R]) -> R:
        if self._line is not None:  # the shared connection: nothing to wait for
            raw = await self._scripts.call(name, keys, args)
        else:
            await self._acquire()  # (not ``_connection()``: the hottest call, and a generator costs)
            try:
                raw = await self._scripts.call(name, keys, args)
            finally:
                self._calls.release()
        return msgspec.msgpack.decode(raw, type=reply)

    async def _cell(self, name: str, keys: list[str], args: list[Any], reply: type[R]) -> R:
        """A cell script: KEYS[1] is always the cell's deadlines zset; the common header comes first."""
        header = [random.random(), *self._header_tail]
        return await self._script(name, keys, [*header, *args], reply)

    # -- jobs -------------------------------------------------------------------------------------

    async def _create_in(self, spec: JobSpec, cell: int, mode: str, must_place: bool, home: int) -> CreateReply:
        k = self.keys
        prefer = [n for n in spec.prefer if k.node_cell(n) == cell]
        keys = [k.deadlines(cell), k.job(cell, spec.job_id)]
        if mode != "bound":
            keys += [k.slot(home, spec.session, spec.index, spec.tgt), k.session_jobs(home, spec.session)]
        return await self._cell(
            "create_job",
            keys,
            [
                spec.session,
                spec.index,
                spec.tgt,
                spec.job_id,
                spec.pair,
                spec.pair2,
                spec.turn,
                spec.trace,
                spec.owner,
                spec.body,
                spec.result_ttl_ms,
                mode,
                "1" if must_place else "0",
                cell,
                ("g" if spec.guard else "") + ("r" if spec.room else ""),
                *prefer,
            ],
            CreateReply,
        )

    async def create_job(self, spec: JobSpec) -> Created:
        """Create-or-get the slot's job and place it. The slot binding lives in the session's home cell, so
        placing the job there is one call; when the home cell has no usable node, every other cell is
        tried (the cell of a preferred node first: a turn's parts go to one node), and the last resort is
        to wait at home. The binding then names the cell that took the job."""
        k = self.keys
        home = k.home_cell(spec.session)
        if self.cells == 1:
            reply = await self._create_in(spec, home, "bind", False, home)
        else:
            first = next((k.node_cell(n) for n in spec.prefer), home)
            reply = await self._create_in(spec, home, "bind" if first == home else "reserve", True, home)
            if reply.status == "no_room":
                reply = await self._spill(spec, home, first)
        if reply.status == "existing":
            if reply.state not in ("", "expired"):
                return Created("existing", reply.job_id, reply.cell, reply.state, [])
            # Bound, but not (yet) in the cell the binding names: another creator is placing it elsewhere.
            record = await self.get_job(reply.job_id)
            if record is None:
                return Created("existing", reply.job_id, reply.cell, "pending", [])
            return Created("existing", reply.job_id, record.cell, record.state, [])
        assert reply.status == "created"
        return Created("created", reply.job_id, reply.cell, reply.state, reply.actions)

    async def _spill(self, spec: JobSpec, home: int, first: int) -> CreateReply:
        others = [(home + step) % self.cells for step in range(1, self.cells)]
        order = [first, home, *(c for c in others if c != first)] if first != home else others
        for cell in order:
            reply = await self._create_in(spec, cell, "bound", True, home)
            if reply.status == "created":
                if cell != home:
                    await self._settle(spec.session, spec.index, spec.tgt, spec.job_id, home, cell, bool(spec.owner))
                return reply
        return await self._create_in(spec, home, "bound", False, home)

    async def _settle(self, session: str, index: int, tgt: str, job_id: str, old: int, new: int, indexed: bool) -> None:
        """Point the slot's binding (in the session's home cell) from cell ``old`` to cell ``new``."""
        k = self.keys
        home = k.home_cell(session)
        await self._cell(
            "settle_slot",
            [k.deadlines(home), k.slot(home, session, index, tgt), k.session_jobs(home, session)],
            [job_id, old, new, index, "1" if indexed else "0"],
            SettleReply,
        )

    async def complete_job(
        self, job_id: str, node: str, attempt: int, kind: str, raw: str, block_ms: int, drain: int
    ) -> ResultReply:
        """A node's result for one attempt, in the node's cell (its jobs are there)."""
        k = self.keys
        cell = k.node_cell(node)
        return await self._cell(
            "complete_job",
            [k.deadlines(cell), k.job(cell, job_id), k.node_jobs(cell, node)],
            [job_id, node, attempt, kind, raw, block_ms, drain, self.cells],
            ResultReply,
        )

    async def mark_job(self, job_id: str, node: str, attempt: int, mark: str) -> MarkReply:
        k = self.keys
        cell = k.node_cell(node)
        return await self._cell(
            "mark_job", [k.deadlines(cell), k.job(cell, job_id)], [job_id, node, attempt, mark], MarkReply
        )

    async def cancel_jobs(self, jobs: list[tuple[str, int]], reason: str) -> list[Action]:
        """End each (job id, cell) that is still unresolved."""
        k = self.keys
        by_cell: dict[int, list[str]] = {}
        for job_id, cell in jobs:
            if cell >= 0:
                by_cell.setdefault(cell, []).append(job_id)
        actions: list[Action] = []
        for cell, ids in by_cell.items():
            reply = await self._cell(
                "cancel_jobs",
                [k.deadlines(cell), *(k.job(cell, i) for i in ids)],
                [reason, DRAIN_LIMIT, *ids],
                ActionsReply,
            )
            actions += reply.actions
        return actions

    async def get_job(self, job_id: str, cell: int | None = None, search: bool = True) -> JobRecord | None:
        """A job's record, from its cell, or looked up in every cell (one pipelined round trip) when the cell
        is not known or (``search``) the job is not there (it moved)."""
        cells = list(range(self.cells)) if cell is None else [cell]
        async with self._connection(), self.client.pipeline(transaction=False) as pipe:
            for c in cells:
                pipe.hgetall(self.keys.job(c, job_id))
            rows: list[dict[bytes, bytes]] = await pipe.execute()
        for c, raw in zip(cells, rows, strict=True):
            if raw:
                return _job_record(job_id, c, raw)
        if cell is not None and search and self.cells > 1:
            return await self.get_job(job_id)
        return None

    # -- traces -----------------------------------------------------------------------------------

    async def add_traces(
        self,
        jobs: list[tuple[str, int, dict[str, Any]]],
        sessions: list[tuple[str, dict[str, Any]]],
        trace_ids: dict[str, str] | None = None,
    ) -> None:
        """Append steps recorded outside the scripts (cut, delivered) to job traces (job id, cell, entry) and
        session traces, in pipelined calls (``_in_batches``). A job's list exists already (its scripts made it, with the
        job's ttl): ``RPUSHX`` adds to it, one command per list, and adds nothing to a job that is gone, so
        no list is left without a ttl; these two steps at most pass the scripts' cap of ``TRACE_MAX``.
        ``trace_ids``: trace id -> the session whose utterances carry it (the latest session wins)."""
        k = self.keys
        job_lists: dict[str, list[bytes]] = {}
        for job_id, cell, entry in jobs:
            job_lists.setdefault(k.job_trace(cell, job_id), []).append(msgspec.msgpack.encode(entry))
        session_lists: dict[str, list[bytes]] = {}
        for session, entry in sessions:
            session_lists.setdefault(k.session_trace(session), []).append(msgspec.msgpack.encode(entry))
        ttl = self.settings.binding_ttl_ms

        def job_steps(item: tuple[str, list[bytes]]) -> list[Command]:
            return [("RPUSHX", item[0], *item[1])]

        def session_steps(item: tuple[str, list[bytes]]) -> list[Command]:
            key = item[0]  # kept as long as its jobs' records can live
            return [("RPUSH", key, *item[1]), ("LTRIM", key, -SESSION_TRACE_MAX, -1), ("PEXPIRE", key, ttl)]

        def trace_session(item: tuple[str, str]) -> list[Command]:
            return [("SET", k.trace_session(item[0]), item[1], "PX", ttl)]

        await self._in_batches(list(job_lists.items()), job_steps)
        await self._in_batches(list(session_lists.items()), session_steps)
        await self._in_batches(list((trace_ids or {}).items()), trace_session)

    async def job_trace(self, job_id: str) -> list[dict[str, Any]]:
        """The job's steps from every cell it went through, in time order (empty: unknown or expired)."""
        async with self._connection(), self.client.pipeline(transaction=False) as pipe:
            for cell in range(self.cells):
                pipe.lrange(self.keys.job_trace(cell, job_id), 0, -1)
            lists: list[list[bytes]] = await pipe.execute()
        # A cell's list is in the order its scripts ran (their stamps come from the callers' clocks, so two
        # calls made in one millisecond may run in either order): lists are merged, never sorted. A job is
        # in one cell at a time, so cells' lists interleave only where it moved. The cut and the delivery,
        # written by an instance after the scripts' steps, come first and last.
        cells = [[e for raw in rows if (e := _trace_entry(raw))] for rows in lists]
        steps = heapq.merge(
            *([e for e in entries if e.get("e") not in _INSTANCE_STEPS] for entries in cells),
            key=lambda e: float(e.get("t", 0)),
        )
        cuts = [e for entries in cells for e in entries if e.get("e") == "cut"]
        delivered = [e for entries in cells for e in entries if e.get("e") == "delivered"]
        return [*cuts, *steps, *delivered]

    async def trace_session(self, trace: str) -> str | None:
        """The session whose utterances last carried the trace id, if any is recorded."""
        async with self._connection():
            session = await self.client.get(self.keys.trace_session(trace))
        return _s(session) if isinstance(session, bytes | str) else None

    async def session_trace(self, session: str) -> list[dict[str, Any]]:
        """The session's cuts, oldest first (at most ``SESSION_TRACE_MAX``)."""
        async with self._connection():
            rows = await self.client.lrange(self.keys.session_trace(session), 0, -1)
        return [e for raw in rows if isinstance(raw, bytes) and (e := _trace_entry(raw))]

    # -- nodes ------------------------------------------------------------------------------------

    async def register_node(
        self, node: str, conn: str, instance: str, cap: int, info: bytes, owner: str = ""
    ) -> RegisterReply:
        """Bind ``node`` to the socket ``conn``, unless the id belongs to a node token other than ``owner``."""
        k = self.keys
        cell = k.node_cell(node)
        reply = await self._cell(
            "register_node",
            [k.deadlines(cell), k.node(cell, node), k.node_jobs(cell, node)],
            [node, conn, instance, cap, info, self.settings.node_liveness_ms, self.settings.reconnect_grace_ms, owner],
            RegisterReply,
        )
        if reply.refused:
            return reply
        async with self._connection(), self.client.pipeline(transaction=False) as pipe:
            # The instance's own set of the nodes it holds (only it writes it): a takeover ends them.
            pipe.sadd(k.instance_nodes(instance), node)
            if reply.previous_instance and reply.previous_instance != instance:
                pipe.srem(k.instance_nodes(reply.previous_instance), node)
            await pipe.execute()
        return reply

    async def heartbeat_node(
        self, node: str, conn: str, pairs: list[str], cap: int, load: bytes, drain: int
    ) -> HeartbeatReply:
        k = self.keys
        cell = k.node_cell(node)
        return await self._cell(
            "heartbeat_node",
            [k.deadlines(cell), k.node(cell, node), k.node_jobs(cell, node)],
            [node, conn, group_id(pairs), " ".join(pairs), cap, load, self.settings.node_liveness_ms, drain],
            HeartbeatReply,
        )

    async def node_gone(self, node: str, conn: str, instance: str = "*") -> list[Action]:
        """The node's socket ``conn`` closed ('*': whichever socket holds it, if ``instance`` holds it)."""
        k = self.keys
        cell = k.node_cell(node)
        reply = await self._cell(
            "node_gone", [k.deadlines(cell), k.node(cell, node)], [node, conn, instance], ActionsReply
        )
        if instance != "*":
            async with self._connection():
                await self.client.srem(k.instance_nodes(instance), node)
        return reply.actions

    async def nodes(self) -> list[NodeRecord]:
        """Every registered node of every cell, for the HTTP views."""
        k = self.keys
        records: list[NodeRecord] = []
        for cell in range(self.cells):
            async with self._connection():
                ids: list[bytes] = await self.client.zrange(k.live(cell), 0, -1)  # type: ignore[assignment]
            if not ids:
                continue
            async with self._connection(), self.client.pipeline(transaction=False) as pipe:
                for node in ids:
                    pipe.hgetall(k.node(cell, _s(node)))
                    pipe.scard(k.node_jobs(cell, _s(node)))
                rows = await pipe.execute()
            for node, raw, inflight in zip(ids, rows[::2], rows[1::2], strict=True):
                if raw:
                    records.append(_node_record(_s(node), cell, raw, int(inflight)))
        return records

    async def waiting_jobs(self) -> dict[str, int]:
        """How many jobs wait for a node, by pair, over every cell (read-only, for the views and metrics)."""
        k = self.keys
        counts: dict[str, int] = {}
        for cell in range(self.cells):
            async with self._connection():
                pairs = [_s(p) for p in await self.client.smembers(k.waiting(cell))]
            if not pairs:
                continue
            async with self._connection(), self.client.pipeline(transaction=False) as pipe:
                for pair in pairs:
                    pipe.zcard(k.wait(cell, pair))
                sizes = await pipe.execute()
            for pair, size in zip(pairs, sizes, strict=True):
                counts[pair] = counts.get(pair, 0) + int(size)
        return counts

    # -- sessions ---------------------------------------------------------------------------------

    async def open_session(
        self, session: str, instance: str, actor: str, init: bytes, trace: str, resume: str = ""
    ) -> None:
        """The session's record; ``resume`` is the digest of the token a resume must present."""
        key = self.keys.session(session)
        fields = ("owner", instance, "actor", actor, "init", init, "trace", trace, "resume", resume)
        await self._commands([("HSET", key, *fields), ("PEXPIRE", key, self.settings.resume_grace_ms)])

    async def keep_sessions(self, sessions: list[tuple[str, int]]) -> None:
        """Renew the records of live sessions (they expire ``resume_grace_ms`` after their owner stops) and
        record up to which index each has delivered its outcomes, so a resume re-sends only the rest."""
        k = self.keys

        def keep(item: tuple[str, int]) -> list[Command]:
            session, delivered = item
            key = k.session(session)
            index = k.session_jobs(k.home_cell(session), session)
            return [
                ("HSET", key, "delivered", delivered),
                ("PEXPIRE", key, self.settings.resume_grace_ms),
                ("ZREMRANGEBYSCORE", index, "-inf", delivered),
                ("PEXPIRE", index, self.settings.binding_ttl_ms),
            ]

        await self._in_batches(sessions, keep)

    async def _in_batches(self, items: Sequence[T], commands: Callable[[T], list[Command]]) -> None:
        """The commands of ``BATCH`` items at a time: thousands at once would hold the event loop for
        milliseconds while they are packed and their replies matched (every cut due meanwhile would wait);
        between two batches, the loop runs."""
        for start in range(0, len(items), BATCH):
            await self._commands([command for item in items[start : start + BATCH] for command in commands(item)])

    async def _commands(self, commands: list[Command]) -> list[Any]:
        """Commands sent together, their raw replies in order; the first error reply is raised (after every
        command ran, as in a pipeline). A standalone store takes them on the scripts' shared connection."""
        if self._line is not None:
            sent = [self._line.send(command) for command in commands]
            replies = [await reply for reply in sent]
        else:
            async with self._connection(), self.client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    async def close_session(self, session: str) -> None:
        k = self.keys
        await self._commands([("DEL", k.session(session)), ("DEL", k.session_jobs(k.home_cell(session), session))])

    async def claim_session(
        self, session: str, expected_actor: str, owner: str, actor: str, resume: str = "*"
    ) -> ClaimReply:
        """Give the session to ``owner``/``actor`` if the actor ``expected_actor`` ('*': any) holds it and
        ``resume`` is the digest of its resume token ('*': the session's own actor, which needs none)."""
        return await self._script(
            "claim_session",
            [self.keys.session(session)],
            [expected_actor, owner, actor, self.settings.resume_grace_ms, resume],
            ClaimReply,
        )

    async def session_snapshot(self, session: str) -> SessionSnapshot | None:
        """What a resumed session needs: its first ``session_init``, trace id, and every job past what it
        delivered, with each job's record."""
        k = self.keys
        async with self._connection():
            record: dict[bytes, bytes] = await self.client.hgetall(k.session(session))  # type: ignore[assignment]
        if not record:
            return None
        delivered = int(record.get(b"delivered", b"-1"))
        async with self._connection():
            rows: list[tuple[bytes, float]] = await self.client.zrangebyscore(  # type: ignore[assignment]
                k.session_jobs(k.home_cell(session), session), f"({delivered}", "+inf", withscores=True
            )
        members = [(_parse_member(m), int(index)) for m, index in rows]
        jobs: list[tuple[int, str, JobRecord | None]] = []
        for (job_id, cell), index in members:
            jobs.append((index, job_id, await self.get_job(job_id, None if cell < 0 else cell)))
        room, member = _s(record.get(b"room", b"")), record.get(b"member", b"")
        return SessionSnapshot(record[b"init"], _s(record[b"trace"]), delivered, jobs, room, member)

    async def session_owner(self, session: str) -> str:
        async with self._connection():
            owner = await self.client.hget(self.keys.session(session), "owner")
        return _s(owner) if owner else ""

    async def set_session_room(self, session: str, room: str, member: bytes) -> None:
        """Note in the session's record the room it is in ("" = none) and its member record there, so that a
        resume brings it back into the room."""
        key = self.keys.session(session)
        ttl = self.settings.resume_grace_ms  # never a record without its TTL
        await self._commands([("HSET", key, "room", room, "member", member), ("PEXPIRE", key, ttl)])

    # -- rooms ------------------------------------------------------------------------------------

    async def _room(self, name: str, room: str, args: list[Any]) -> RoomState:
        k = self.keys
        reply = await self._script(name, [k.room(room), k.room_members(room)], args, RoomReply)
        members = [msgspec.json.decode(m, type=RoomMember) for m in reply.members]
        return RoomState(reply.status, room, reply.code, members, reply.active_ms, reply.version)

    def _room_keep_ms(self) -> int:
        """A room's keys outlive its idle expiry by two sweeps: the sweep deletes them, the TTL only
        catches what a crash left behind."""
        return self.settings.room_idle_ms + 2 * self.settings.room_check_interval_ms

    async def claim_room_code(self, code: str, room: str) -> bool:
        """Reserve a room code for a new room (SET NX): False when a live room has it."""
        async with self._connection():
            return bool(await self.client.set(self.keys.room_code(code), room, nx=True, px=self._room_keep_ms()))

    async def room_of_code(self, code: str) -> str | None:
        async with self._connection():
            room = await self.client.get(self.keys.room_code(code))
        return _s(room) if room else None

    async def create_room(self, room: str, code: str, member: RoomMember) -> RoomState:
        state = await self._room(
            "room_create", room, [now_ms(), code, member.session_id, msgspec.json.encode(member), self._room_keep_ms()]
        )
        if state.status == "created":
            async with self._connection():
                await self.client.zadd(self.keys.rooms, {room: now_ms()})
        return state

    async def join_room(self, room: str, member: RoomMember, rejoin: bool = False) -> RoomState:
        args = [now_ms(), member.session_id, msgspec.json.encode(member), self.settings.room_max_members]
        state = await self._room("room_join", room, [*args, self._room_keep_ms(), "1" if rejoin else "0"])
        if state.status == "joined":  # a join is activity: the code lives as long as the room
            async with self._connection():
                await self.client.pexpire(self.keys.room_code(state.code), self._room_keep_ms())
        return state

    async def take_join_attempt(self, client_key: str, budget: int, window_ms: int) -> int:
        """Take one room-join attempt from ``client_key``'s budget of ``budget`` per ``window_ms`` (on every
        socket and instance); 0 if taken, else the ms until the budget is renewed."""
        args = ["take", budget, window_ms]
        reply = await self._script("room_join_budget", [self.keys.room_join_budget(client_key)], args, JoinBudgetReply)
        return 0 if reply.allowed else max(1, reply.retry_after_ms)

    async def give_back_join_attempt(self, client_key: str) -> None:
        """The attempt taken for a join whose code was right (or that was refused before the lookup)."""
        await self._script(
            "room_join_budget", [self.keys.room_join_budget(client_key)], ["give_back", 0, 0], JoinBudgetReply
        )

    async def leave_room(self, room: str, session: str) -> RoomState:
        state = await self._room("room_remove", room, ["session", session])
        if state.status == "deleted":
            await self._forget_room(room, state.code)
        return state

    async def set_raw_voice(self, room: str, session: str, target: str, receive: bool) -> RoomState:
        return await self._room("room_raw_voice", room, [session, target, "1" if receive else "0"])

    async def touch_room(self, room: str) -> RoomState:
        """The room is active now; its code's lookup is kept as long as the room."""
        state = await self._room("room_touch", room, [now_ms(), self._room_keep_ms()])
        if state.code:
            async with self._connection():
                await self.client.pexpire(self.keys.room_code(state.code), self._room_keep_ms())
        return state

    async def expire_rooms(self, limit: int = 256) -> list[RoomState]:
        """The sweep: every room idle for ``room_idle_ms`` is deleted (returned with the members it had);
        a room found active is looked at again when its last activity is that old. Bounded per call."""
        k = self.keys
        now = now_ms()
        idle = self.settings.room_idle_ms
        async with self._connection():
            due: list[bytes] = await self.client.zrangebyscore(  # type: ignore[assignment]
                k.rooms, "-inf", now - idle, start=0, num=limit
            )
        expired: list[RoomState] = []
        for raw in due:
            room = _s(raw)
            state = await self._room("room_expire", room, [now, idle])
            if state.status == "active":
                async with self._connection():
                    await self.client.zadd(k.rooms, {room: state.active_ms})
                continue
            await self._forget_room(room, state.code)
            if state.status == "expired":
                expired.append(state)
        return expired

    async def drop_instance_members(self, instance: str) -> list[RoomState]:
        """A dead instance's members leave every room (rare: a takeover; one script per live room). Returns
        the rooms they left that still have members."""
        async with self._connection():
            ids: list[bytes] = await self.client.zrange(self.keys.rooms, 0, -1)  # type: ignore[assignment]
        left: list[RoomState] = []
        for raw in ids:
            room = _s(raw)
            state = await self._room("room_remove", room, ["instance", instance])
            if state.status in ("deleted", "not_found"):
                await self._forget_room(room, state.code)
            elif state.status == "left":
                left.append(state)
        return left

    async def _forget_room(self, room: str, code: str) -> None:
        """A deleted room leaves the sweep's index and frees its code."""
        k = self.keys
        async with self._connection():
            await self.client.zrem(k.rooms, room)
        if code:
            await self._script("room_code_release", [k.room_code(code)], [room], ReleasedReply)

    async def room_counts(self) -> tuple[int, int]:
        """(live rooms, their members), for the HTTP views; one pipelined round trip per 256 rooms."""
        k = self.keys
        async with self._connection():
            ids: list[bytes] = await self.client.zrange(k.rooms, 0, -1)  # type: ignore[assignment]
        rooms = [_s(r) for r in ids]
        members = 0
        for start in range(0, len(rooms), 256):
            async with self._connection(), self.client.pipeline(transaction=False) as pipe:
                for room in rooms[start : start + 256]:
                    pipe.hlen(k.room_members(room))
                members += sum(int(n) for n in await pipe.execute())
        return len(rooms), members

    # -- instance inboxes -------------------------------------------------------------------------

    async def post(self, instance: str, message: Routed, hops: int = 0) -> None:
        """Append a message to another instance's inbox (a stream; bounded, oldest trimmed first)."""
        entry = msgspec.msgpack.encode(Envelope(VERSION, message, hops))
        await self._commands([("XADD", self.keys.inbox(instance), "MAXLEN", "~", INBOX_MAX, "*", "e", entry)])

    async def open_inbox(self, instance: str) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
            async with self._connection():
                await self.client.xgroup_create(self.keys.inbox(instance), INBOX_GROUP, id="0", mkstream=True)

    async def read_inbox(self, instance: str, block_ms: int, count: int = 256) -> list[tuple[bytes, Envelope | None]]:
        """Entries not yet read by this instance; None for an entry that cannot be decoded (logged)."""
        replies: list[Any] = await self.blocking.xreadgroup(  # type: ignore[assignment]
            INBOX_GROUP, instance, {self.keys.inbox(instance): ">"}, count=count, block=block_ms
        )
        return [(entry_id, _envelope(entry_id, fields)) for _, entries in replies or [] for entry_id, fields in entries]

    async def ack_inbox(self, instance: str, ids: list[bytes]) -> None:
        key = self.keys.inbox(instance)
        await self._commands([("XACK", key, INBOX_GROUP, *ids), ("XDEL", key, *ids)])

    async def inbox_stats(self, instance: str) -> tuple[int, int]:
        """(entries in the instance's inbox, entries read but not yet acknowledged)."""
        key = self.keys.inbox(instance)
        async with self._connection():
            length = await self.client.xlen(key)
            try:
                pending: dict[str, Any] = await self.client.xpending(key, INBOX_GROUP)
            except redis.ResponseError:  # no such group (the inbox was never opened or was taken over)
                return int(length), 0
        return int(length), int(pending["pending"])

    async def take_inbox(self, instance: str) -> list[Envelope]:
        """Everything a dead instance's inbox holds, then the inbox is deleted."""
        key = self.keys.inbox(instance)
        async with self._connection():
            entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.client.xrange(key)  # type: ignore[assignment]
            await self.client.delete(key)
        return [e for entry_id, fields in entries if (e := _envelope(entry_id, fields)) is not None]

    # -- instances and the periodic sweep ---------------------------------------------------------

    async def announce(self, instance: str, description: bytes, first: bool) -> bool:
        """Renew the instance's presence; False when it had been taken over by another instance."""
        k = self.keys
        reply = await self._script(
            "announce_instance",
            [k.instances, k.instance(instance), k.instance_nodes(instance)],
            [now_ms(), self.settings.instance_ttl_ms, description, "1" if first else "0", instance],
            AnnounceReply,
        )
        return reply.was_present

    async def leave(self, instance: str) -> None:
        """End the instance's presence. With no nodes left (a clean stop) it is removed at once, and its inbox
        with it: what the inbox holds is for sockets that are closed, and no instance needs to take it over."""
        k = self.keys
        reply = await self._script(
            "announce_instance",
            [k.instances, k.instance(instance), k.instance_nodes(instance)],
            [now_ms(), self.settings.instance_ttl_ms, "", "0", instance],
            AnnounceReply,
        )
        if reply.removed:
            async with self._connection():
                await self.client.delete(k.inbox(instance))

    async def take_instances(self, limit: int = 16) -> list[TakenInstance]:
        """The instances past their presence deadline, each now taken by this caller alone."""
        reply = await self._script("take_instances", [self.keys.instances], [now_ms(), limit], TakeInstancesReply)
        return reply.taken

    async def instances(self) -> list[InstanceRecord]:
        """Every instance that announced itself and is not yet taken over, with its description."""
        k = self.keys
        async with self._connection():
            rows: list[tuple[bytes, float]] = await self.client.zrange(  # type: ignore[assignment]
                k.instances, 0, -1, withscores=True
            )
            ids = [_s(r[0]) for r in rows]
            descriptions = await self.client.mget([k.instance(i) for i in ids]) if ids else []
        now = now_ms()
        return [
            InstanceRecord(i, score > now, description if isinstance(description, bytes) else None)
            for i, (_, score), description in zip(ids, rows, descriptions, strict=True)
        ]

    async def reconcile(self, limit: int = 10_000) -> list[Repair]:
        """Check every cell's nodes' job sets and load scores; returns each repair made."""
        k = self.keys
        repairs: list[Repair] = []
        for cell in range(self.cells):
            reply = await self._cell("reconcile", [k.deadlines(cell), k.live(cell)], [limit], ReconcileReply)
            repairs += reply.repairs
        return repairs

    async def tick(self, limit: int = 256) -> list[Action]:
        """Sweep every cell's deadlines and liveness (every instance sweeps every cell; each call is atomic),
        then move jobs that wait in one cell to another cell with room for them."""
        k = self.keys
        replies = await asyncio.gather(
            *(
                self._cell("tick", [k.deadlines(cell), k.live(cell)], [limit, self.cells, MOVE_LEASE_MS], TickReply)
                for cell in range(self.cells)
            )
        )
        actions = [action for reply in replies for action in reply.actions]
        for cell, reply in enumerate(replies):
            for move in reply.moves:
                actions += await self._finish_stale_move(cell, move.job_id, move.cell)
            if reply.waiting:
                actions += await self._rebalance(cell, reply.waiting)
        return actions

    # -- moving waiting jobs between cells --------------------------------------------------------

    async def _rebalance(self, cell: int, pairs: list[str], limit: int = 16) -> list[Action]:
        """Jobs that wait in ``cell`` for pairs another cell has room for move there: no job waits while any
        cell has a usable node with room (within a tick). Bounded: at most ``limit`` moves."""
        k = self.keys
        actions: list[Action] = []
        moved = 0
        for other in range(self.cells):
            if other == cell or not pairs or moved >= limit:
                continue
            probe = await self._cell("probe_cell", [k.deadlines(other)], pairs, ProbeReply)
            for pair in probe.pairs:
                while moved < limit:
                    placed = await self._move(cell, pair, other)
                    if placed is None:
                        pairs = [p for p in pairs if p != pair]
                        break
                    actions += placed
                    moved += 1
                    if not placed:
                        break
        return actions

    async def _move(self, cell: int, pair: str, other: int) -> list[Action] | None:
        """Move the oldest job waiting in ``cell`` for ``pair`` to ``other``: None when nothing waits; []
        when ``other`` had no room after all (the job waits again where it was)."""
        k = self.keys
        taken = await self._cell("take_waiting", [k.deadlines(cell)], [pair, other, MOVE_LEASE_MS], TakeReply)
        if not taken.found:
            return None
        job = taken.job
        job_id = job["job_id"]
        adopted = await self._cell(
            "adopt_job",
            [k.deadlines(other), k.job(other, job_id)],
            [
                job_id,
                job.get("attempt", "0"),
                job.get("nodes", ""),
                job["session"],
                job["index"],
                job["tgt"],
                job["pair"],
                job.get("pair2", ""),
                job.get("turn", ""),
                job.get("trace", ""),
                job.get("owner", ""),
                job.get("created_ms", "0"),
                job.get("ttl", "60000"),
                job.get("data", ""),
                job.get("guard", ""),
            ],
            AdoptReply,
        )
        if adopted.status == "no_room":
            return await self._finish(cell, job_id, "returned")  # [] or its placement back home
        await self._settle(job["session"], int(job["index"]), job["tgt"], job_id, cell, other, bool(job.get("owner")))
        await self._finish(cell, job_id, "moved")
        frame = job.get("data", "")
        return [msgspec.structs.replace(a, frame=frame) if isinstance(a, Assign) else a for a in adopted.actions]

    async def _finish_stale_move(self, cell: int, job_id: str, other: int) -> list[Action]:
        """A move whose mover died: finish it by what the other cell holds."""
        if await self.get_job(job_id, other, search=False) is None:
            return await self._finish(cell, job_id, "returned")
        record = await self.get_job(job_id, cell, search=False)
        if record is not None:
            await self._settle(record.session, record.index, record.tgt, job_id, cell, other, bool(record.owner))
        return await self._finish(cell, job_id, "moved")

    async def _finish(self, cell: int, job_id: str, how: str) -> list[Action]:
        k = self.keys
        reply = await self._cell("finish_move", [k.deadlines(cell), k.job(cell, job_id)], [job_id, how], FinishReply)
        return reply.actions


def _trace_entry(raw: bytes) -> dict[str, Any]:
    try:
        entry = msgspec.msgpack.decode(raw)
    except msgspec.DecodeError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _envelope(entry_id: bytes, fields: dict[bytes, bytes]) -> Envelope | None:
    try:
        envelope = msgspec.msgpack.decode(fields[b"e"], type=Envelope)
    except (KeyError, msgspec.DecodeError) as exc:
        log.warning("inbox entry %s cannot be decoded (%s); acknowledged and skipped", _s(entry_id), exc)
        return None
    if envelope.v != VERSION:
        log.warning(
            "inbox entry %s has version %s, not %s; acknowledged and skipped", _s(entry_id), envelope.v, VERSION
        )
        return None
    return envelope


def _node_record(node: str, cell: int, raw: dict[bytes, bytes], inflight: int) -> NodeRecord:
    def get(name: str) -> bytes:
        return raw.get(name.encode(), b"")

    return NodeRecord(
        node_id=node,
        cell=cell,
        instance=_s(get("instance")),
        status=_s(get("status")),
        capacity=int(get("cap") or 0),
        inflight=inflight,
        info=get("info"),
        load=get("load"),
        registered_ms=int(get("registered_ms") or 0),
        heartbeat_ms=int(get("hb_ms") or 0),
    )


def assigned_node(actions: list[Action], job_id: str) -> str | None:
    """The node the actions give the job to, if they do."""
    return next((a.node for a in actions if isinstance(a, Assign) and a.job_id == job_id), None)
