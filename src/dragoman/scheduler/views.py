"""Read-only HTTP views of the real state: ``/api/v1/stats`` (§16.2) and ``/api/v1/cluster`` (§16.3).

Nodes and instances are read from the store when asked for (a fresh fleet snapshot), so every instance
shows the same node set (B20). Sessions are counted per instance (each announces its count with its presence).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dragoman.langs import normalize
from dragoman.scheduler.fleet import Fleet, NodeView
from dragoman.scheduler.http_api import store_guarded
from dragoman.scheduler.instance import Scheduler

# A node is ready when it runs these (§16.3).
READY_TYPES = {"asr", "nmt", "tts"}


def _float(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _reported_services(views: list[NodeView]) -> list[dict[str, Any]]:
    """The services the nodes report installed, one entry per service id (no catalogue: what runs)."""
    services: dict[str, dict[str, Any]] = {}
    for view in views:
        for s in view.services:
            service_id = str(s.get("service_id") or s.get("type") or "")
            if not service_id:
                continue
            entry = services.setdefault(
                service_id,
                {
                    "service_id": service_id,
                    "name": str(s.get("name") or service_id),
                    "latest_version": "",
                    "variants": [],
                },
            )
            version = str(s.get("version") or "")
            if version and version > entry["latest_version"]:
                entry["latest_version"] = version
    return sorted(services.values(), key=lambda e: e["service_id"])


def routes(scheduler: Scheduler, fleet: Fleet) -> list[Route]:
    async def stats(request: Request) -> Response:
        views = [v for v in (await fleet.snapshot(0)).nodes if v.online]
        languages: Counter[str] = Counter()
        usage: dict[str, dict[str, int]] = {}
        for actor in scheduler.sessions.values():
            for role, lang in (("as_source", actor.init.src_lang), ("as_target", actor.init.tgt_lang)):
                if normalize(lang) == "auto":  # detected per utterance: not a language anyone speaks
                    continue
                entry = usage.setdefault(lang, {"as_source": 0, "as_target": 0, "total": 0})
                entry[role] += 1
                entry["total"] += 1
                languages[lang] += 1
        type_counts: Counter[str] = Counter()
        in_use: Counter[str] = Counter()
        for view in views:
            type_counts.update(view.running_types())
            if view.inflight:
                in_use.update(view.running_types())
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
        services = _reported_services(views)
        rooms, members = await scheduler.store.room_counts()
        body = {
            "web_clients": {
                "active_users": len(scheduler.sessions),
                "top_languages": [{"language": k, "count": v} for k, v in languages.most_common(10)],
                "language_usage": usage,
            },
            "nodes": {
                "connected_nodes": len(views),
                "type_node_counts": dict(type_counts),
                "available_services": services,
                "available_models": [],
                "total_services": len(services),
                "type_in_use_counts": dict(in_use),
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
        snap = await fleet.snapshot(0)
        instances = [
            {
                "instance_id": inst.instance_id,
                "hostname": inst.hostname,
                "pid": inst.pid,
                "version": inst.version,
                "started_at_ms": inst.started_at_ms,
                "uptime_seconds": max(0, (snap.taken_ms - inst.started_at_ms) // 1000),
                "is_online": inst.online,
                "inbox_length": inst.inbox_length,
                "inbox_pending": inst.inbox_pending,
                "dlq_length": 0,
                "nodes_owned": inst.nodes_owned,
                "sessions_owned": inst.sessions,
            }
            for inst in snap.instances
        ]
        node_rows = [
            {
                "node_id": v.id,
                "platform": str(v.info.get("platform") or ""),
                "online": v.online,
                "status": v.status,
                "instance": v.instance,
                "language_capabilities": {f"{kind}_languages": langs for kind, langs in v.languages.items()},
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
                    for t, ready in v.ready_types().items()
                ],
            }
            for v in snap.nodes
        ]
        ready = sum(1 for v in snap.nodes if v.online and v.running_types() >= READY_TYPES)
        return JSONResponse(
            {
                "instances": instances,
                "total_instances": len(instances),
                "online_instances": sum(1 for i in instances if i["is_online"]),
                "total_nodes": len(snap.nodes),
                "online_nodes": sum(1 for v in snap.nodes if v.online),
                "ready_nodes": ready,
                "total_sessions": sum(inst.sessions for inst in snap.instances),
                "total_pending": sum(inst.inbox_pending for inst in snap.instances),
                "total_dlq": 0,
                "redis_key_prefix": scheduler.settings.key_prefix,
                "total_rooms": snap.rooms,  # rooms and their members: an extension (§18.1: additive)
                "total_room_members": snap.room_members,
                "nodes": node_rows,
            }
        )

    return [
        Route("/api/v1/stats", store_guarded(scheduler, stats)),
        Route("/api/v1/cluster", store_guarded(scheduler, cluster)),
    ]
