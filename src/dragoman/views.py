"""Read-only HTTP views of the real state: ``/api/v1/stats`` (§16.2) and ``/api/v1/cluster`` (§16.3).

Nodes and instances are read from the store, so every instance shows the same node set (B20).
Sessions are counted per instance (each announces its count with its presence).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dragoman.http_api import store_guarded
from dragoman.scheduler import Scheduler
from dragoman.store import NodeRecord

_SERVICE_TYPES = {"asr", "nmt", "tts", "tone", "semantic", "phonetic", "punctuation"}


def _json(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class NodeView:
    """One node record of the store, with the figures the views need."""

    def __init__(self, record: NodeRecord, liveness_ms: int, now_ms: int) -> None:
        self.id = record.node_id
        self.instance = record.instance
        self.info = _json(record.info)
        self.load = _json(record.load)
        self.status = record.status or "offline"
        self.capacity = record.capacity
        self.inflight = record.inflight
        self.last_heartbeat_ms = record.heartbeat_ms
        self.online = self.status != "offline" and now_ms - self.last_heartbeat_ms <= liveness_ms

    @property
    def services(self) -> list[dict[str, Any]]:
        services = self.load.get("installed_services") or self.info.get("installed_services") or []
        return [s for s in services if isinstance(s, dict)]

    @property
    def capabilities(self) -> list[dict[str, Any]]:
        caps = self.load.get("capability_by_type") or self.info.get("capability_by_type") or []
        return [c for c in caps if isinstance(c, dict)]

    @property
    def usage(self) -> dict[str, Any]:
        usage = self.load.get("resource_usage")
        return usage if isinstance(usage, dict) else {}

    def running_types(self) -> set[str]:
        return {str(s.get("type")) for s in self.services if s.get("status") == "running"} & _SERVICE_TYPES


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def routes(scheduler: Scheduler) -> list[Route]:
    settings = scheduler.settings

    async def nodes() -> list[NodeView]:
        now = int(time.time() * 1000)
        return [NodeView(r, settings.node_liveness_ms, now) for r in await scheduler.store.nodes()]

    async def stats(request: Request) -> Response:
        views = await nodes()
        languages: Counter[str] = Counter()
        usage: dict[str, dict[str, int]] = {}
        for actor in scheduler.sessions.values():
            for role, lang in (("as_source", actor.init.src_lang), ("as_target", actor.init.tgt_lang)):
                entry = usage.setdefault(lang, {"as_source": 0, "as_target": 0, "total": 0})
                entry[role] += 1
                entry["total"] += 1
                languages[lang] += 1
        type_counts: Counter[str] = Counter()
        for view in views:
            type_counts.update(view.running_types())
        details = []
        for view in views:
            hardware = view.info.get("hardware") or {}
            efficiencies = (view.load.get("processing_metrics") or {}).get("serviceEfficiencies")
            detail: dict[str, Any] = {
                "node_id": view.id,
                "node_name": view.id,
                "cpu_power": _float(hardware.get("cpu_cores")),
                "gpu_power": sum(_float(g.get("memory_gb")) for g in hardware.get("gpus") or [] if isinstance(g, dict)),
                "memory_power": _float(hardware.get("memory_gb")),
            }
            if isinstance(efficiencies, dict):
                detail["service_efficiencies"] = efficiencies
            details.append(detail)
        rooms, members = await scheduler.store.room_counts()
        body = {
            "web_clients": {
                "active_users": len(scheduler.sessions),
                "top_languages": [{"language": k, "count": v} for k, v in languages.most_common(10)],
                "language_usage": usage,
            },
            "nodes": {
                "connected_nodes": sum(1 for v in views if v.online),
                "type_node_counts": dict(type_counts),
                "available_services": [],
                "available_models": [],
                "total_services": 0,
                "type_in_use_counts": {},
                "compute_power": {
                    "total_cpu_power": sum(d["cpu_power"] for d in details),
                    "total_gpu_power": sum(d["gpu_power"] for d in details),
                    "total_memory_power": sum(d["memory_power"] for d in details),
                    "node_power_details": details,
                },
            },
            "rooms": {"active_rooms": rooms, "room_members": members},  # an extension (§18.1: additive)
        }
        return JSONResponse(body)

    async def cluster(request: Request) -> Response:
        views = await nodes()
        now = int(time.time() * 1000)
        instances = []
        for inst in await scheduler.store.instances():  # sessions: live here, as last announced elsewhere
            description = _json(inst.description)
            inbox_length, inbox_pending = await scheduler.store.inbox_stats(inst.instance_id)
            started = int(description.get("started_at_ms", 0))
            instances.append(
                {
                    "instance_id": inst.instance_id,
                    "hostname": description.get("hostname", ""),
                    "pid": description.get("pid", 0),
                    "version": description.get("version", ""),
                    "started_at_ms": started,
                    "uptime_seconds": max(0, (now - started) // 1000),
                    "is_online": inst.online,
                    "inbox_length": inbox_length,
                    "inbox_pending": inbox_pending,
                    "dlq_length": 0,
                    "nodes_owned": sum(1 for v in views if v.online and v.instance == inst.instance_id),
                    "sessions_owned": (
                        len(scheduler.sessions)
                        if inst.instance_id == scheduler.instance_id
                        else description.get("sessions", 0)
                    ),
                }
            )
        node_rows = []
        for v in views:
            types = {str(c.get("type")): bool(c.get("ready")) for c in v.capabilities}
            node_rows.append(
                {
                    "node_id": v.id,
                    "platform": "",
                    "online": v.online,
                    "status": v.status if v.online else "offline",
                    "cpu_usage": _float(v.usage.get("cpu_percent")),
                    "gpu_usage": v.usage.get("gpu_percent"),
                    "memory_usage": _float(v.usage.get("mem_percent")),
                    "current_jobs": v.inflight,
                    "max_concurrent_jobs": v.capacity,
                    "last_heartbeat": v.last_heartbeat_ms,
                    "services": [
                        {
                            "service_id": s.get("service_id", ""),
                            "service_type": str(s.get("type", "")).capitalize(),
                            "status": str(s.get("status", "")).capitalize(),
                        }
                        for s in v.services
                    ],
                    "capabilities": [
                        {"service_type": t.capitalize(), "ready": ready, "reason": None, "ready_impl_ids": None}
                        for t, ready in types.items()
                    ],
                }
            )
        ready = sum(1 for v in views if v.online and {"asr", "nmt", "tts"} <= v.running_types())
        rooms, members = await scheduler.store.room_counts()
        return JSONResponse(
            {
                "instances": instances,
                "total_instances": len(instances),
                "online_instances": sum(1 for i in instances if i["is_online"]),
                "total_nodes": len(views),
                "online_nodes": sum(1 for v in views if v.online),
                "ready_nodes": ready,
                "total_sessions": sum(int(i["sessions_owned"] or 0) for i in instances),
                "total_pending": sum(int(i["inbox_pending"]) for i in instances),
                "total_dlq": 0,
                "redis_key_prefix": "",
                "total_rooms": rooms,  # rooms and their members: an extension (§18.1: additive)
                "total_room_members": members,
                "nodes": node_rows,
            }
        )

    return [
        Route("/api/v1/stats", store_guarded(scheduler, stats)),
        Route("/api/v1/cluster", store_guarded(scheduler, cluster)),
    ]
