"""The cluster view, ``GET /api/v1/cluster`` (PROTOCOL.md §16.3): instances, nodes and session counts.

The structs follow §16.3 and are decoded leniently (``strict=False``, every field defaulted), since the
endpoint is an operator's view whose producers — Dragoman, or lingua's scheduler — vary in what they fill in;
a missing number must show as unknown, not fail the whole ``dragoman status``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from dragoman.client.http import ApiClient
from dragoman.errors import ApiError

CLUSTER_PATH = "/api/v1/cluster"


class InstanceInfo(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str = ""
    hostname: str = ""
    pid: int | None = None
    version: str = ""
    started_at_ms: int | None = None
    uptime_seconds: float | None = None
    is_online: bool = True
    inbox_length: int = 0
    inbox_pending: int = 0
    dlq_length: int = 0
    nodes_owned: int = 0
    sessions_owned: int = 0


class ServiceInfo(msgspec.Struct, frozen=True, kw_only=True):
    service_id: str = ""
    service_type: str = ""  # capitalised in this endpoint: "Asr", "Nmt", "Tts", ...
    status: str = ""  # "Running", "Stopped", "Error"


class CapabilityInfo(msgspec.Struct, frozen=True, kw_only=True):
    service_type: str = ""
    ready: bool = False
    reason: str | None = None
    ready_impl_ids: list[str] | None = None


class LanguageInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A node's NodeLanguageCapabilities (§3), if the endpoint adds it (§16.3 itself lists no languages)."""

    asr_languages: list[str] | None = None
    semantic_languages: list[str] | None = None
    tts_languages: list[str] | None = None


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str = ""
    platform: str = ""
    online: bool = False
    status: str = ""
    cpu_usage: float | None = None
    gpu_usage: float | None = None
    memory_usage: float | None = None
    current_jobs: int = 0
    max_concurrent_jobs: int | None = None
    #: Not typed by §16.3: epoch milliseconds, epoch seconds or a timestamp string are all shown.
    last_heartbeat: Any = None
    services: list[ServiceInfo] = msgspec.field(default_factory=list)
    capabilities: list[CapabilityInfo] = msgspec.field(default_factory=list)
    # Not in §16.3; read when an instance adds them (additive extensions, §18.1).
    language_capabilities: LanguageInfo | None = None
    languages: list[str] | None = None

    def language_list(self) -> list[str]:
        """The languages the node serves, as far as the endpoint tells."""
        if self.languages:
            return list(self.languages)
        caps = self.language_capabilities
        if caps is None:
            return []
        seen: dict[str, None] = {}
        for group in (caps.asr_languages, caps.semantic_languages, caps.tts_languages):
            seen.update(dict.fromkeys(group or []))
        return list(seen)


class ClusterInfo(msgspec.Struct, frozen=True, kw_only=True):
    instances: list[InstanceInfo] = msgspec.field(default_factory=list)
    total_instances: int = 0
    online_instances: int = 0
    total_nodes: int = 0
    online_nodes: int = 0
    ready_nodes: int = 0
    total_sessions: int = 0
    total_pending: int = 0
    total_dlq: int = 0
    redis_key_prefix: str = ""
    nodes: list[NodeInfo] = msgspec.field(default_factory=list)


async def get_cluster(api: ApiClient) -> tuple[ClusterInfo, Any]:
    """Fetch the cluster view: the decoded struct and the raw JSON (for ``--json``)."""
    raw = await api.get_json(CLUSTER_PATH)
    try:
        return msgspec.convert(raw, type=ClusterInfo, strict=False), raw
    except msgspec.ValidationError as exc:
        problem = {"error": "unexpected_response", "message": str(exc)}
        raise ApiError(200, problem, "GET", api.base_url + CLUSTER_PATH) from None
