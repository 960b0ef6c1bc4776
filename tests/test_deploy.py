"""deploy/: the Grafana dashboard and the Prometheus alert rules use exactly the names /metrics exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import StartDragoman
from peers import LinguaNode

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
NAME = re.compile(r"\bdragoman_[a-z_]+\b")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [str(rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


async def test_every_name_in_deploy_is_exported(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http) as http:
        await node.start()  # the per-pair gauges have a sample once a node serves a pair
        text = (await http.get("/metrics")).text
    exported = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    used = {name for expr in dashboard_exprs() + alert_exprs() for name in NAME.findall(expr)}
    assert used and used <= exported, used - exported
    # Every metric Dragoman exports is on the dashboard or in an alert (none is forgotten).
    bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in exported if n.startswith("dragoman_")}
    used_bases = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert bases - used_bases <= {
        "dragoman_sessions",
        "dragoman_nodes",
        "dragoman_jobs_created_total",
        "dragoman_jobs_dispatched_total",
    }, bases - used_bases
