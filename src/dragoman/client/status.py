"""``dragoman status``: the instances, nodes and sessions of a scheduler, from ``GET /api/v1/cluster``."""

from __future__ import annotations

import json
import time
from typing import Any

from dragoman.client.cluster import ClusterInfo, NodeInfo, get_cluster
from dragoman.client.http import ApiClient
from dragoman.errors import ApiError


async def fetch_status(
    url: str, timeout: float = 10.0, key: str | None = None, ca_file: str | None = None
) -> tuple[ClusterInfo, Any]:
    """The cluster view of the scheduler at ``url``; a 404 is explained (older instances lack the endpoint)."""
    async with ApiClient(url, timeout=timeout, key=key, ca_file=ca_file) as api:
        try:
            return await get_cluster(api)
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(
                    404,
                    {"error": "not_found", "message": "this scheduler has no /api/v1/cluster endpoint"},
                    exc.method,
                    exc.url,
                ) from None
            raise


def print_json(raw: Any) -> None:
    print(json.dumps(raw, ensure_ascii=False, indent=2))


def render(cluster: ClusterInfo, now_ms: int | None = None) -> None:
    """Print the cluster as rich tables: a summary line, the instances, the nodes."""
    from rich.console import Console
    from rich.table import Table

    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    console = Console(highlight=False)
    console.print(
        f"[bold]{cluster.online_instances}/{cluster.total_instances}[/bold] "
        f"{_plural(cluster.total_instances, 'instance')} online · "
        f"[bold]{cluster.online_nodes}/{cluster.total_nodes}[/bold] {_plural(cluster.total_nodes, 'node')} online, "
        f"[bold]{cluster.ready_nodes}[/bold] ready · "
        f"[bold]{cluster.total_sessions}[/bold] {_plural(cluster.total_sessions, 'session')}"
    )

    instances = Table(title="Instances", title_justify="left")
    for column in ("instance", "host", "version", "up", "online", "nodes", "sessions"):
        instances.add_column(column, justify="right" if column in ("nodes", "sessions", "up") else "left")
    for inst in cluster.instances:
        instances.add_row(
            inst.instance_id,
            inst.hostname,
            inst.version,
            _duration(inst.uptime_seconds),
            _yes(inst.is_online),
            str(inst.nodes_owned),
            str(inst.sessions_owned),
        )
    console.print(instances)

    nodes = Table(title="Nodes", title_justify="left")
    for column in ("node", "status", "languages", "jobs/capacity", "cpu", "gpu", "mem", "services", "last heartbeat"):
        nodes.add_column(column, justify="right" if column in ("jobs/capacity", "cpu", "gpu", "mem") else "left")
    for node in cluster.nodes:
        nodes.add_row(
            node.node_id,
            _status(node),
            ", ".join(node.language_list()) or "[dim]—[/dim]",
            _load(node),
            _percent(node.cpu_usage),
            _percent(node.gpu_usage),
            _percent(node.memory_usage),
            _services(node),
            _heartbeat_age(node.last_heartbeat, now_ms),
        )
    if not cluster.nodes:
        nodes.add_row("[dim]no nodes[/dim]", *[""] * 8)
    console.print(nodes)


def _plural(count: int, noun: str) -> str:
    """The noun for ``count`` of it: 1 node, 0 nodes, 2 nodes."""
    return noun if count == 1 else noun + "s"


def _yes(value: bool) -> str:
    return "[green]yes[/green]" if value else "[red]no[/red]"


_STATUS_COLORS = {"ready": "green", "degraded": "yellow", "draining": "yellow", "registering": "cyan"}


def _status(node: NodeInfo) -> str:
    color = _STATUS_COLORS.get(node.status, "red")
    text = f"[{color}]{node.status or '?'}[/{color}]"
    return text if node.online else f"{text} [red](offline)[/red]"


def _load(node: NodeInfo) -> str:
    if not node.max_concurrent_jobs:
        return f"{node.current_jobs}/?"
    ratio = node.current_jobs / node.max_concurrent_jobs
    color = "green" if ratio < 0.75 else "yellow" if ratio < 1 else "red"
    return f"[{color}]{node.current_jobs}/{node.max_concurrent_jobs}[/{color}]"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _services(node: NodeInfo) -> str:
    running = [s.service_type or s.service_id for s in node.services if s.status.lower() == "running"]
    return ", ".join(running) or "[dim]—[/dim]"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _heartbeat_age(value: Any, now_ms: int) -> str:
    """§16.3 does not type ``last_heartbeat``: epoch ms or s become an age, anything else is shown as is."""
    if isinstance(value, bool) or value is None:
        return "—"
    if isinstance(value, int | float):
        ms = value if value > 1e11 else value * 1000
        return f"{_duration(max(0.0, (now_ms - ms) / 1000))} ago"
    return str(value)
