"""``dragoman bench``: a load benchmark of one scheduler instance.

Echo nodes (answering with the ``echo`` test engine) and streaming sessions run in worker processes of their
own, so that the scheduler is measured, not the load generator. Each utterance is two web-client chunks of
voiced Plan A audio (520 ms) with ``is_final`` on the second: the finalizing chunk. Figures:

- utterances per second completed, and errors / lost / duplicated outcomes (lost and duplicated must be 0);
- latency from sending the finalizing chunk to the node receiving ``job_assign``, and to the client receiving
  ``translation_result`` (p50/p90/p99/max; same machine, one clock);
- store commands per utterance, from ``INFO commandstats`` deltas (the ``evalsha`` calls are the network
  round trips; the rest run inside the scripts);
- peak memory (RSS) and CPU share of the scheduler process and of its store, when ``--spawn`` started them
  (or of the process ``--scheduler-pid`` names, with ``--scheduler``).

``--live`` is another load: sessions that speak like people, in real time, in steps of more sessions; it
reports the most speaking sessions the instance holds and its CPU per chunk (``dragoman.bench_live``).
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
from collections.abc import Callable, Coroutine
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
from dragoman.config import Settings
from dragoman.websocket import BatchedWritesConnection

# One web-client chunk: 13 voiced 20 ms Plan A packets (260 ms); two make an utterance past min_utterance_ms.
# Each is a SILK wideband packet whose first byte sets the voice-activity flag of a voiced frame
# (dragoman.scheduler.voice).
CHUNK_B64 = base64.b64encode(b"".join(b"\x3d\x00\x48\xb0" + bytes(range(1, 60)) for _ in range(13))).decode()
START_TIMEOUT_S = 120  # a load-generating worker sets up its sessions (hundreds of them with --live) within this


# -- workers (run in their own processes) -------------------------------------------------------------


#: What a node saw of an utterance: when its first ``job_assign`` arrived (ns), and what ``inspect`` found in its audio.
Seen = tuple[int, dict[int, int]]
#: A function of a ``job_assign``'s base64 audio, run by the nodes (a module-level function: it goes to a process).
Inspect = Callable[[str], dict[int, int]]


async def _node(
    url: str, index: int, capacity: int, stop: EventType, seen: dict[str, Seen], inspect: Inspect | None
) -> None:
    engine = EchoEngine(EngineConfig(langs=("zh", "en")))
    decode = msgspec.json.Decoder(p.JobAssign | p.NodeRegisterAck | p.JobCancel).decode
    async with connect(url, max_size=None, ping_interval=None, create_connection=BatchedWritesConnection) as ws:
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
            key = f"{msg.session_id}/{msg.utterance_index}"
            if key not in seen:  # a failover's second assignment is not the utterance's dispatch
                seen[key] = (received, inspect(msg.audio) if inspect else {})
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


def _node_worker(
    urls: list[str],
    first: int,
    count: int,
    capacity: int,
    inspect: Inspect | None,
    ready: Any,
    stop: EventType,
    out: Any,
) -> None:
    async def main() -> None:
        seen: dict[str, Seen] = {}
        nodes = [_node(urls[(first + i) % len(urls)], first + i, capacity, stop, seen, inspect) for i in range(count)]
        tasks = [asyncio.create_task(node) for node in nodes]
        await asyncio.sleep(0.5)
        ready.put(count)
        await asyncio.gather(*tasks, return_exceptions=True)
        out.put(("nodes", seen))

    run_loop(main())


SESSION_INIT = json.dumps(
    {
        "type": "session_init",
        "client_version": "dragoman-bench",
        "platform": "bench",
        "src_lang": "zh",
        "tgt_lang": "en",
        "mode": "one_way",
    }
)


def outcome(frame: dict[str, Any]) -> tuple[int, str] | None:
    """The utterance index (-1: an error that names none) and the outcome a frame to a session carries, if any."""
    kind = frame.get("type")
    if kind in ("translation_result", "missing_result") or (kind == "error" and "utterance_index" in frame):
        return frame["utterance_index"], kind
    if kind == "error":
        return -1, f"error:{frame.get('code')}"
    return None


@dataclass
class _SessionLog:
    sent: dict[int, int] = field(default_factory=dict)  # index -> ns the finalizing chunk was sent
    outcomes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)  # index -> [(type, ns)]


async def _session(url: str, ordinal: int, plan: Plan, go: float, deadline: float, log: dict[str, _SessionLog]) -> None:
    async with connect(url, max_size=None, ping_interval=None, create_connection=BatchedWritesConnection) as ws:
        await ws.send(SESSION_INIT)
        session_id = json.loads(await ws.recv())["session_id"]
        entry = log[session_id] = _SessionLog()
        outstanding = asyncio.Semaphore(plan.window)
        done = asyncio.Event()

        async def receive() -> None:
            async for raw in ws:
                got = outcome(json.loads(raw))
                if got is not None:
                    entry.outcomes.setdefault(got[0], []).append((got[1], time.time_ns()))
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


def _client_worker(urls: list[str], first: int, sessions: int, plan: Plan, ready: Any, gos: Any, out: Any) -> None:
    async def main() -> None:
        ready.put(sessions)
        go = await asyncio.to_thread(gos.get, True, START_TIMEOUT_S)
        deadline = go + plan.duration
        log: dict[str, _SessionLog] = {}
        runs = [_session(urls[(first + i) % len(urls)], first + i, plan, go, deadline, log) for i in range(sessions)]
        await asyncio.gather(*runs, return_exceptions=True)
        out.put(("clients", {sid: (e.sent, e.outcomes) for sid, e in log.items()}))

    run_loop(main())


def run_loop(main: Any) -> None:
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


def percentiles(values_ms: list[float]) -> dict[str, float]:
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


class LoadError(RuntimeError):
    """A worker of the load could not do its part (the message says which)."""


class Monitor:
    """Peak memory and CPU time of a scheduler process and of its children (the embedded store)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)  # psutil.NoSuchProcess when there is none
        self.peak_rss: dict[str, int] = {"scheduler": 0}
        self.cpu_s: dict[str, float] = {"scheduler": 0.0}  # CPU seconds used, as of the last sample

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            self._note("scheduler", self.process)
            for child in self.process.children():
                self._note("store", child)

    def _note(self, name: str, proc: psutil.Process) -> None:
        self.peak_rss[name] = max(self.peak_rss.get(name, 0), proc.memory_info().rss)
        times = proc.cpu_times()
        self.cpu_s[name] = times.user + times.system


class Spawned:
    """``--spawn``: a scheduler with its embedded store, on a free loopback port, in a temporary directory.
    ``settings`` are passed as ``DRAGOMAN_*`` variables; the load comes from one address, so the per-peer
    connection limit is lifted."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="dragoman-bench-")
        env = os.environ | {"DRAGOMAN_MAX_CONNECTIONS_PER_PEER": "0"}
        env |= {f"DRAGOMAN_{name.upper()}": value for name, value in (settings or {}).items()}
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
            env=env,
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
        self.monitor = Monitor(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def load_workers(count: int) -> int:
    """Processes for ``count`` nodes or sessions: half the cores, leaving the rest to the scheduler."""
    return max(1, min(count, (os.cpu_count() or 2) // 2 or 1))


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


#: A load-generating worker: a function run in a process of its own as ``target(*args, ready, gos, out)``. It
#: puts a count on ``ready`` once it is set up, takes the start time (unix s) from ``gos`` and puts one
#: ``("clients", report)`` on ``out`` when it is done.
ClientWorker = tuple[Callable[..., None], tuple[Any, ...]]


@dataclass
class Load:
    """What one run of nodes and load-generating workers brought back."""

    clients: list[Any]  # each client worker's report
    nodes_seen: dict[str, Seen]  # "session_id/utterance_index" -> what the node saw
    store_before: dict[str, int]
    store_after: dict[str, int]
    cpu_s: dict[str, float]  # CPU seconds each monitored process used from the start until the last report
    wall_s: float  # the time that took


async def drive(
    node_urls: list[str],
    nodes: int,
    capacity: int,
    clients: list[ClientWorker],
    store_url: str | None,
    monitor: Monitor | None,
    progress: tuple[str, float, bool],
    inspect: Inspect | None = None,
) -> Load:
    """Start the echo nodes, then the load-generating workers; give them one start time once all are set up;
    collect their reports. ``progress``: the bar's label, its length in seconds from the start, and whether
    to show it."""
    ctx = multiprocessing.get_context("spawn")
    out, ready, gos, stop = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = []
    first = 0
    for count in split(nodes, load_workers(nodes)):
        args = (node_urls, first, count, capacity, inspect, ready, stop, out)
        procs.append(ctx.Process(target=_node_worker, args=args))
        procs[-1].start()
        first += count
    workers = [ctx.Process(target=target, args=(*args, ready, gos, out)) for target, args in clients]
    try:
        for _ in procs:
            await _wait_ready(ready, procs)
        for proc in workers:
            proc.start()
        for _ in workers:
            await _wait_ready(ready, workers)
        before = await _commandstats(store_url)
        if monitor is not None:
            monitor.sample()
        cpu_before = dict(monitor.cpu_s) if monitor else {}
        lead_s = 1.0  # for the sessions to connect (the plain bench) or to reach their first chunk's time
        go = time.time() + lead_s
        started = time.monotonic() + lead_s  # the share of a core is over the load's time, not the lead's
        for _ in workers:
            gos.put(go)
        reports: list[Any] = []
        nodes_seen: dict[str, Seen] = {}
        nodes_reported = 0
        # Read results while waiting: a worker cannot exit before its queued results are read.
        label, total, show = progress
        with _progress(show) as bar:
            sending = bar.add_task(label, total=total)
            while len(reports) < len(workers):
                bar.update(sending, completed=min(total, max(0.0, time.time() - go)))
                if monitor is not None:
                    monitor.sample()
                try:
                    kind, data = out.get(timeout=0.1)
                except queue.Empty:
                    if not any(proc.is_alive() for proc in workers):
                        raise LoadError("a load-generating worker died without a report") from None
                    continue
                if kind == "nodes":  # a node worker whose nodes all ended (their sockets closed) reports early
                    nodes_seen.update(data)
                    nodes_reported += 1
                else:
                    reports.append(data)
        after = await _commandstats(store_url)
        wall = time.monotonic() - started
        cpu: dict[str, float] = {}
        if monitor is not None:
            monitor.sample()
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in monitor.cpu_s.items()}
        stop.set()
        for _ in range(len(procs) - nodes_reported):
            _, data = out.get(timeout=60)
            nodes_seen.update(data)
    finally:
        stop.set()
        for proc in procs + workers:
            if proc.pid is None:  # never started
                continue
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    return Load(reports, nodes_seen, before, after, cpu, wall)


async def _wait_ready(ready: Any, workers: list[Any]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            ready.get(timeout=0.1)
            return
        except queue.Empty:
            if not all(proc.is_alive() for proc in workers):
                raise LoadError("a load-generating worker died while starting") from None
            await asyncio.sleep(0)
    raise TimeoutError(f"the load-generating workers were not set up within {START_TIMEOUT_S} s")


async def run_bench(
    scheduler: str,
    store_url: str | None,
    plan: Plan,
    monitor: Monitor | None,
    key: str | None = None,
    token: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """``key`` and ``token``: the client key and node token of a scheduler with authentication."""
    bases = [url.rstrip("/") for url in scheduler.split(",")]  # sessions and nodes are spread over them
    session_urls = [with_query(f"{base}/ws/session", "key", key) for base in bases]
    shares = split(plan.sessions, load_workers(plan.sessions))
    starts = [sum(shares[:i]) for i in range(len(shares))]
    clients: list[ClientWorker] = [
        (_client_worker, (session_urls, start, n, plan)) for start, n in zip(starts, shares, strict=True)
    ]
    node_urls = [with_query(f"{base}/ws/node", "token", token) for base in bases]
    load = await drive(
        node_urls, plan.nodes, plan.capacity, clients, store_url, monitor, ("sending", plan.duration, show_progress)
    )
    sessions: dict[str, tuple[dict[int, int], dict[int, list[tuple[str, int]]]]] = {}
    for report in load.clients:
        sessions.update(report)
    return _report(plan, sessions, load, monitor)


#: Per session: index -> ns its utterance was finalized (by the client's clock), and index -> [(outcome type, ns)]
#: (index -1: errors that name no utterance).
SessionRecord = tuple[dict[int, int], dict[int, list[tuple[str, int]]]]


@dataclass
class Tally:
    """The outcomes of the utterances sent, and their latencies from the finalize (ms)."""

    sent: int = 0
    completed: int = 0
    errors: int = 0
    lost: int = 0
    duplicated: int = 0
    to_assign: list[float] = field(default_factory=list)
    to_result: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0  # from the first finalize to the last outcome


def tally(sessions: dict[str, SessionRecord], nodes_seen: dict[str, Seen]) -> Tally:
    t = Tally()
    first_sent, last_done = None, None
    for session_id, (sent_at, outcomes) in sessions.items():
        t.sent += len(sent_at)
        t.errors += len(outcomes.get(-1, []))
        for index, t0 in sent_at.items():
            got = outcomes.get(index, [])
            first_sent = t0 if first_sent is None else min(first_sent, t0)
            if not got:
                t.lost += 1
                continue
            t.duplicated += len(got) - 1
            kind, t1 = got[0]
            last_done = t1 if last_done is None else max(last_done, t1)
            if kind == "translation_result":
                t.completed += 1
                t.to_result.append((t1 - t0) / 1e6)
            else:
                t.errors += 1
            assigned = nodes_seen.get(f"{session_id}/{index}")
            if assigned is not None:
                t.to_assign.append((assigned[0] - t0) / 1e6)
    t.elapsed_s = (last_done - first_sent) / 1e9 if first_sent and last_done else 0.0
    return t


def store_calls(load: Load) -> dict[str, int]:
    """Store commands called during the load, by name (empty without a store URL)."""
    delta = {k: load.store_after.get(k, 0) - load.store_before.get(k, 0) for k in load.store_after}
    delta.pop("info", None)
    return delta


def cpu_percent(load: Load) -> dict[str, float]:
    """The share of one core each monitored process used during the load."""
    return {k: round(100 * v / load.wall_s, 1) for k, v in load.cpu_s.items()} if load.wall_s else {}


def _report(plan: Plan, sessions: dict[str, SessionRecord], load: Load, monitor: Monitor | None) -> dict[str, Any]:
    t = tally(sessions, load.nodes_seen)
    report: dict[str, Any] = {
        "plan": plan.__dict__,
        "utterances_sent": t.sent,
        "completed": t.completed,
        "errors": t.errors,
        "lost": t.lost,
        "duplicated": t.duplicated,
        "elapsed_s": round(t.elapsed_s, 3),
        "utterances_per_s": round(t.completed / t.elapsed_s, 1) if t.elapsed_s else 0.0,
        "finalize_to_job_assign_ms": percentiles(t.to_assign),
        "finalize_to_translation_result_ms": percentiles(t.to_result),
    }
    delta = store_calls(load)
    if delta and t.sent:
        report["store_round_trips_per_utterance"] = round(delta.get("evalsha", 0) / t.sent, 2)
        report["store_commands_per_utterance"] = round(sum(delta.values()) / t.sent, 1)
    if monitor is not None:
        report["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in monitor.peak_rss.items()}
        report["cpu_percent_of_one_core"] = cpu_percent(load)
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
    bench.add_argument(
        "--scheduler-pid", type=int, help="the instance's process id, for its CPU and memory figures (with --scheduler)"
    )
    bench.add_argument(
        "--sessions", type=int, help="streaming sessions (default 20); with --live, the first step's (default 25)"
    )
    bench.add_argument("--nodes", type=int, default=4, help="echo nodes (default 4)")
    bench.add_argument(
        "--utterances",
        type=int,
        default=0,
        help="utterances per session, at most (default 0: as many as --duration allows)",
    )
    bench.add_argument("--rate", type=float, default=0.0, help="utterances per second in all (default 0: flat out)")
    bench.add_argument(
        "--duration", type=float, default=30.0, help="seconds of sending, at most (default 30); with --live, per step"
    )
    bench.add_argument("--window", type=int, default=4, help="utterances in flight per session (default 4)")
    bench.add_argument(
        "--capacity", type=int, default=256, help="max_concurrent_jobs each node announces (default 256)"
    )
    live = bench.add_argument_group("--live: sessions that speak like people, in steps of more sessions")
    live.add_argument("--live", action="store_true", help="run the live benchmark (README: Sizing a deployment)")
    live.add_argument(
        "--max-sessions", type=int, default=800, help="the last step's sessions; steps double up to it (default 800)"
    )
    live.add_argument("--all-steps", action="store_true", help="go on after a step that fails (default: stop)")
    live.add_argument("--pause", type=float, default=1.5, help="seconds of pause after each speech (default 1.5)")
    live.add_argument(
        "--endpoint-silence-ms",
        type=int,
        default=Settings().endpoint_silence_ms,
        help=f"the scheduler's endpoint_silence_ms (default {Settings().endpoint_silence_ms}; given to --spawn)",
    )
    live.add_argument(
        "--late-ms", type=float, default=100.0, help="a chunk sent this many ms after its time is late (default 100)"
    )
    live.add_argument(
        "--p99-ms", type=float, default=5.0, help="finalize → job_assign p99 a step must keep, in ms (default 5)"
    )
    bench.add_argument("--json", action="store_true", help="print the report as JSON")
    bench.add_argument("--key", help="client key of the sessions (a scheduler with client_keys)")
    bench.add_argument("--token", help="node token of the echo nodes (a scheduler with node_tokens)")
    bench.set_defaults(func=main)


#: ``run(scheduler URL, store URL, monitor)``: one benchmark against the target.
Run = Callable[[str, str | None, Monitor | None], Coroutine[Any, Any, dict[str, Any]]]


def run_on_target(args: argparse.Namespace, settings: dict[str, str], run: Run) -> dict[str, Any] | None:
    """``run`` against ``--scheduler``, or a scheduler spawned with ``settings``; None (said on stderr) when it
    could not run."""
    spawned = None
    try:
        if args.spawn:
            spawned = Spawned(settings)
            monitor: Monitor | None = spawned.monitor
        else:
            monitor = Monitor(args.scheduler_pid) if args.scheduler_pid is not None else None
        scheduler = f"ws://127.0.0.1:{spawned.port}" if spawned else args.scheduler
        store_url = spawned.store_url if spawned else args.redis_url
        return asyncio.run(run(scheduler, store_url, monitor))
    except psutil.NoSuchProcess:
        print(f"dragoman bench: --scheduler-pid {args.scheduler_pid}: no such process", file=sys.stderr)
    except (OSError, TimeoutError, LoadError) as exc:
        print(f"dragoman bench: {exc}", file=sys.stderr)
    finally:
        if spawned is not None:
            spawned.stop()
    return None


def main(args: argparse.Namespace) -> int:
    if args.live:
        from dragoman.bench_live import main as live_main  # it builds on this module

        return live_main(args)
    sessions = 20 if args.sessions is None else args.sessions
    plan = Plan(sessions, args.nodes, args.utterances, args.rate, args.duration, args.window, args.capacity)
    if min(plan.sessions, plan.nodes, plan.window, plan.capacity) < 1 or plan.duration <= 0 or plan.utterances < 0:
        print(
            "dragoman bench: --sessions, --nodes, --window, --capacity and --duration must be positive, "
            "--utterances 0 or more",
            file=sys.stderr,
        )
        return 2

    async def run(scheduler: str, store_url: str | None, monitor: Monitor | None) -> dict[str, Any]:
        return await run_bench(scheduler, store_url, plan, monitor, args.key, args.token, show_progress=not args.json)

    report = run_on_target(args, {}, run)
    if report is None:
        return 1
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
