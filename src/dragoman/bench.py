"""``dragoman bench``: a load benchmark of one scheduler instance.

Echo nodes (answering with the ``echo`` test engine) and streaming sessions run in worker processes of their
own, so that the scheduler is measured, not the load generator. Each utterance is two web-client chunks of
voiced Plan A audio (520 ms) with ``is_final`` on the second: the finalizing chunk. Figures:

- utterances per second completed, and errors / lost / duplicated outcomes (lost and duplicated must be 0);
- latency from sending the finalizing chunk to the node receiving ``job_assign``, and to the client receiving
  ``translation_result`` (p50/p90/p99/max; same machine, one clock);
- store commands per utterance, from ``INFO commandstats`` deltas (the ``evalsha`` calls are the network
  round trips; the rest run inside the scripts);
- peak memory (RSS) of the scheduler process and of its store, when ``--spawn`` started them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as EventType
from typing import Any

import msgspec
import psutil
import redis.asyncio as redis
from websockets.asyncio.client import connect

from dragoman import protocol as p
from dragoman.agent.engines import EchoEngine, EngineConfig
from dragoman.client.endpoints import with_query

# One web-client chunk: 13 voiced 20 ms Plan A packets (260 ms); two make an utterance past min_utterance_ms.
# Each is a SILK wideband packet whose first byte sets the voice-activity flag of a voiced frame (dragoman.voice).
CHUNK_B64 = base64.b64encode(b"".join(b"\x3d\x00\x48\xb0" + bytes(range(1, 60)) for _ in range(13))).decode()


# -- workers (run in their own processes) -------------------------------------------------------------


async def _node(url: str, index: int, capacity: int, stop: EventType, seen: dict[str, int]) -> None:
    engine = EchoEngine(EngineConfig(langs=("zh", "en")))
    decode = msgspec.json.Decoder(p.JobAssign | p.NodeRegisterAck | p.JobCancel).decode
    async with connect(url, max_size=None, ping_interval=None) as ws:
        register = {
            "type": "node_register",
            "node_id": f"bench-node-{os.getpid()}-{index}",
            "version": "2.0.0",
            "platform": "linux",
            "hardware": {"cpu_cores": 1, "memory_gb": 1},
            "installed_models": [],
            "capability_by_type": [],
            "features_supported": {},
            "accept_public_jobs": True,
            "language_capabilities": {"asr_languages": ["zh", "en"], "semantic_languages": ["zh", "en"]},
            "max_concurrent_jobs": capacity,
        }
        await ws.send(json.dumps(register))
        node_id = json.loads(await ws.recv())["node_id"]
        heartbeat = {
            "type": "node_heartbeat",
            "node_id": node_id,
            "timestamp": int(time.time() * 1000),
            "resource_usage": {"cpu_percent": 0, "mem_percent": 0, "running_jobs": 0},
            "installed_services": [],
            "capability_by_type": [],
        }
        await ws.send(json.dumps(heartbeat))
        last_beat = time.monotonic()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                raw = None
            if time.monotonic() - last_beat > 10:
                heartbeat["timestamp"] = int(time.time() * 1000)
                await ws.send(json.dumps(heartbeat))
                last_beat = time.monotonic()
            if raw is None:
                continue
            received = time.time_ns()
            msg = decode(raw)
            if not isinstance(msg, p.JobAssign):
                continue
            seen[f"{msg.session_id}/{msg.utterance_index}"] = received
            result = await engine.run(msg, _no_partial)
            frame = p.JobResult(
                job_id=msg.job_id,
                attempt_id=msg.attempt_id,
                node_id=node_id,
                session_id=msg.session_id,
                utterance_index=msg.utterance_index,
                success=True,
                trace_id=msg.trace_id,
                text_asr=result.text_asr,
                text_translated=result.text_translated,
                tts_audio="",  # the echo engine would return the input audio; the bench keeps frames small
                tts_format="opus",
                processing_time_ms=0,
            )
            await ws.send(p.encode(frame).decode())


async def _no_partial(text: str, is_final: bool) -> None:
    return None


def _node_worker(urls: list[str], first: int, count: int, capacity: int, ready: Any, stop: EventType, out: Any) -> None:
    async def main() -> None:
        seen: dict[str, int] = {}
        nodes = [_node(urls[(first + i) % len(urls)], first + i, capacity, stop, seen) for i in range(count)]
        tasks = [asyncio.create_task(node) for node in nodes]
        await asyncio.sleep(0.5)
        ready.put(count)
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put(("nodes", seen))

    _run(main())


@dataclass
class _SessionLog:
    sent: dict[int, int] = field(default_factory=dict)  # index -> ns the finalizing chunk was sent
    outcomes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # index -> [(type, ns)]


async def _session(url: str, ordinal: int, plan: Plan, go: float, deadline: float, log: dict[str, _SessionLog]) -> None:
    async with connect(url, max_size=None, ping_interval=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "session_init",
                    "client_version": "dragoman-bench",
                    "platform": "bench",
                    "src_lang": "zh",
                    "tgt_lang": "en",
                    "mode": "one_way",
                }
            )
        )
        session_id = json.loads(await ws.recv())["session_id"]
        entry = log[session_id] = _SessionLog()
        outstanding = asyncio.Semaphore(plan.window)
        done = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                frame = json.loads(raw)
                kind = frame.get("type")
                if kind in ("translation_result", "missing_result") or (kind == "error" and "utterance_index" in frame):
                    entry.outcomes.setdefault(frame["utterance_index"], []).append((kind, time.time_ns()))
                    outstanding.release()
                elif kind == "error":
                    entry.outcomes.setdefault(-1, []).append((f"error:{frame.get('code')}", time.time_ns()))
                    outstanding.release()
                if done.is_set() and len(entry.outcomes) >= len(entry.sent):
                    return

        receiver = asyncio.create_task(receive())
        await asyncio.sleep(max(0.0, go - time.time()))
        interval = plan.sessions / plan.rate if plan.rate else 0.0
        # Sessions are spread over the interval, so the total rate is steady rather than bursts of every session.
        start = time.monotonic() + (ordinal / plan.rate if plan.rate else 0.0)
        frame = {"type": "audio_chunk", "session_id": session_id, "seq": 0, "is_final": False, "payload": CHUNK_B64}
        chunk, final = json.dumps(frame), json.dumps(frame | {"is_final": True})
        for index in range(plan.utterances) if plan.utterances else itertools.count():
            if time.time() > deadline:
                break
            if interval:
                await asyncio.sleep(max(0.0, start + index * interval - time.monotonic()))
            await outstanding.acquire()
            await ws.send(chunk)
            entry.sent[index] = time.time_ns()
            await ws.send(final)
        done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, plan.drain_s)
        receiver.cancel()


def _client_worker(
    urls: list[str], first: int, sessions: int, plan: Plan, go: float, deadline: float, out: Any
) -> None:
    async def main() -> None:
        log: dict[str, _SessionLog] = {}
        runs = [_session(urls[(first + i) % len(urls)], first + i, plan, go, deadline, log) for i in range(sessions)]
        await asyncio.gather(*runs, return_exceptions=True)
        out.put(("clients", {sid: (e.sent, e.outcomes) for sid, e in log.items()}))

    _run(main())


def _run(main: Any) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)


# -- the coordinator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    sessions: int
    nodes: int
    utterances: int  # per session, at most (0: as many as the duration allows)
    rate: float  # utterances per second in all (0: as fast as the window allows)
    duration: float
    window: int  # utterances in flight per session
    capacity: int
    drain_s: float = 10.0


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 3)}


async def _commandstats(url: str | None) -> dict[str, int]:
    if not url:
        return {}
    client = redis.Redis.from_url(url)
    try:
        info = await client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
    finally:
        await client.aclose()


class _Spawned:
    """``--spawn``: a scheduler with its embedded store, on a free loopback port, in a temporary directory."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="dragoman-bench-")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dragoman",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                self.dir,
                "--log-level",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.store_url = ""
        assert self.process.stdout is not None
        output = []
        for line in self.process.stdout:
            output.append(line)
            found = re.search(r"store\s+(\S+)", line)
            if found:
                self.store_url = found.group(1)
                break
        if not self.store_url:
            raise OSError("the spawned scheduler did not start: " + "".join(output)[-1000:])
        self.peak_rss = {"scheduler": 0, "store": 0}
        self.cpu_s = {"scheduler": 0.0, "store": 0.0}  # CPU seconds used, as of the last sample
        self.cpu_percent: dict[str, float] = {}

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.process.pid)
            self.peak_rss["scheduler"] = max(self.peak_rss["scheduler"], proc.memory_info().rss)
            times = proc.cpu_times()
            self.cpu_s["scheduler"] = times.user + times.system
            for child in proc.children():
                self.peak_rss["store"] = max(self.peak_rss["store"], child.memory_info().rss)
                times = child.cpu_times()
                self.cpu_s["store"] = times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _progress(show: bool) -> Any:
    """A progress bar on stderr over the sending time (nothing when not shown, or not on a terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not show or not console.is_terminal,
    )


async def run_bench(
    scheduler: str,
    store_url: str | None,
    plan: Plan,
    spawned: _Spawned | None,
    key: str | None = None,
    token: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """``key`` and ``token``: the client key and node token of a scheduler with authentication."""
    bases = [url.rstrip("/") for url in scheduler.split(",")]  # sessions and nodes are spread over them
    ctx = multiprocessing.get_context("spawn")
    out, ready, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    node_workers = max(1, min(plan.nodes, (os.cpu_count() or 2) // 2 or 1))
    per = _split(plan.nodes, node_workers)
    procs = []
    first = 0
    for count in per:
        node_urls = [with_query(f"{base}/ws/node", "token", token) for base in bases]
        proc = ctx.Process(target=_node_worker, args=(node_urls, first, count, plan.capacity, ready, stop, out))
        proc.start()
        procs.append(proc)
        first += count
    for _ in per:
        ready.get(timeout=30)
    before = await _commandstats(store_url)
    if spawned is not None:
        spawned.sample()
        cpu_before = dict(spawned.cpu_s)
        started = time.monotonic()
    client_workers = max(1, min(plan.sessions, (os.cpu_count() or 2) // 2 or 1))
    shares = [
        plan.sessions // client_workers + (1 if i < plan.sessions % client_workers else 0)
        for i in range(client_workers)
    ]
    go = time.time() + 1.0
    deadline = go + plan.duration
    session_urls = [with_query(f"{base}/ws/session", "key", key) for base in bases]
    starts = [sum(shares[:i]) for i in range(len(shares))]
    clients = [
        ctx.Process(target=_client_worker, args=(session_urls, start, n, plan, go, deadline, out))
        for start, n in zip(starts, shares, strict=True)
    ]
    for proc in clients:
        proc.start()
    nodes_seen: dict[str, int] = {}
    sessions: dict[str, tuple[dict[int, int], dict[int, list[tuple[str, int]]]]] = {}
    # Read results while waiting: a worker cannot exit before its queued results are read.
    pending_clients = len(clients)
    with _progress(show_progress) as progress:
        sending = progress.add_task("sending", total=plan.duration)
        while pending_clients:
            progress.update(sending, completed=min(plan.duration, max(0.0, time.time() - go)))
            if spawned is not None:
                spawned.sample()
            try:
                _, data = out.get(timeout=0.1)
            except queue.Empty:
                if not any(proc.is_alive() for proc in clients):
                    raise RuntimeError("a load-generating worker died without a report") from None
                continue
            sessions.update(data)
            pending_clients -= 1
    after = await _commandstats(store_url)
    if spawned is not None:  # the share of one core each used during the run
        spawned.sample()
        wall = time.monotonic() - started
        spawned.cpu_percent = {k: round(100 * (spawned.cpu_s[k] - cpu_before[k]) / wall, 1) for k in cpu_before}
    stop.set()
    for _ in procs:
        _, data = out.get(timeout=60)
        nodes_seen.update(data)
    for proc in procs + clients:
        proc.join(10)
    return _report(plan, sessions, nodes_seen, before, after, spawned)


def _report(
    plan: Plan,
    sessions: dict[str, tuple[dict[int, int], dict[int, list[tuple[str, int]]]]],
    nodes_seen: dict[str, int],
    before: dict[str, int],
    after: dict[str, int],
    spawned: _Spawned | None,
) -> dict[str, Any]:
    sent = completed = errors = lost = duplicated = 0
    to_assign: list[float] = []
    to_result: list[float] = []
    first_sent, last_done = None, None
    for session_id, (sent_at, outcomes) in sessions.items():
        sent += len(sent_at)
        errors += len(outcomes.get(-1, []))
        for index, t0 in sent_at.items():
            got = outcomes.get(index, [])
            first_sent = t0 if first_sent is None else min(first_sent, t0)
            if not got:
                lost += 1
                continue
            duplicated += len(got) - 1
            kind, t1 = got[0]
            last_done = t1 if last_done is None else max(last_done, t1)
            if kind == "translation_result":
                completed += 1
                to_result.append((t1 - t0) / 1e6)
            else:
                errors += 1
            assigned = nodes_seen.get(f"{session_id}/{index}")
            if assigned is not None:
                to_assign.append((assigned - t0) / 1e6)
    elapsed = (last_done - first_sent) / 1e9 if first_sent and last_done else 0.0
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta.pop("info", None)
    report: dict[str, Any] = {
        "plan": plan.__dict__,
        "utterances_sent": sent,
        "completed": completed,
        "errors": errors,
        "lost": lost,
        "duplicated": duplicated,
        "elapsed_s": round(elapsed, 3),
        "utterances_per_s": round(completed / elapsed, 1) if elapsed else 0.0,
        "finalize_to_job_assign_ms": _percentiles(to_assign),
        "finalize_to_translation_result_ms": _percentiles(to_result),
    }
    if delta and sent:
        report["store_round_trips_per_utterance"] = round(delta.get("evalsha", 0) / sent, 2)
        report["store_commands_per_utterance"] = round(sum(delta.values()) / sent, 1)
    if spawned is not None:
        report["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in spawned.peak_rss.items()}
        report["cpu_percent_of_one_core"] = spawned.cpu_percent
    return report


def add_parser(commands: Any) -> None:
    bench = commands.add_parser(
        "bench",
        help="load-test one scheduler instance with echo nodes and streaming sessions",
        description=(__doc__ or "").replace("``", ""),  # the docstring's markup is not for a terminal
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = bench.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--scheduler", help="base URL of a running instance, e.g. ws://127.0.0.1:5010; several, comma-separated"
    )
    target.add_argument("--spawn", action="store_true", help="start a scheduler with an embedded store for the run")
    bench.add_argument("--redis-url", help="the instance's store, for store figures (with --scheduler)")
    bench.add_argument("--sessions", type=int, default=20, help="streaming sessions (default 20)")
    bench.add_argument("--nodes", type=int, default=4, help="echo nodes (default 4)")
    bench.add_argument(
        "--utterances",
        type=int,
        default=0,
        help="utterances per session, at most (default 0: as many as --duration allows)",
    )
    bench.add_argument("--rate", type=float, default=0.0, help="utterances per second in all (default 0: flat out)")
    bench.add_argument("--duration", type=float, default=30.0, help="seconds of sending, at most (default 30)")
    bench.add_argument("--window", type=int, default=4, help="utterances in flight per session (default 4)")
    bench.add_argument(
        "--capacity", type=int, default=256, help="max_concurrent_jobs each node announces (default 256)"
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--key", help="client key of the sessions (a scheduler with client_keys)")
    bench.add_argument("--token", help="node token of the echo nodes (a scheduler with node_tokens)")
    bench.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    plan = Plan(args.sessions, args.nodes, args.utterances, args.rate, args.duration, args.window, args.capacity)
    if min(plan.sessions, plan.nodes, plan.window, plan.capacity) < 1 or plan.duration <= 0 or plan.utterances < 0:
        print(
            "dragoman bench: --sessions, --nodes, --window, --capacity and --duration must be positive, "
            "--utterances 0 or more",
            file=sys.stderr,
        )
        return 2
    spawned = _Spawned() if args.spawn else None
    scheduler = f"ws://127.0.0.1:{spawned.port}" if spawned else args.scheduler
    store_url = spawned.store_url if spawned else args.redis_url
    try:
        report = asyncio.run(
            run_bench(scheduler, store_url, plan, spawned, args.key, args.token, show_progress=not args.json)
        )
    except (OSError, TimeoutError) as exc:
        print(f"dragoman bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if spawned is not None:
            spawned.stop()
    if report["utterances_sent"] == 0:
        print("dragoman bench: no utterance could be sent (is the scheduler up?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dragoman bench", show_header=False)
    for key, value in report.items():
        if key == "plan":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, dict):
            value = "  ".join(f"{k} {v}" for k, v in value.items())
        table.add_row(key.replace("_", " "), str(value))
    Console().print(table)
