"""What an operator looks at: ``/metrics``, the live dashboard (``/dashboard`` and its event stream), and
job and session traces (``/api/v1/jobs/{id}/trace``, ``/api/v1/sessions/{id}/trace``)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from dragoman import __version__
from dragoman.scheduler import metrics
from dragoman.scheduler.fleet import Fleet, Snapshot
from dragoman.scheduler.http_api import store_guarded
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.store_errors import store_unavailable
from dragoman.scheduler.traces import timeline

log = logging.getLogger(__name__)

UPDATE_INTERVAL_S = 0.5  # the dashboard's updates: two a second
STREAM_MAX_S = 60  # an event stream ends after this (the browser reconnects at once): no response lasts forever
NODES_PER_PAGE = 50  # the dashboard lists nodes a page at a time; the rest is counted
PAIRS_SHOWN = 100
CHART_WINDOW_S = 300  # the charts show the last five minutes
CHART_STEP_S = 5
STATIC_FILES = {
    "dashboard.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}

INDEX_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Dragoman</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body style="font-family:sans-serif">
<h1>Dragoman {version}</h1><p>Instance {instance}</p><ul>
<li><a href="/dashboard">Dashboard</a> (live)</li><li><a href="/api/v1/cluster">Cluster</a> (JSON)</li>
<li><a href="/api/v1/stats">Stats</a> (JSON)</li><li><a href="/metrics">Metrics</a> (Prometheus)</li>
<li><a href="/openapi.json">OpenAPI</a></li><li><a href="/health">Health</a></li></ul></body></html>
"""


class RecentErrors(logging.Handler):
    """The last warnings and errors this instance logged, for the dashboard."""

    def __init__(self, size: int = 50) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[dict[str, Any]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(
            {
                "t": int(record.created * 1000),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage()[:300],
            }
        )


RECENT_ERRORS = RecentErrors()
logging.getLogger("dragoman").addHandler(RECENT_ERRORS)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def chart_series(now: float) -> dict[str, Any]:
    """Throughput by outcome and latency percentiles, in CHART_STEP_S buckets over the last CHART_WINDOW_S
    (this instance's deliveries)."""
    buckets = CHART_WINDOW_S // CHART_STEP_S
    start = now - CHART_WINDOW_S
    counts = {outcome: [0] * buckets for outcome in metrics.OUTCOMES}
    result_s: list[list[float]] = [[] for _ in range(buckets)]
    dispatch_s: list[list[float]] = [[] for _ in range(buckets)]
    for t, outcome, seconds in list(metrics.RECENT_RESULTS):
        if t >= start:
            i = min(buckets - 1, int((t - start) // CHART_STEP_S))
            counts[outcome][i] += 1
            result_s[i].append(seconds)
    for t, seconds in list(metrics.RECENT_DISPATCHES):
        if t >= start:
            dispatch_s[min(buckets - 1, int((t - start) // CHART_STEP_S))].append(seconds)
    return {
        "step_s": CHART_STEP_S,
        "end_ms": int(now * 1000),
        "per_second": {o: [c / CHART_STEP_S for c in series] for o, series in counts.items()},
        "result_p50_s": [_percentile(b, 0.5) for b in result_s],
        "result_p95_s": [_percentile(b, 0.95) for b in result_s],
        "dispatch_p95_s": [_percentile(b, 0.95) for b in dispatch_s],
    }


def dashboard_state(scheduler: Scheduler, snap: Snapshot, page: int, node_filter: str) -> dict[str, Any]:
    """One update of the dashboard: the fleet aggregated, one page of nodes, the charts and recent events."""
    nodes = sorted(snap.nodes, key=lambda n: (not n.online, n.id))
    if node_filter:
        nodes = [n for n in nodes if node_filter in n.id or any(node_filter == p for p in n.pairs)]
    pages = max(1, -(-len(nodes) // NODES_PER_PAGE))
    page = min(max(page, 0), pages - 1)
    online = [n for n in snap.nodes if n.online]
    pairs = sorted(snap.pairs.values(), key=lambda v: (-v.waiting_jobs, -v.eligible_nodes, v.pair))
    now = time.time()
    return {
        "taken_ms": snap.taken_ms,
        "store_ok": True,
        "version": __version__,
        "instance_id": scheduler.instance_id,
        "instances": [
            {**inst.__dict__, "uptime_s": max(0, (snap.taken_ms - inst.started_at_ms) // 1000)}
            for inst in snap.instances
        ],
        "totals": {
            "nodes": len(snap.nodes),
            "online_nodes": len(online),
            "by_status": snap.nodes_by_status(),
            "capacity": sum(n.capacity for n in online),
            "inflight": sum(n.inflight for n in online),
            "free": sum(n.free for n in online),
            "waiting": sum(v.waiting_jobs for v in snap.pairs.values()),
            "sessions": sum(i.sessions for i in snap.instances),
            "pairs": len(snap.pairs),
            "rooms": snap.rooms,
            "room_members": snap.room_members,
        },
        "nodes": {
            "page": page,
            "pages": pages,
            "matching": len(nodes),
            "rows": [n.row() for n in nodes[page * NODES_PER_PAGE : (page + 1) * NODES_PER_PAGE]],
        },
        "pairs": [v.__dict__ for v in pairs[:PAIRS_SHOWN]],
        "pairs_hidden": max(0, len(pairs) - PAIRS_SHOWN),
        "charts": chart_series(now),
        "errors": list(RECENT_ERRORS.lines)[-20:][::-1],
        "failovers": list(metrics.RECENT_FAILOVERS)[-20:][::-1],
        "jobs": [
            {"t": t, "job_id": job_id, "state": state, "seconds": round(seconds, 3)}
            for t, job_id, state, seconds in list(metrics.RECENT_JOBS)[-20:][::-1]
        ],
    }


def routes(scheduler: Scheduler, fleet: Fleet) -> list[Route]:
    store = scheduler.store

    async def metrics_text(request: Request) -> Response:
        try:
            await fleet.snapshot(0)
        except Exception as exc:  # this instance's own figures are still worth scraping
            if not store_unavailable(exc):
                raise
            scheduler.store_failed(exc)
        body = metrics.render() + fleet.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(INDEX_PAGE.format(version=__version__, instance=scheduler.instance_id))

    async def dashboard(request: Request) -> Response:
        return static_file("dashboard.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found", status_code=404)
        return static_file(name)

    async def events(request: Request) -> Response:
        try:
            page = int(request.query_params.get("page", "0"))
        except ValueError:
            page = 0
        node_filter = request.query_params.get("node", "")[:100]

        async def stream() -> AsyncIterator[str]:
            yield "retry: 500\n\n"
            for _ in range(int(STREAM_MAX_S / UPDATE_INTERVAL_S)):
                if getattr(request.app.state, "shutting_down", False):
                    return
                try:
                    state = dashboard_state(scheduler, await fleet.snapshot(), page, node_filter)
                except Exception as exc:
                    if not store_unavailable(exc):
                        raise
                    scheduler.store_failed(exc)
                    state = {
                        "store_ok": False,
                        "error": f"store unavailable: {exc}",
                        "taken_ms": int(time.time() * 1000),
                    }
                yield f"data: {json.dumps(state, separators=(',', ':'))}\n\n"
                await asyncio.sleep(UPDATE_INTERVAL_S)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    def not_found(message: str) -> Response:
        return JSONResponse({"error": "not_found", "message": message}, status_code=404)

    async def job_trace(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        steps = await store.job_trace(job_id)
        if not steps:
            return not_found(f"no trace of job {job_id}")
        return JSONResponse({"job_id": job_id, **timeline(steps)})

    async def utterances(session_id: str, trace_id: str | None = None) -> list[dict[str, Any]]:
        """The timeline of each utterance of the session (those carrying ``trace_id``, if given)."""
        found = []
        for cut in await store.session_trace(session_id):
            job_id = str(cut.get("job_id", ""))
            job = {"utterance_index": cut.get("index"), "job_id": job_id, **timeline(await store.job_trace(job_id))}
            if trace_id is None or job.get("trace_id") == trace_id:
                found.append(job)
        return found

    async def session_trace(request: Request) -> Response:
        session_id = request.path_params["session_id"]
        found = await utterances(session_id)
        if not found:
            return not_found(f"no trace of session {session_id}")
        return JSONResponse({"session_id": session_id, "utterances": found})

    async def trace_by_id(request: Request) -> Response:
        trace_id = request.path_params["trace_id"]
        session_id = await store.trace_session(trace_id)
        found = await utterances(session_id, trace_id) if session_id else []
        if not found:
            return not_found(f"no utterance with trace {trace_id}")
        return JSONResponse({"session_id": session_id, "trace_id": trace_id, "utterances": found})

    return [
        Route("/", index),
        Route("/metrics", metrics_text),
        Route("/dashboard", dashboard),
        Route("/dashboard/events", events),
        Route("/static/{name}", static),
        Route("/api/v1/jobs/{job_id}/trace", store_guarded(scheduler, job_trace)),
        Route("/api/v1/sessions/{session_id}/trace", store_guarded(scheduler, session_trace)),
        Route("/api/v1/traces/{trace_id}", store_guarded(scheduler, trace_by_id)),
    ]


def static_file(name: str) -> Response:
    body = (resources.files("dragoman.scheduler") / "static" / name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})
