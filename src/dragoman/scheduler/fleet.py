"""The whole deployment as the store holds it: nodes, instances and language pairs, read at most once a
second however many scrapes, views and dashboards ask (``Fleet.snapshot``).

Its registry holds the fleet-wide gauges of ``/metrics``, from the last snapshot, so every instance shows
the same deployment.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from dragoman.langs import node_pairs
from dragoman.scheduler.store import NodeRecord

if TYPE_CHECKING:
    from dragoman.scheduler.instance import Scheduler

SERVICE_TYPES = {"asr", "nmt", "tts", "tone", "semantic", "phonetic", "punctuation"}
SNAPSHOT_MAX_AGE_S = 1.0


def decode_json(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


class NodeView:
    """One node record of the store, with the figures the views need."""

    def __init__(self, record: NodeRecord, liveness_ms: int, now_ms: int) -> None:
        self.id = record.node_id
        self.instance = record.instance
        self.info = decode_json(record.info)
        self.load = decode_json(record.load)
        self.capacity = record.capacity
        self.inflight = record.inflight
        self.last_heartbeat_ms = record.heartbeat_ms
        self.online = (record.status or "offline") != "offline" and now_ms - self.last_heartbeat_ms <= liveness_ms
        self.status = (record.status or "offline") if self.online else "offline"

    def _latest(self, name: str) -> Any:
        """A field of the last heartbeat, else of the registration."""
        value = self.load.get(name)
        return value if value is not None else self.info.get(name)

    @property
    def services(self) -> list[dict[str, Any]]:
        return [s for s in self._latest("installed_services") or [] if isinstance(s, dict)]

    @property
    def capabilities(self) -> list[dict[str, Any]]:
        return [c for c in self._latest("capability_by_type") or [] if isinstance(c, dict)]

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.load.get("resource_usage")
        return usage if isinstance(usage, dict) else {}

    @property
    def languages(self) -> dict[str, list[str]]:
        """The languages the node announced: recognised (asr) and produced (semantic, tts)."""
        caps = self._latest("language_capabilities")
        caps = caps if isinstance(caps, dict) else {}
        return {
            "asr": _strings(caps.get("asr_languages")),
            "semantic": _strings(caps.get("semantic_languages")),
            "tts": _strings(caps.get("tts_languages")),
        }

    @property
    def pairs(self) -> list[str]:
        langs = self.languages
        return node_pairs(langs["asr"], langs["semantic"])

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.inflight) if self.online else 0

    def running_types(self) -> set[str]:
        return {str(s.get("type")).lower() for s in self.services if s.get("status") == "running"} & SERVICE_TYPES

    def ready_types(self) -> dict[str, bool]:
        """Each capability type and whether it is ready: never ready while the node is offline."""
        return {str(c.get("type")).lower(): self.online and bool(c.get("ready")) for c in self.capabilities}

    def row(self) -> dict[str, Any]:
        """The node as the dashboard lists it."""
        return {
            "node_id": self.id,
            "instance": self.instance,
            "status": self.status,
            "online": self.online,
            "languages": self.languages,
            "capacity": self.capacity,
            "inflight": self.inflight,
            "last_heartbeat_ms": self.last_heartbeat_ms,
        }


@dataclass
class PairView:
    pair: str
    eligible_nodes: int = 0
    free_capacity: int = 0
    waiting_jobs: int = 0


@dataclass
class InstanceView:
    instance_id: str
    online: bool
    hostname: str
    pid: int
    version: str
    started_at_ms: int
    sessions: int
    nodes_owned: int
    inbox_length: int
    inbox_pending: int


@dataclass
class Snapshot:
    taken_ms: int
    nodes: list[NodeView] = field(default_factory=list)
    instances: list[InstanceView] = field(default_factory=list)
    pairs: dict[str, PairView] = field(default_factory=dict)
    rooms: int = 0
    room_members: int = 0

    def nodes_by_status(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.status] = counts.get(node.status, 0) + 1
        return counts


class Fleet:
    """The deployment's snapshot for one instance, refreshed when asked for and older than a second."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.last: Snapshot | None = None
        self._lock = asyncio.Lock()
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(FleetCollector(self))

    def render(self) -> str:
        """The fleet-wide gauges of the last snapshot, in the text exposition format."""
        return generate_latest(self.registry).decode()

    async def snapshot(self, max_age_s: float = SNAPSHOT_MAX_AGE_S) -> Snapshot:
        """The last snapshot if younger than ``max_age_s``, else a new one (0: always a new one)."""
        async with self._lock:  # one read of the store at a time; the callers behind it share its result
            now = int(time.time() * 1000)
            if self.last is None or now - self.last.taken_ms >= max_age_s * 1000:
                self.last = await self._read(now)
            return self.last

    async def _read(self, now: int) -> Snapshot:
        scheduler = self.scheduler
        store = scheduler.store
        snap = Snapshot(now, [NodeView(r, scheduler.settings.node_liveness_ms, now) for r in await store.nodes()])
        for node in snap.nodes:
            if not node.online:
                continue
            for pair in node.pairs:
                view = snap.pairs.setdefault(pair, PairView(pair))
                view.eligible_nodes += 1
                view.free_capacity += node.free
        snap.rooms, snap.room_members = await store.room_counts()
        for pair, waiting in (await store.waiting_jobs()).items():
            snap.pairs.setdefault(pair, PairView(pair)).waiting_jobs = waiting
        for record in await store.instances():
            description = decode_json(record.description)
            length, pending = await store.inbox_stats(record.instance_id)
            own = record.instance_id == scheduler.instance_id
            snap.instances.append(
                InstanceView(
                    instance_id=record.instance_id,
                    online=record.online,
                    hostname=str(description.get("hostname", "")),
                    pid=int(description.get("pid", 0)),
                    version=str(description.get("version", "")),
                    started_at_ms=int(description.get("started_at_ms", 0)),
                    # live here; as last announced (every instance_ttl_ms / 3) elsewhere
                    sessions=len(scheduler.sessions) if own else int(description.get("sessions", 0)),
                    nodes_owned=sum(1 for n in snap.nodes if n.online and n.instance == record.instance_id),
                    inbox_length=length,
                    inbox_pending=pending,
                )
            )
        return snap


class FleetCollector(Collector):
    """The fleet-wide gauges, from the fleet's last snapshot (``/metrics`` refreshes it before rendering)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self.fleet.last
        nodes = GaugeMetricFamily(
            "dragoman_fleet_nodes", "Registered nodes of the deployment, by status", labels=["status"]
        )
        capacity = GaugeMetricFamily("dragoman_fleet_capacity", "Job slots of the deployment's online nodes")
        inflight = GaugeMetricFamily("dragoman_fleet_inflight", "Attempts running on the deployment's nodes")
        waiting = GaugeMetricFamily("dragoman_pair_waiting_jobs", "Jobs waiting for a node, by pair", labels=["pair"])
        eligible = GaugeMetricFamily(
            "dragoman_pair_eligible_nodes", "Online nodes that serve the pair", labels=["pair"]
        )
        free = GaugeMetricFamily("dragoman_pair_free_capacity", "Free job slots of the pair's nodes", labels=["pair"])
        sessions = GaugeMetricFamily("dragoman_instance_sessions", "Sessions held, by instance", labels=["instance"])
        inst_nodes = GaugeMetricFamily("dragoman_instance_nodes", "Online nodes held, by instance", labels=["instance"])
        backlog = GaugeMetricFamily(
            "dragoman_instance_inbox_backlog", "Inbox entries not yet carried out, by instance", labels=["instance"]
        )
        up = GaugeMetricFamily("dragoman_instance_up", "1 while the instance announces itself", labels=["instance"])
        rooms = GaugeMetricFamily("dragoman_fleet_rooms", "Live rooms of the deployment")
        members = GaugeMetricFamily("dragoman_fleet_room_members", "Members of the deployment's rooms")
        rooms.add_metric([], snap.rooms if snap else 0)
        members.add_metric([], snap.room_members if snap else 0)
        by_status = {"registering": 0, "ready": 0, "offline": 0} | (snap.nodes_by_status() if snap else {})
        for status, count in by_status.items():
            nodes.add_metric([status], count)
        online = [n for n in snap.nodes if n.online] if snap is not None else []
        capacity.add_metric([], sum(n.capacity for n in online))
        inflight.add_metric([], sum(n.inflight for n in online))
        for view in snap.pairs.values() if snap is not None else ():
            waiting.add_metric([view.pair], view.waiting_jobs)
            eligible.add_metric([view.pair], view.eligible_nodes)
            free.add_metric([view.pair], view.free_capacity)
        for inst in snap.instances if snap is not None else ():
            sessions.add_metric([inst.instance_id], inst.sessions)
            inst_nodes.add_metric([inst.instance_id], inst.nodes_owned)
            backlog.add_metric([inst.instance_id], inst.inbox_length)
            up.add_metric([inst.instance_id], 1 if inst.online else 0)
        yield from (
            nodes,
            capacity,
            inflight,
            waiting,
            eligible,
            free,
            sessions,
            inst_nodes,
            backlog,
            up,
            rooms,
            members,
        )
