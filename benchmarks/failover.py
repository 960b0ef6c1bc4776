"""Failover under load: utterances stream while node processes are SIGKILLed and replaced.

Starts ``dragoman serve`` (embedded store) and N echo node processes (this script in ``--node`` mode: the node
protocol with a fixed processing delay, logging every job it receives and finishes). Sessions send one-shot
utterances at a steady rate; every ``--kill-every`` seconds a random node is killed with SIGKILL and a new node
process (a new node id, as a restarted lingua node) takes its place. Reports:

- utterances sent, outcomes received (by type), lost and duplicated (both must be 0);
- failover delay: from each kill to the replacement ``job_assign`` (attempt + 1) of each job the node held;
- afterwards: in-flight counts in the store (must all be 0) and job keys without a TTL (must be none).

    python benchmarks/failover.py --utterances 10000 --rate 200 --nodes 4 --kill-every 3
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis.asyncio as redis
from rich.console import Console
from rich.progress import Progress
from websockets.asyncio.client import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- node mode -----------------------------------------------------------------------------------------


async def run_node(url: str, log_path: str, delay_ms: int) -> None:
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - line-buffered, for the whole life of the process
    async with connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "node_register",
                    "node_id": None,
                    "version": "2.0.0",
                    "platform": "linux",
                    "hardware": {"cpu_cores": 1, "memory_gb": 1},
                    "installed_models": [],
                    "capability_by_type": [],
                    "features_supported": {},
                    "accept_public_jobs": True,
                    "language_capabilities": {"asr_languages": ["zh", "en"], "semantic_languages": ["zh", "en"]},
                    "max_concurrent_jobs": 64,
                }
            )
        )
        node_id = json.loads(await ws.recv())["node_id"]
        beat = {
            "type": "node_heartbeat",
            "node_id": node_id,
            "timestamp": 0,
            "resource_usage": {"cpu_percent": 0, "mem_percent": 0, "running_jobs": 0},
            "installed_services": [],
            "capability_by_type": [],
        }
        await ws.send(json.dumps(beat))

        async def answer(job: dict[str, object]) -> None:
            await asyncio.sleep(delay_ms / 1000)
            result = {
                "type": "job_result",
                "job_id": job["job_id"],
                "attempt_id": job["attempt_id"],
                "node_id": node_id,
                "session_id": job["session_id"],
                "utterance_index": job["utterance_index"],
                "success": True,
                "trace_id": job["trace_id"],
                "text_asr": f"echo {job['utterance_index']}",
                "text_translated": f"[en] echo {job['utterance_index']}",
                "tts_audio": "",
                "tts_format": "opus",
            }
            await ws.send(json.dumps(result))
            log.write(f"done {job['job_id']} {job['attempt_id']} {time.time_ns()}\n")

        tasks = set()
        async for raw in ws:
            frame = json.loads(raw)
            if frame.get("type") == "job_assign":
                log.write(f"got {frame['job_id']} {frame['attempt_id']} {time.time_ns()}\n")
                task = asyncio.create_task(answer(frame))
                tasks.add(task)
                task.add_done_callback(tasks.discard)


# -- the run -----------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="dragoman-failover-"))
    port = free_port()
    env = os.environ | {"DRAGOMAN_JOB_TIMEOUT_MS": str(args.job_timeout_ms), "DRAGOMAN_LOG_LEVEL": "warning"}
    server = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--data-dir", str(work / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    store_url = ""
    assert server.stdout is not None
    for line in server.stdout:
        if found := re.search(r"store\s+(\S+)", line):
            store_url = found.group(1)
            break
    node_url = f"ws://127.0.0.1:{port}/ws/node"
    nodes: dict[int, tuple[subprocess.Popen[bytes], int]] = {}  # pid -> (process, index of its log)
    logs: list[Path] = []

    def start_node() -> None:
        log = work / f"node-{len(logs)}.log"
        cmd = [sys.executable, __file__, "--node", node_url, "--log", str(log), "--delay-ms", str(args.delay_ms)]
        proc = subprocess.Popen(cmd)
        nodes[proc.pid] = (proc, len(logs))
        logs.append(log)

    kills: list[tuple[int, int]] = []  # (ns, index of the node's log)
    try:
        for _ in range(args.nodes):
            start_node()
        await asyncio.sleep(1.5)
        outcomes: dict[tuple[str, int], list[str]] = {}
        sent: list[tuple[str, int]] = []
        audio = base64.b64encode(b"\x10\x00" * 3200).decode()  # 200 ms of pcm16
        sockets = []
        for _ in range(args.sessions):
            ws = await connect(f"ws://127.0.0.1:{port}/ws/session", max_size=None)
            await ws.send(
                json.dumps(
                    {
                        "type": "session_init",
                        "client_version": "bench",
                        "platform": "bench",
                        "src_lang": "zh",
                        "tgt_lang": "en",
                    }
                )
            )
            sockets.append((ws, json.loads(await ws.recv())["session_id"]))

        async def receive(ws: object, session_id: str) -> None:
            async for raw in ws:  # type: ignore[attr-defined]
                frame = json.loads(raw)
                if frame["type"] in ("translation_result", "missing_result") or (
                    frame["type"] == "error" and frame.get("code") != "INVALID_MESSAGE"
                ):
                    index = frame.get("utterance_index", -1)
                    outcomes.setdefault((session_id, index), []).append(frame["type"])

        receivers = [asyncio.create_task(receive(ws, sid)) for ws, sid in sockets]

        async def killer() -> None:
            while True:
                await asyncio.sleep(args.kill_every)
                proc, index = nodes.pop(random.choice(list(nodes)))
                kills.append((time.time_ns(), index))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                await asyncio.sleep(0.5)  # a replacement process (a new node id) starts
                start_node()

        killing = asyncio.create_task(killer())
        interval = 1 / args.rate
        start = time.monotonic()
        per_session = -(-args.utterances // args.sessions)
        count = 0
        progress = Progress(console=Console(stderr=True), transient=True)
        progress.start()
        sending = progress.add_task("utterances sent", total=args.utterances)
        for index in range(per_session):
            for ws, session_id in sockets:
                if count >= args.utterances:
                    break
                await asyncio.sleep(max(0.0, start + count * interval - time.monotonic()))
                frame = {
                    "type": "utterance",
                    "session_id": session_id,
                    "utterance_index": index,
                    "manual_cut": True,
                    "src_lang": "zh",
                    "tgt_lang": "en",
                    "audio": audio,
                    "audio_format": "pcm16",
                    "sample_rate": 16000,
                }
                await ws.send(json.dumps(frame))
                sent.append((session_id, index))
                count += 1
                progress.advance(sending)
        killing.cancel()
        answered = progress.add_task("outcomes received", total=len(sent))
        deadline = time.monotonic() + args.job_timeout_ms / 1000 * 4 + 15
        while time.monotonic() < deadline and (done := sum(1 for key in sent if key in outcomes)) < len(sent):
            progress.update(answered, completed=done)
            await asyncio.sleep(0.2)
        progress.stop()
        await asyncio.sleep(1.0)  # late duplicates, if any, would arrive now
        for task in receivers:
            task.cancel()
        for ws, _ in sockets:
            await ws.close()
        await asyncio.sleep(1.0)
        store = redis.Redis.from_url(store_url)
        inflight = {}  # every node record's unresolved attempts (its job set), dead nodes included
        for key in await store.keys("dragoman:{sched:*}:node:*"):
            if not key.endswith(b":jobs"):
                inflight[key.decode().rsplit(":", 1)[-1]] = int(await store.scard(key + b":jobs"))
        no_ttl = [k.decode() for k in await store.keys("dragoman:{sched:*}:job:*") if await store.pttl(k) == -1]
        await store.aclose()
    finally:
        for proc, _ in nodes.values():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        server.send_signal(signal.SIGTERM)
        server.wait(30)

    # Failover delays: each killed node's unfinished jobs, to their next attempt's job_assign anywhere.
    events: dict[int, list[tuple[str, str, int, int]]] = {}
    for i, log in enumerate(logs):
        events[i] = []
        if log.exists():
            for line in log.read_text().splitlines():
                kind, job, attempt, ns = line.split()
                events[i].append((kind, job, int(attempt), int(ns)))
    assigns: dict[tuple[str, int], int] = {}
    for rows in events.values():
        for kind, job, attempt, ns in rows:
            if kind == "got":
                assigns[(job, attempt)] = ns
    delays = []
    for kill_ns, index in kills:
        done = {(job, attempt) for kind, job, attempt, _ in events.get(index, []) if kind == "done"}
        held = [(job, attempt) for kind, job, attempt, ns in events.get(index, []) if kind == "got" and ns < kill_ns]
        for job, attempt in held:
            if (job, attempt) not in done and (job, attempt + 1) in assigns:
                delays.append((assigns[(job, attempt + 1)] - kill_ns) / 1e6)
    delays.sort()

    def pct(q: float) -> float | None:
        return round(delays[min(len(delays) - 1, int(q * len(delays)))], 1) if delays else None

    kinds = Counter(kind for got in outcomes.values() for kind in got[:1])
    return {
        "utterances_sent": len(sent),
        "outcomes_received": sum(len(v) for k, v in outcomes.items() if k in set(sent)),
        "outcome_types": dict(kinds),
        "lost": sum(1 for key in sent if key not in outcomes),
        "duplicated": sum(len(v) - 1 for v in outcomes.values() if len(v) > 1),
        "nodes_killed": len(kills),
        "failed_over_attempts": len(delays),
        "failover_delay_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": delays[-1] if delays else None},
        "inflight_after": inflight,
        "job_keys_without_ttl": no_ttl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="utterances per second in all")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between node kills")
    parser.add_argument("--delay-ms", type=int, default=300, help="each node's processing time per job")
    parser.add_argument("--job-timeout-ms", type=int, default=10_000)
    parser.add_argument("--node", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.node:
        asyncio.run(run_node(args.node, args.log, args.delay_ms))
        return
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
