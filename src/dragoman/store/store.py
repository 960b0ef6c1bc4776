"""The store: every piece of shared state, changed only through one atomic script per mutation.

``Store`` turns the scripts' replies into typed actions (``Assign``, ``Cancel``, ``Outcome``,
``DropNode``) that the scheduler carries out on its sockets. All scheduling keys share one hash tag
(``{sched}``), so every script touches one hash slot; see docs/ARCHITECTURE.md for the key schema.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from dragoman.config import Settings
from dragoman.store.scripts import Scripts


@dataclass(frozen=True, slots=True)
class Assign:
    """Send attempt ``attempt`` of the job to ``node`` (held by ``instance``)."""

    job_id: str
    node: str
    instance: str
    attempt: int
    body: bytes  # the job_assign frame after its attempt id (protocol.assign_frame)
    session: str
    owner: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """Tell ``node`` to stop working on the job (best effort: N11)."""

    job_id: str
    node: str
    instance: str
    trace: str
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """The job's single outcome. ``detail`` is the node's raw job_result, or Dragoman's error code."""

    job_id: str
    state: str  # completed | empty | failed | timed_out
    detail: bytes
    session: str
    index: int
    owner: str
    trace: str
    created_ms: int
    dispatched_ms: int | None


@dataclass(frozen=True, slots=True)
class DropNode:
    """The node's liveness ran out: close its socket if this instance holds it."""

    node: str
    instance: str


@dataclass(frozen=True, slots=True)
class InstanceGone:
    """An instance stopped announcing itself and this one took it over: re-route what its inbox holds."""

    instance: str


@dataclass(frozen=True, slots=True)
class Notify:
    """A ``ui_event`` for a session held by another instance (sent between instances, not by scripts)."""

    session: str
    job_id: str
    event: str
    error_code: str | None = None


@dataclass(frozen=True, slots=True)
class Partial:
    """A node's raw ``asr_partial`` for a session held by another instance."""

    session: str
    raw: bytes


Action = Assign | Cancel | Outcome | DropNode | InstanceGone
Routed = Assign | Cancel | Outcome | DropNode | Notify | Partial  # what one instance may post to another
_ROUTED: dict[bytes, type[Routed]] = {
    b"assign": Assign,
    b"cancel": Cancel,
    b"outcome": Outcome,
    b"drop_node": DropNode,
    b"notify": Notify,
    b"partial": Partial,
}
_ROUTED_KIND = {cls: kind for kind, cls in _ROUTED.items()}


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _action(row: list[Any]) -> Action:
    kind = _s(row[0])
    if kind == "assign":
        return Assign(_s(row[1]), _s(row[2]), _s(row[3]), int(row[4]), row[5] or b"", _s(row[6]), _s(row[7]))
    if kind == "cancel":
        return Cancel(_s(row[1]), _s(row[2]), _s(row[3]), _s(row[4]), _s(row[5]))
    if kind == "outcome":
        return Outcome(
            job_id=_s(row[1]),
            state=_s(row[2]),
            detail=row[3] if isinstance(row[3], bytes) else str(row[3]).encode(),
            session=_s(row[4]),
            index=int(row[5]),
            owner=_s(row[6]),
            trace=_s(row[7]),
            created_ms=int(row[8]),
            dispatched_ms=int(row[9]) if row[9] else None,
        )
    if kind == "drop_node":
        return DropNode(_s(row[1]), _s(row[2]))
    if kind == "instance_gone":
        return InstanceGone(_s(row[1]))
    raise ValueError(f"unknown store action {kind!r}")


def outcome_of(job_id: str, session: str, index: int, state: str, record: dict[str, bytes]) -> Outcome:
    """The outcome of a resolved job, read back from its record (for a resumed session)."""
    dispatched = record.get("dispatched_ms")
    return Outcome(
        job_id=job_id,
        state=state,
        detail=record.get("outcome", b""),
        session=session,
        index=index,
        owner=_s(record.get("owner", b"")),
        trace=_s(record.get("trace", b"")),
        created_ms=int(record.get("created_ms", b"0")),
        dispatched_ms=int(dispatched) if dispatched else None,
    )


def _routed(fields: dict[bytes, bytes]) -> Routed:
    return msgspec.msgpack.decode(fields[b"m"], type=_ROUTED[fields[b"k"]])


def _actions(rows: list[Any]) -> list[Action]:
    return [_action(row) for row in rows]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What create-or-get needs to know about a job."""

    session: str
    index: int
    tgt: str
    job_id: str  # proposed: used only if the slot has no job yet
    pair: str  # "src:tgt" after normalisation, "" when no node can be eligible
    pair2: str  # the reverse pair a two-way job also needs, or ""
    turn: str
    trace: str
    owner: str  # instance that delivers the outcome, "" for HTTP API jobs
    body: bytes
    result_ttl_ms: int


@dataclass(frozen=True, slots=True)
class Created:
    status: str  # created | existing
    job_id: str
    state: str
    actions: list[Action]


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    init: bytes  # the session's first session_init (its language settings)
    trace: str
    delivered: int  # outcomes up to this index were delivered
    jobs: list[tuple[int, str, dict[str, bytes]]]  # (index, job id, job record) past ``delivered``


def now_ms() -> int:
    return int(time.time() * 1000)


CLUSTER_SCHEME = "redis+cluster://"


def connect(url: str) -> redis.Redis:
    """A client for ``url``: ``redis://``, ``rediss://``, ``unix://``, or ``redis+cluster://h1:p1,h2:p2``
    for a Redis/Valkey Cluster (any reachable node names it; the client discovers the rest)."""
    if url.startswith(CLUSTER_SCHEME):
        hosts = url.removeprefix(CLUSTER_SCHEME).split("/", 1)[0]
        nodes = []
        for host_port in filter(None, hosts.split(",")):
            host, _, port = host_port.rpartition(":")
            nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
        if not nodes:
            raise ValueError(f"{url}: no cluster node given")
        cluster: redis.Redis = RedisCluster(startup_nodes=nodes, decode_responses=False)  # type: ignore[assignment]
        return cluster
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=0)


class Store:
    """One store connection pool and the scripts bound to it."""

    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.client = connect(url)
        self.blocking = connect(url)  # blocking inbox reads never hold up request/response traffic
        self.prefix = f"{settings.key_prefix}:{{sched}}:"
        self._keys = [self.prefix + "deadlines"]
        self._scripts = Scripts(self.client)
        self._header_tail = [
            settings.job_timeout_ms,
            settings.pending_timeout_ms,
            settings.affinity_ttl_ms,
            settings.failover_max_attempts + 1,
            settings.binding_ttl_ms,
        ]

    async def open(self) -> None:
        await self.client.ping()
        await self._scripts.load()

    async def close(self) -> None:
        await self.client.aclose()
        await self.blocking.aclose()

    async def _call(self, name: str, *args: Any) -> Any:
        header = [self.prefix, now_ms(), random.random(), *self._header_tail]
        return await self._scripts.call(name, self._keys, [*header, *args])

    # -- jobs -------------------------------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> Created:
        rows = await self._call(
            "create_job",
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
        )
        head = rows[0]
        return Created(_s(head[1]), _s(head[2]), _s(head[3]), _actions(rows[1:]))

    async def complete_job(
        self, job_id: str, node: str, attempt: int, kind: str, raw: bytes | str, block_ms: int, drain: int
    ) -> tuple[str, list[Action]]:
        rows = await self._call("complete_job", job_id, node, attempt, kind, raw, block_ms, drain)
        return _s(rows[0][1]), _actions(rows[1:])

    async def mark_job(self, job_id: str, node: str, attempt: int, mark: str) -> tuple[str, str] | None:
        """(session, owner) when the attempt is current and unresolved, else None."""
        row = await self._call("mark_job", job_id, node, attempt, mark)
        return (_s(row[0]), _s(row[1])) if row else None

    async def cancel_jobs(self, job_ids: list[str], reason: str) -> list[Action]:
        if not job_ids:
            return []
        return _actions(await self._call("cancel_jobs", reason, *job_ids))

    async def get_job(self, job_id: str) -> dict[str, bytes]:
        raw: dict[bytes, bytes] = await self.client.hgetall(f"{self.prefix}job:{job_id}")  # type: ignore[assignment]
        return {k.decode(): v for k, v in raw.items()}

    # -- nodes ------------------------------------------------------------------------------------

    async def register_node(self, node: str, conn: str, instance: str, cap: int, info: bytes) -> tuple[str, str]:
        row = await self._call(
            "register_node",
            node,
            conn,
            instance,
            cap,
            info,
            self.settings.node_liveness_ms,
            self.settings.reconnect_grace_ms,
        )
        return _s(row[0]), _s(row[1])

    async def heartbeat_node(
        self, node: str, conn: str, pairs: list[str], cap: int, load: bytes, drain: int
    ) -> tuple[bool, list[Action]]:
        rows = await self._call(
            "heartbeat_node", node, conn, " ".join(pairs), cap, load, self.settings.node_liveness_ms, drain
        )
        return _s(rows[0][1]) == "ok", _actions(rows[1:])

    async def node_gone(self, node: str, conn: str) -> list[Action]:
        return _actions(await self._call("node_gone", node, conn))

    async def nodes(self) -> list[dict[str, bytes]]:
        """Every registered node's record, for the HTTP views."""
        ids: list[bytes] = await self.client.zrange(self.prefix + "live", 0, -1)  # type: ignore[assignment]
        async with self.client.pipeline(transaction=False) as pipe:
            for node in ids:
                pipe.hgetall(f"{self.prefix}node:{node.decode()}")
            rows: list[dict[bytes, bytes]] = await pipe.execute()
        return [{"id": n, **{k.decode(): v for k, v in r.items()}} for n, r in zip(ids, rows, strict=True) if r]

    # -- sessions ---------------------------------------------------------------------------------

    def _session_key(self, session: str) -> str:
        return f"{self.prefix}session:{session}"

    async def open_session(self, session: str, instance: str, actor: str, init: bytes, trace: str) -> None:
        key = self._session_key(session)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"owner": instance, "actor": actor, "init": init, "trace": trace})
            pipe.pexpire(key, self.settings.resume_grace_ms)
            await pipe.execute()

    async def keep_sessions(self, sessions: list[tuple[str, int]]) -> None:
        """Renew the records of live sessions (they expire ``resume_grace_ms`` after their owner stops) and
        record up to which index each has delivered its outcomes, so a resume re-sends only the rest."""
        async with self.client.pipeline(transaction=False) as pipe:
            for session, delivered in sessions:
                key = self._session_key(session)
                pipe.hset(key, "delivered", delivered)
                pipe.pexpire(key, self.settings.resume_grace_ms)
                pipe.zremrangebyscore(key + ":jobs", "-inf", delivered)
            await pipe.execute()

    async def close_session(self, session: str) -> None:
        key = self._session_key(session)
        await self.client.delete(key, key + ":jobs")

    async def claim_session(self, session: str, expected_actor: str, owner: str, actor: str) -> str | None:
        """Give the session to ``owner``/``actor`` if the actor ``expected_actor`` ('*': any) holds it.
        Returns the previous owner instance, or None when there is no such session or another actor holds it."""
        previous = await self._call(
            "claim_session", session, expected_actor, owner, actor, self.settings.resume_grace_ms
        )
        return None if previous is None else _s(previous)

    async def session_snapshot(self, session: str) -> SessionSnapshot | None:
        """What a resumed session needs: its first ``session_init``, trace id, and every job past what it
        delivered, with each job's record."""
        key = self._session_key(session)
        record: dict[bytes, bytes] = await self.client.hgetall(key)  # type: ignore[assignment]
        if not record:
            return None
        delivered = int(record.get(b"delivered", b"-1"))
        rows: list[tuple[bytes, float]] = await self.client.zrangebyscore(  # type: ignore[assignment]
            key + ":jobs", f"({delivered}", "+inf", withscores=True
        )
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id, _ in rows:
                pipe.hgetall(f"{self.prefix}job:{_s(job_id)}")
            records: list[dict[bytes, bytes]] = await pipe.execute()
        jobs = [
            (int(index), _s(job_id), {_s(k): v for k, v in job.items()})
            for (job_id, index), job in zip(rows, records, strict=True)
        ]
        return SessionSnapshot(record[b"init"], _s(record[b"trace"]), delivered, jobs)

    async def session_owner(self, session: str) -> str:
        owner = await self.client.hget(self._session_key(session), "owner")
        return _s(owner) if owner else ""

    # -- instance inboxes -------------------------------------------------------------------------

    def inbox_key(self, instance: str) -> str:
        return f"{self.settings.key_prefix}:{{inbox:{instance}}}"

    async def post(self, instance: str, message: Routed) -> None:
        """Append a message to another instance's inbox (a stream; bounded, oldest trimmed first)."""
        fields = {"k": _ROUTED_KIND[type(message)], "m": msgspec.msgpack.encode(message)}
        await self.client.xadd(self.inbox_key(instance), fields, maxlen=100_000, approximate=True)  # type: ignore[arg-type]

    async def open_inbox(self, instance: str) -> None:
        with contextlib.suppress(redis.ResponseError):  # BUSYGROUP: it exists
            await self.client.xgroup_create(self.inbox_key(instance), "dragoman", id="0", mkstream=True)

    async def read_inbox(self, instance: str, block_ms: int, count: int = 256) -> list[tuple[bytes, Routed]]:
        replies: list[Any] = await self.blocking.xreadgroup(  # type: ignore[assignment]
            "dragoman", instance, {self.inbox_key(instance): ">"}, count=count, block=block_ms
        )
        return [(entry_id, _routed(fields)) for _, entries in replies or [] for entry_id, fields in entries]

    async def ack_inbox(self, instance: str, ids: list[bytes]) -> None:
        key = self.inbox_key(instance)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.xack(key, "dragoman", *ids)
            pipe.xdel(key, *ids)
            await pipe.execute()

    async def inbox_stats(self, instance: str) -> tuple[int, int]:
        """(entries in the instance's inbox, entries read but not yet acknowledged)."""
        key = self.inbox_key(instance)
        length = await self.client.xlen(key)
        try:
            pending: dict[str, Any] = await self.client.xpending(key, "dragoman")
        except redis.ResponseError:  # no such group (the inbox was never opened or was taken over)
            return int(length), 0
        return int(length), int(pending["pending"])

    async def take_inbox(self, instance: str) -> list[Routed]:
        """Everything a dead instance's inbox holds, then the inbox is deleted."""
        key = self.inbox_key(instance)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = await self.client.xrange(key)  # type: ignore[assignment]
        await self.client.delete(key)
        return [_routed(fields) for _, fields in entries]

    # -- instances and the periodic sweep ---------------------------------------------------------

    async def announce(self, instance: str, description: bytes) -> None:
        await self._call("announce_instance", instance, self.settings.instance_ttl_ms, description)

    async def leave(self, instance: str) -> None:
        """End the instance's presence. With no nodes left (a clean stop) it is removed at once, and its inbox
        with it: what the inbox holds is for sockets that are closed, and no instance needs to take it over."""
        if await self._call("announce_instance", instance, self.settings.instance_ttl_ms, ""):
            await self.client.delete(self.inbox_key(instance))

    async def instances(self) -> list[dict[str, Any]]:
        """Every instance that announced itself and is not yet taken over, with its description."""
        rows: list[tuple[bytes, float]] = await self.client.zrange(  # type: ignore[assignment]
            self.prefix + "instances", 0, -1, withscores=True
        )
        ids = [_s(r[0]) for r in rows]
        descriptions = await self.client.mget([f"{self.prefix}instance:{i}" for i in ids]) if ids else []
        now = now_ms()
        return [
            {"id": i, "online": score > now, "description": description}
            for i, (_, score), description in zip(ids, rows, descriptions, strict=True)
        ]

    async def reconcile(self, limit: int = 10_000) -> list[tuple[str, int, int]]:
        """Repair in-flight counts from the jobs; returns (node, counted, actual) for each repair."""
        rows = await self._call("reconcile", limit)
        return [(_s(r[0]), int(r[1]), int(r[2])) for r in rows]

    async def tick(self, limit: int = 256) -> list[Action]:
        return _actions(await self._call("tick", limit))
