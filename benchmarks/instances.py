"""Many instances on one store: throughput of one vs two instances, and an instance killed under load.

1. Throughput: the same ``dragoman bench`` load (echo nodes and streaming sessions in worker processes) against
   one instance, then spread over two instances sharing the store.
2. Kill: two instances; ``dragoman node`` agents (echo engine, both URLs) and sessions of the Dragoman client
   library (both URLs, resuming by themselves) send one-shot utterances at a steady rate; instance A is killed
   with SIGKILL halfway. Reports utterances sent, outcomes received, lost and duplicated (both must be 0), and the
   time from the kill until the survivor had taken A over (A gone from ``/api/v1/cluster``).

    python benchmarks/instances.py [--seconds 15] [--rate 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter

import httpx
from rich.console import Console

from dragoman import protocol as p
from dragoman.bench import Plan, run_bench
from dragoman.client import SessionClient, SessionConfig
from dragoman.scheduler.store.embedded import EmbeddedStore


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve(store_url: str, port: int, prefix: str) -> subprocess.Popen[bytes]:
    env = os.environ | {
        "DRAGOMAN_KEY_PREFIX": prefix,
        "DRAGOMAN_LOG_LEVEL": "warning",
        "DRAGOMAN_INSTANCE_TTL_MS": "3000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--redis-url", store_url], env=env
    )


async def healthy(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"instance on port {port} did not start")


async def throughput(store_url: str, plan: Plan) -> dict[str, object]:
    ports = [free_port(), free_port()]
    results = {}
    for count in (1, 2):
        prefix = f"bench{count}"
        procs = [serve(store_url, port, prefix) for port in ports[:count]]
        try:
            await asyncio.gather(*(healthy(port) for port in ports[:count]))
            urls = ",".join(f"ws://127.0.0.1:{port}" for port in ports[:count])
            report = await run_bench(urls, store_url, plan, None)
            figures = ("utterances_sent", "completed", "lost", "duplicated", "utterances_per_s")
            figures += ("finalize_to_job_assign_ms", "finalize_to_translation_result_ms")
            results[f"{count}_instance{'s' if count > 1 else ''}"] = {k: report[k] for k in figures}
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    return results


async def kill(store_url: str, seconds: float, rate: float, sessions: int) -> dict[str, object]:
    port_a, port_b = free_port(), free_port()
    a, b = serve(store_url, port_a, "kill"), serve(store_url, port_b, "kill")
    urls = [f"ws://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_b}"]
    nodes = []
    try:
        await asyncio.gather(healthy(port_a), healthy(port_b))
        for i in range(4):
            order = urls if i % 2 == 0 else urls[::-1]  # half the nodes start on A
            args = ["--engine", "echo", "--langs", "zh,en", "--echo-delay-ms", "200", "--max-jobs", "64"]
            for url in order:
                args += ["--scheduler", f"{url}/ws/node"]
            nodes.append(subprocess.Popen([sys.executable, "-m", "dragoman", "node", *args, "--log-level", "warning"]))
        await asyncio.sleep(2.0)
        clients = [
            SessionClient([f"{u}/ws/session" for u in urls], SessionConfig.one_way("zh", "en")) for _ in range(sessions)
        ]
        for client in clients:
            await client.connect()
        received: dict[tuple[int, int], list[str]] = {}

        async def collect(k: int, client: SessionClient) -> None:
            async for event in client:
                if isinstance(event, p.TranslationResult | p.MissingResult):
                    received.setdefault((k, event.utterance_index), []).append(type(event).__name__)
                elif isinstance(event, p.Error):
                    received.setdefault((k, -1), []).append(f"error {event.code}")

        collectors = [asyncio.create_task(collect(k, c)) for k, c in enumerate(clients)]
        audio = b"\x10\x00" * 3200  # 200 ms of pcm16
        sent: list[tuple[int, int]] = []
        killed_at = 0.0
        start = time.monotonic()
        total = int(seconds * rate)
        for n in range(total):
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            k = n % sessions
            index = n // sessions
            await clients[k].send_utterance(index, audio, audio_format="pcm16", sample_rate=16000)
            sent.append((k, index))
            if n == total // 2:
                a.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                takeover = asyncio.create_task(watch_takeover(port_b, killed_at))
        taken_over_after = await takeover
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(key not in received for key in sent):
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        for task in collectors:
            task.cancel()
        for client in clients:
            await client.abort()
        kinds = Counter(v[0] for key, v in received.items() if key in set(sent))
        return {
            "utterances_sent": len(sent),
            "outcomes_received": sum(len(v) for key, v in received.items() if key in set(sent)),
            "outcome_types": dict(kinds),
            "lost": sum(1 for key in sent if key not in received),
            "duplicated": sum(len(v) - 1 for v in received.values() if len(v) > 1),
            "duplicated_keys": [(k, v) for k, v in received.items() if len(v) > 1][:10],
            "unattributed_errors": len(received.get((-1, -1), [])),
            "takeover_after_kill_s": taken_over_after,
        }
    finally:
        for proc in [*nodes, a, b]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)


async def watch_takeover(port: int, killed_at: float) -> float:
    """Seconds from the kill until the survivor lists one instance only (it took the dead one over)."""
    async with httpx.AsyncClient() as http:
        while True:
            cluster = (await http.get(f"http://127.0.0.1:{port}/api/v1/cluster")).json()
            if cluster["total_instances"] == 1:
                return round(time.monotonic() - killed_at, 2)
            await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> None:
    store = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-instances-"))
    store_url = await store.start()
    try:
        plan = Plan(sessions=40, nodes=4, utterances=400, rate=0.0, duration=args.seconds, window=8, capacity=256)
        console = Console(stderr=True)  # what runs now, on a terminal (the report goes to stdout)
        with console.status(f"throughput, one instance then two: 2 × {args.seconds:g} s of load"):
            report = {"throughput": await throughput(store_url, plan)}
        with console.status(f"an instance killed under load: {args.seconds:g} s"):
            report["instance_killed"] = await kill(store_url, args.seconds, args.rate, sessions=20)
        print(json.dumps(report, indent=2))
    finally:
        await store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=100.0, help="utterances per second in the kill run")
    asyncio.run(main(parser.parse_args()))
