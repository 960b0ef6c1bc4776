"""What one utterance costs the store: commands and script time per utterance (create_job + complete_job),
by the number of languages a node serves and by the number of registered nodes; and, on a 3-master Valkey
Cluster, how a load run's commands split over the masters with one cell and with many.

Runs real valkey-servers on loopback (the embedded one, and a 3-master Cluster it starts itself) and calls the
store directly, as an instance does: sessions with a window of jobs in flight, each job created, given to
the least-loaded node, and completed by it. Counts come from ``INFO commandstats`` deltas (commands run inside
scripts included; the EVALSHA calls themselves and the benchmark's own INFO calls excluded), script time
from ``cmdstat_evalsha`` (each script's wall time inside the server). Needs the test extra (tests/cluster.py).

    python benchmarks/store_cost.py [--utterances 2000] [--cluster-utterances 12000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis.asyncio as redis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dragoman.config import Settings
from dragoman.langs import node_pairs
from dragoman.scheduler.store import JobSpec, Store, assigned_node
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store.store import connect

from cluster import ValkeyCluster

LANGS = ["zh", "en", "ja", "ko", "de", "fr", "es", "it", "pt", "ru", "ar", "hi", "vi", "th"]
console = Console(stderr=True)


async def commandstats(clients: list[redis.Redis]) -> list[dict[str, tuple[int, int]]]:
    stats = []
    for client in clients:
        info = await client.info("commandstats")
        stats.append({name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for name, v in info.items()})
    return stats


def delta(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(commands, script µs) between two snapshots of one server."""
    skip = {"evalsha", "info", "config|resetstat", "config", "ping", "cluster|slots", "cluster|shards", "script|load"}
    calls = sum(c - before.get(name, (0, 0))[0] for name, (c, _) in after.items() if name not in skip)
    script = after.get("evalsha", (0, 0))[1] - before.get("evalsha", (0, 0))[1]
    return calls, script


async def register(store: Store, nodes: int, langs: list[str], cap: int) -> list[str]:
    pairs = node_pairs(langs, langs)
    ids = [f"node-{i:05d}" for i in range(nodes)]

    async def one(node: str) -> None:
        await store.register_node(node, f"conn-{node}", "bench", cap, b"{}")
        reply = await store.heartbeat_node(node, f"conn-{node}", pairs, cap, b"{}", drain=8)
        assert reply.ok

    for start in range(0, nodes, 200):
        await asyncio.gather(*(one(n) for n in ids[start : start + 200]))
    return ids


async def load(store: Store, utterances: int, sessions: int, window: int, langs: list[str]) -> float:
    """Create and complete ``utterances`` jobs from ``sessions`` sessions, ``window`` in flight per session.
    Returns the wall time."""
    pair = f"{langs[0]}:{langs[1]}"
    last_node: dict[str, str] = {}
    per_session = utterances // sessions

    async def session(name: str) -> None:
        in_flight: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def finish() -> None:
            job_id, node = await in_flight.get()
            reply = await store.complete_job(job_id, node, 1, "completed", '{"type":"job_result"}', 0, drain=8)
            assert reply.verdict == "accepted", reply

        for index in range(per_session):
            if in_flight.qsize() >= window:
                await finish()
            spec = JobSpec(
                session=name,
                index=index,
                tgt=langs[1],
                job_id=f"job-{uuid.uuid4()}",
                pair=pair,
                pair2="",
                turn=str(uuid.uuid4()),
                trace="t",
                owner="bench",
                body=b',"audio":"' + b"A" * 2000 + b'"}',
                result_ttl_ms=60_000,
                prefer=(last_node[name],) if name in last_node else (),
            )
            created = await store.create_job(spec)
            node = assigned_node(created.actions, created.job_id)
            assert node is not None, "every job is placed at once (the fleet has room)"
            last_node[name] = node
            await in_flight.put((created.job_id, node))
        while not in_flight.empty():
            await finish()

    started = time.perf_counter()
    await asyncio.gather(*(session(f"s-{uuid.uuid4().hex[:12]}") for _ in range(sessions)))
    return time.perf_counter() - started


async def measure(
    url: str, servers: list[redis.Redis], cells: int, nodes: int, langs: list[str], args: Any
) -> dict[str, Any]:
    settings = Settings(key_prefix=f"cost-{uuid.uuid4().hex[:8]}", cells=cells, pending_timeout_ms=600_000)
    store = Store(settings, url)
    await store.open()
    try:
        await register(store, nodes, langs, cap=max(4, 4 * args.cluster_sessions * args.window // nodes + 1))
        before = await commandstats(servers)
        utterances = args.utterances if len(servers) == 1 else args.cluster_utterances
        sessions = args.sessions if len(servers) == 1 else args.cluster_sessions
        wall = await load(store, utterances, sessions, args.window, langs)
        after = await commandstats(servers)
    finally:
        await store.close()
    per_server = [delta(b, a) for b, a in zip(before, after, strict=True)]
    done = utterances // sessions * sessions
    commands = sum(c for c, _ in per_server)
    return {
        "languages": len(langs),
        "nodes": nodes,
        "cells": cells,
        "utterances": done,
        "commands_per_utterance": commands / done,
        "script_us_per_utterance": sum(s for _, s in per_server) / done,
        "utterances_per_s": done / wall,
        "share_per_master": [c / commands for c, _ in per_server] if len(servers) > 1 else [1.0],
    }


async def main(args: argparse.Namespace) -> None:
    results = []
    embedded = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-cost-"))
    url = await embedded.start()
    probe = connect(url, 4, 5.0)
    try:
        for n_langs in (2, 6, 14):
            console.log(f"single server: 10 nodes of {n_langs} languages")
            results.append(await measure(url, [probe], 1, 10, LANGS[:n_langs], args))
        for nodes in (1_000, 10_000):
            console.log(f"single server: {nodes:,} nodes of 2 languages")
            results.append(await measure(url, [probe], 1, nodes, LANGS[:2], args))
    finally:
        await probe.aclose()
        await embedded.stop()
    if not args.no_cluster:
        async with ValkeyCluster() as cluster:
            masters = [redis.Redis(host="127.0.0.1", port=n.port) for n in cluster.nodes]
            try:
                for cells in (1, 12):
                    console.log(f"3-master cluster: {cells} cell(s), 48 nodes of 2 languages")
                    results.append(await measure(cluster.url, masters, cells, 48, LANGS[:2], args))
            finally:
                for m in masters:
                    await m.aclose()
    table = Table(title="store cost per utterance (create_job + complete_job)")
    for column in ("server", "cells", "languages", "nodes", "commands", "script µs", "utt/s", "share per master"):
        table.add_column(column, justify="right")
    for r in results:
        shares = " / ".join(f"{s:.0%}" for s in r["share_per_master"])
        table.add_row(
            "cluster" if len(r["share_per_master"]) > 1 else "single",
            str(r["cells"]),
            str(r["languages"]),
            f"{r['nodes']:,}",
            f"{r['commands_per_utterance']:.1f}",
            f"{r['script_us_per_utterance']:.0f}",
            f"{r['utterances_per_s']:,.0f}",
            shares,
        )
    Console().print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=2000, help="per single-server run (default 2000)")
    parser.add_argument("--cluster-utterances", type=int, default=12000, help="per cluster run (default 12000)")
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    parser.add_argument("--cluster-sessions", type=int, default=240, help="concurrent sessions on the cluster (240)")
    parser.add_argument("--window", type=int, default=2, help="jobs in flight per session (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration; the median is shown (3)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the cluster runs")
    asyncio.run(main(parser.parse_args()))
