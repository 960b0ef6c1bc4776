"""What an operator reads: /metrics (parsed with prometheus_client's own parser), the cluster and stats
views, the OpenAPI document (validated), and the log lines of a real ``dragoman serve`` in JSON."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from conftest import Running, StartDragoman, free_port
from peers import LinguaNode, LinguaWebClient, voiced_chunk

# Labels that may appear: bounded sets (never a session, job or node).
BOUNDED_LABELS = {
    "reason",
    "outcome",
    "why",
    "socket",
    "script",
    "status",
    "pair",
    "instance",
    "event",
    "limit",
    "path",
    "le",
}


async def scrape(d: Running) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=d.http) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {sample_name} {labels}")


async def test_metrics_parse_with_counters_at_zero_and_fleet_gauges(dragoman: StartDragoman) -> None:
    d = await dragoman()
    before = await scrape(d)
    # Exported before their first increment, every known label value (this process counts for every
    # instance the tests start: the figures are compared before and after).
    assert value(before, "dragoman_failovers_total") >= 0
    for outcome in ("completed", "empty", "failed", "timed_out"):
        assert value(before, "dragoman_jobs_resolved_total", outcome=outcome) >= 0
        assert value(before, "dragoman_result_seconds_count", outcome=outcome) >= 0
    assert value(before, "dragoman_store_script_seconds_count", script="complete_job") >= 0
    assert before["dragoman_dispatch_seconds"].type == "histogram"
    assert before["dragoman_node_wait_seconds"].type == "histogram"

    async with LinguaNode(d.node_url, langs=("zh", "en")) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        await node.result(job)
        await client.outcomes(1)
        after = await scrape(d)

        def grew(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        assert grew("dragoman_jobs_resolved_total", outcome="completed") == 1
        assert grew("dragoman_result_seconds_count", outcome="completed") == 1
        assert grew("dragoman_dispatch_seconds_count") == 1
        assert grew("dragoman_node_wait_seconds_count") == 1
        assert grew("dragoman_store_script_seconds_count", script="complete_job") >= 1
        assert grew("dragoman_store_script_seconds_count", script="create_job") >= 1
        # Fleet-wide figures, from the store.
        assert value(after, "dragoman_pair_eligible_nodes", pair="zh:en") == 1
        assert value(after, "dragoman_pair_free_capacity", pair="zh:en") == d.settings.default_node_capacity
        assert value(after, "dragoman_pair_waiting_jobs", pair="zh:en") == 0
        assert value(after, "dragoman_fleet_nodes", status="ready") == 1
        assert value(after, "dragoman_instance_nodes", instance=d.scheduler.instance_id) == 1
        assert value(after, "dragoman_instance_up", instance=d.scheduler.instance_id) == 1
        for family in after.values():
            for sample in family.samples:
                assert set(sample.labels) <= BOUNDED_LABELS, sample


async def test_waiting_jobs_are_counted_per_pair(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=30_000)
    async with LinguaNode(d.node_url, langs=("zh", "en"), max_concurrent_jobs=1) as node:
        await node.start()
        async with httpx.AsyncClient(base_url=d.http) as http:
            for _ in range(3):  # one runs, two wait
                body = {"src_lang": "zh", "tgt_lang": "en", "audio": "AAAA"}
                assert (await http.post("/api/v1/jobs", json=body)).status_code == 202
        await node.next_job()
        families = await scrape(d)
        assert value(families, "dragoman_pair_waiting_jobs", pair="zh:en") == 2
        assert value(families, "dragoman_pair_free_capacity", pair="zh:en") == 0


async def test_cluster_view_shows_languages_readiness_and_key_prefix(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, langs=("zh", "en", "ja")) as node, httpx.AsyncClient(base_url=d.http) as http:
        node_id = await node.start()
        view = (await http.get("/api/v1/cluster")).json()
        assert view["redis_key_prefix"] == d.settings.key_prefix
        [row] = [n for n in view["nodes"] if n["node_id"] == node_id]
        assert row["language_capabilities"]["asr_languages"] == ["zh", "en", "ja"]
        assert row["language_capabilities"]["semantic_languages"] == ["zh", "en", "ja"]
        assert row["instance"] == d.scheduler.instance_id
        reported = {c["type"].capitalize(): c["ready"] for c in node.capability_by_type()}
        assert row["online"] and {c["service_type"]: c["ready"] for c in row["capabilities"]} == reported
        assert any(reported.values())
        # Readiness follows the node's status: a node whose liveness ran out is ready for nothing.
        keys = d.store.keys
        await d.store.client.hset(keys.node(keys.node_cell(node_id), node_id), "hb_ms", 1)
        row = next(n for n in (await http.get("/api/v1/cluster")).json()["nodes"] if n["node_id"] == node_id)
        assert row["status"] == "offline" and not any(c["ready"] for c in row["capabilities"])


async def test_stats_count_reported_services_and_never_auto_as_a_language(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with (
        LinguaNode(d.node_url) as node,
        LinguaWebClient(d.session_url) as client,
        httpx.AsyncClient(base_url=d.http) as http,
    ):
        await node.start()
        await client.init()  # two-way: src_lang "auto"
        stats = (await http.get("/api/v1/stats")).json()
    languages = stats["web_clients"]["language_usage"]
    assert "auto" not in languages and languages["en"]["as_target"] == 1
    assert "auto" not in [t["language"] for t in stats["web_clients"]["top_languages"]]
    reported = {s["service_id"] for s in node.services if s.get("status") == "running"}
    assert reported and reported <= {s["service_id"] for s in stats["nodes"]["available_services"]}
    assert stats["nodes"]["total_services"] == len(stats["nodes"]["available_services"])


async def test_openapi_document_is_valid_and_complete(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http) as http:
        doc = (await http.get("/openapi.json")).json()
    validate(doc)
    post = doc["paths"]["/api/v1/jobs"]["post"]
    assert set(post["responses"]) == {"202", "400", "413", "422", "503"}
    assert set(post["responses"]["202"]["headers"]) == {"Location", "Idempotent-Replayed"}
    get = doc["paths"]["/api/v1/jobs/{job_id}"]["get"]
    assert set(get["responses"]) == {"200", "404", "422", "503"}
    wait = next(p for p in get["parameters"] if p["name"] == "wait")["schema"]
    assert (wait["minimum"], wait["maximum"]) == (0, 60)
    schemas = doc["components"]["schemas"]
    assert set(schemas["JobStatus"]["properties"]["status"]["enum"]) >= {"pending", "dispatched", "completed"}
    assert schemas["JobResultBody"]["required"] == ["text_asr", "text_translated", "tts_audio", "tts_format"]
    assert "/api/v1/jobs/{job_id}/trace" in doc["paths"] and "/api/v1/sessions/{session_id}/trace" in doc["paths"]


@pytest.mark.parametrize("access_log", [True, False], ids=["access-log", "no-access-log"])
async def test_serve_logs_json_lines_with_ids(tmp_path: Path, access_log: bool) -> None:
    port = free_port()
    env = os.environ | {"DRAGOMAN_LOG_FORMAT": "json", "DRAGOMAN_ACCESS_LOG": str(access_log).lower()}
    process = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(200):
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            async with LinguaNode(f"ws://127.0.0.1:{port}/ws/node") as node:
                node_id = await node.start()
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=20)
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= set(line) for line in lines)
    registered = [
        line for line in lines if "registered" in line["message"] and line["logger"] == "dragoman.scheduler.nodes"
    ]
    assert registered and registered[0]["node_id"] == node_id
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's lines, same format
    per_connection = [line for line in lines if '"GET /health' in line["message"] or "[accepted]" in line["message"]]
    assert bool(per_connection) == access_log  # the access log: requests and sockets, only when asked for


async def test_rooms_are_counted_fleet_wide(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as speaker:
        await speaker.init(two_way=False)
        await speaker.room_create(preferred_lang="zh")
        families = await scrape(d)
        assert value(families, "dragoman_fleet_rooms") == 1
        assert value(families, "dragoman_fleet_room_members") == 1
        assert value(families, "dragoman_room_events_total", event="joined") >= 0  # exported before any join
