"""``dragoman bench --live``: how many people speaking at once one scheduler instance holds.

Each session behaves like a person at lingua's web client with the default ``endpointing = "voice"``: it
speaks 3.12 s (12 web-client chunks of 13 voiced 20 ms Plan A packets), then pauses for ``--pause`` seconds
(chunks of packets whose SILK voice-activity flag is clear, 8 bytes each, like the web client's near-silence
chunks), and again, until the step's time is up. One chunk goes every 260 ms per session on a fixed schedule,
the sessions' schedules spread evenly over one speech-and-pause cycle. Nothing is sent with ``is_final``: the
scheduler cuts each utterance when its pause reaches the silence the speech needs (380 ms after 3.12 s of
speech, with the default endpoint settings: ``segmenter.required_silence_ms``).

The run is a ramp of steps: ``--sessions``, twice as many, and so on up to ``--max-sessions``, each with fresh
sessions and echo nodes, each speaking for ``--duration`` seconds (a speech that has begun is finished); it
stops after the first step that fails (``--all-steps``: it goes on). Per step:

- chunks per second, counted while every session of the step is speaking;
- finalize → ``job_assign`` (and → ``translation_result``), p50/p90/p99/max: from the moment the pause reached
  where the scheduler can cut, by the client's clock (``LivePlan.finalize_ms``: the time the last chunk before
  that moment was sent, plus the rest) to the node receiving the utterance's ``job_assign``. It includes that
  chunk's way to the scheduler; the scheduler's own timer runs from the chunk's arrival;
- the send lag of every chunk (how long after its time it was sent: a load generator that falls behind, or a
  scheduler that stops reading); a chunk is *late* past ``--late-ms``;
- lost and duplicated chunks: every voiced packet carries its chunk's number in its last bytes (which reading
  the voice activity never reaches), and the nodes read them; a voiced chunk is lost when its 13 packets are
  not all in its own utterance's ``job_assign``, duplicated when its packets reach the nodes more than once.
  Pause chunks are trimmed by the scheduler by design and not counted;
- lost and duplicated utterances (outcomes at the client) and errors;
- with ``--spawn`` or ``--scheduler-pid``: the scheduler's CPU per chunk (its CPU time during the step over
  the step's chunks, the jobs included: one utterance for every cycle of chunks) and its share of one core.

A step passes with p99 finalize → ``job_assign`` ≤ ``--p99-ms`` and nothing lost, duplicated, late or failed;
the answer is the largest step that passed. A step also reports the scheduler's own ``dragoman_dispatch_seconds``
histogram for its jobs (the share within 0.5, 1, 2, 5 and 10 ms, from the cut by the scheduler's clock: what
of the latency is not the chunk's way in or the cut's timer), when ``/metrics`` can be read without a key.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from dragoman.audio import PACKET_MS, plan_a_packets
from dragoman.bench import (
    SESSION_INIT,
    START_TIMEOUT_S,
    ClientWorker,
    Load,
    Monitor,
    Seen,
    SessionRecord,
    cpu_percent,
    drive,
    load_workers,
    outcome,
    percentiles,
    run_loop,
    run_on_target,
    split,
    store_calls,
    tally,
)
from dragoman.client.endpoints import with_query
from dragoman.config import Settings
from dragoman.scheduler.segmenter import required_silence_ms
from dragoman.websocket import BatchedWritesConnection

CHUNK_PACKETS = 13  # the web client's chunk: 13 packets of 20 ms
CHUNK_MS = CHUNK_PACKETS * PACKET_MS
SPEECH_CHUNKS = 12  # 3.12 s of speech
# The bench's voiced SILK wideband packet (dragoman.bench.CHUNK_B64) with its last 4 bytes left for the number
# of its chunk: the voice-activity flag and frame type are read from the first bytes only.
_VOICED_BODY = b"\x48\xb0" + bytes(range(1, 56))
_MARK_BYTES = 4
# A SILK wideband packet whose voice-activity flag is clear (the first bit of the range-coded data, the top of
# its first byte), 8 bytes: near silence, below lingua's silence_packet_max_bytes too.
_PAUSE_PACKET = b"\x48\x10" + bytes(6)
PAUSE_CHUNK_B64 = base64.b64encode((len(_PAUSE_PACKET).to_bytes(2, "little") + _PAUSE_PACKET) * CHUNK_PACKETS).decode()
_OPENING = 50  # sessions a worker opens at a time
_DISPATCH_BUCKET = 'dragoman_dispatch_seconds_bucket{le="'


def voiced_chunk(number: int) -> str:
    """A chunk of 13 voiced packets, each carrying ``number``, as the base64 of an ``audio_chunk`` payload."""
    packet = _VOICED_BODY + number.to_bytes(_MARK_BYTES, "big")
    return base64.b64encode((len(packet).to_bytes(2, "little") + packet) * CHUNK_PACKETS).decode()


def chunk_marks(audio: str) -> dict[int, int]:
    """Run by the nodes on each ``job_assign``'s audio: chunk number -> voiced packets of that chunk in it."""
    marks: Counter[int] = Counter()
    for packet in plan_a_packets(base64.b64decode(audio)):
        if len(packet) == len(_VOICED_BODY) + _MARK_BYTES and packet.startswith(_VOICED_BODY):
            marks[int.from_bytes(packet[-_MARK_BYTES:], "big")] += 1
    return dict(marks)


@dataclass(frozen=True)
class LivePlan:
    steps: tuple[int, ...]  # sessions in each step
    step_s: float  # seconds each step speaks (a speech begun is finished)
    nodes: int
    capacity: int
    pause_chunks: int  # chunks of pause after each speech
    endpoint_silence_ms: int  # the scheduler's: where its pause cut is
    late_ms: float
    p99_ms: float
    all_steps: bool = False  # go on after a step that fails
    drain_s: float = 10.0  # how long a session waits for its outcomes after its last chunk

    @property
    def cycle(self) -> int:
        """Chunks of one speech and its pause."""
        return SPEECH_CHUNKS + self.pause_chunks

    @property
    def cycle_s(self) -> float:
        return self.cycle * CHUNK_MS / 1000

    @property
    def finalize_ms(self) -> int:
        """When, after the speech, the scheduler can cut by the client's clock: the pause the speech needs
        (``segmenter.required_silence_ms``) has passed, and a chunk showing ``endpoint_min_silence_ms`` of
        it has been sent (the scheduler's timer never cuts before it has seen that much)."""
        settings = Settings(endpoint_silence_ms=self.endpoint_silence_ms)
        required = required_silence_ms(settings, SPEECH_CHUNKS * CHUNK_MS)
        return max(required, math.ceil(settings.endpoint_min_silence_ms / CHUNK_MS) * CHUNK_MS)

    def finalize_point(self) -> tuple[int, int]:
        """(the index in a cycle of the last chunk sent at or before ``finalize_ms``, the ms from its sending
        to that moment)."""
        chunks, rest = divmod(self.finalize_ms, CHUNK_MS)
        return SPEECH_CHUNKS - 1 + chunks, rest


def ramp(first: int, last: int) -> tuple[int, ...]:
    """``first``, twice that, ... and ``last``."""
    steps = [first]
    while steps[-1] * 2 < last:
        steps.append(steps[-1] * 2)
    return (*steps, last) if last > first else tuple(steps)


# -- the speaking sessions (in worker processes) ------------------------------------------------------


@dataclass
class _Speech:
    finalized: dict[int, int] = field(default_factory=dict)  # utterance -> ns its pause reached the endpoint
    outcomes: dict[int, list[tuple[str, int]]] = field(default_factory=dict)
    lags_ms: list[float] = field(default_factory=list)  # each chunk's send lag
    steady_chunks: int = 0  # sent while every session of the step was speaking

    def answered(self) -> bool:
        return all(u in self.outcomes for u in self.finalized)


async def _open(url: str, opening: asyncio.Semaphore) -> tuple[ClientConnection, str]:
    async with opening:
        ws = await connect(url, max_size=None, ping_interval=None, create_connection=BatchedWritesConnection)
        try:
            await ws.send(SESSION_INIT)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if reply.get("type") != "session_init_ack":
                raise RuntimeError(f"session_init answered with {reply}")
            return ws, reply["session_id"]
        except BaseException:
            await ws.close()
            raise


async def _speak(
    ws: ClientConnection, session_id: str, ordinal: int, sessions: int, plan: LivePlan, go: float, speech: _Speech
) -> None:
    sending_done = asyncio.Event()
    all_answered = asyncio.Event()

    async def receive() -> None:
        async for raw in ws:
            got = outcome(json.loads(raw))
            if got is not None:
                speech.outcomes.setdefault(got[0], []).append((got[1], time.time_ns()))
                if sending_done.is_set() and speech.answered():
                    all_answered.set()

    receiver = asyncio.create_task(receive())
    closing, rest_ms = plan.finalize_point()
    to_monotonic = time.monotonic() - time.time()  # go is a unix time, shared by the processes
    start = go + to_monotonic + ordinal / sessions * plan.cycle_s  # the sessions' phases spread over a cycle
    steady_from, end = go + to_monotonic + plan.cycle_s, go + to_monotonic + plan.step_s
    number = 0  # of the session's chunks
    utterance = 0
    try:
        while start + number * CHUNK_MS / 1000 < end:  # a speech begins within the step
            for k in range(plan.cycle):
                slot = start + number * CHUNK_MS / 1000
                await asyncio.sleep(max(0.0, slot - time.monotonic()))
                payload = voiced_chunk(number) if k < SPEECH_CHUNKS else PAUSE_CHUNK_B64
                frame = {"type": "audio_chunk", "session_id": session_id, "seq": number, "is_final": False}
                await ws.send(json.dumps(frame | {"payload": payload}))
                sent = time.monotonic()
                speech.lags_ms.append((sent - slot) * 1000)
                speech.steady_chunks += steady_from <= sent < end
                if k == closing:
                    speech.finalized[utterance] = time.time_ns() + rest_ms * 1_000_000
                number += 1
            utterance += 1
        sending_done.set()
        if not speech.answered():
            await asyncio.wait_for(all_answered.wait(), plan.drain_s)
    except TimeoutError:
        pass  # what has no outcome is counted lost
    finally:
        receiver.cancel()


def _speaker_worker(
    urls: list[str], first: int, count: int, sessions: int, plan: LivePlan, ready: Any, gos: Any, out: Any
) -> None:
    async def main() -> None:
        opening = asyncio.Semaphore(_OPENING)
        opened = await asyncio.gather(
            *(_open(urls[(first + i) % len(urls)], opening) for i in range(count)), return_exceptions=True
        )
        ready.put(count)
        go = await asyncio.to_thread(gos.get, True, START_TIMEOUT_S)
        failed = [f"{type(o).__name__}: {o}" for o in opened if isinstance(o, BaseException)]
        speeches: dict[str, _Speech] = {}
        runs = []
        for i, o in enumerate(opened):
            if not isinstance(o, BaseException):
                ws, session_id = o
                speech = speeches[session_id] = _Speech()
                runs.append(_speak(ws, session_id, first + i, sessions, plan, go, speech))
        ended = await asyncio.gather(*runs, return_exceptions=True)
        failed += [f"{type(e).__name__}: {e}" for e in ended if isinstance(e, BaseException)]
        out.put(
            (
                "clients",
                {
                    "sessions": {sid: (s.finalized, s.outcomes) for sid, s in speeches.items()},
                    "lags_ms": [lag for s in speeches.values() for lag in s.lags_ms],
                    "steady_chunks": sum(s.steady_chunks for s in speeches.values()),
                    "failed": failed,
                },
            )
        )
        # Closed after the report: the scheduler's work on the closes is not the step's.
        await asyncio.gather(*(o[0].close() for o in opened if not isinstance(o, BaseException)))

    run_loop(main())


# -- the coordinator ---------------------------------------------------------------------------------


def _chunk_faults(sessions: dict[str, SessionRecord], nodes_seen: dict[str, Seen], plan: LivePlan) -> tuple[int, int]:
    """Voiced chunks lost from their utterance's ``job_assign``, and voiced chunks that reached the nodes more
    than once."""
    jobs: dict[str, dict[int, dict[int, int]]] = {}  # session -> utterance index -> chunk marks
    for key, (_, marks) in nodes_seen.items():
        session_id, _, index = key.rpartition("/")
        jobs.setdefault(session_id, {})[int(index)] = marks
    lost = duplicated = 0
    for session_id, (finalized, _) in sessions.items():
        assigned = jobs.get(session_id, {})
        for utterance in finalized:
            marks = assigned.get(utterance, {})
            first = utterance * plan.cycle
            lost += sum(marks.get(n, 0) < CHUNK_PACKETS for n in range(first, first + SPEECH_CHUNKS))
        reached: Counter[int] = Counter()
        for marks in assigned.values():
            reached.update(marks)
        duplicated += sum(count > CHUNK_PACKETS for count in reached.values())
    return lost, duplicated


def _step_report(sessions_asked: int, plan: LivePlan, load: Load, monitor: Monitor | None) -> dict[str, Any]:
    sessions: dict[str, SessionRecord] = {}
    lags: list[float] = []
    steady = 0
    failed: list[str] = []
    for report in load.clients:
        sessions.update(report["sessions"])
        lags += report["lags_ms"]
        steady += report["steady_chunks"]
        failed += report["failed"]
    t = tally(sessions, load.nodes_seen)
    chunks_lost, chunks_duplicated = _chunk_faults(sessions, load.nodes_seen, plan)
    step: dict[str, Any] = {
        "sessions": sessions_asked,
        "sessions_failed": len(failed),
        "chunks": len(lags),
        "chunks_per_s": round(steady / (plan.step_s - plan.cycle_s), 1),
        "utterances": t.sent,
        "completed": t.completed,
        "lost": t.lost,
        "duplicated": t.duplicated,
        "errors": t.errors,
        "chunks_lost": chunks_lost,
        "chunks_duplicated": chunks_duplicated,
        "chunks_late": sum(lag > plan.late_ms for lag in lags),
        "send_lag_ms": percentiles(lags),
        "finalize_to_job_assign_ms": percentiles(t.to_assign),
        "finalize_to_translation_result_ms": percentiles(t.to_result),
    }
    if monitor is not None and lags:
        step["scheduler_cpu_us_per_chunk"] = round(1e6 * load.cpu_s.get("scheduler", 0.0) / len(lags), 1)
        step["cpu_percent_of_one_core"] = cpu_percent(load)
    calls = store_calls(load)
    if calls and t.sent:
        step["store_round_trips_per_utterance"] = round(calls.get("evalsha", 0) / t.sent, 2)
    step["failed"] = _failures(step, plan) + ([f"first session failure: {failed[0]}"] if failed else [])
    step["ok"] = not step["failed"]
    return step


def _failures(step: dict[str, Any], plan: LivePlan) -> list[str]:
    """Why a step does not pass (empty: it passes)."""
    reasons = []
    p99 = step["finalize_to_job_assign_ms"].get("p99")
    if p99 is None:
        reasons.append("no job_assign arrived")
    elif p99 > plan.p99_ms:
        reasons.append(f"finalize → job_assign p99 {p99} ms > {plan.p99_ms} ms")
    for key in ("sessions_failed", "lost", "duplicated", "errors", "chunks_lost", "chunks_duplicated", "chunks_late"):
        if step[key]:
            reasons.append(f"{step[key]} {key.replace('_', ' ')}")
    return reasons


async def _dispatch_buckets(bases: list[str]) -> dict[str, float]:
    """The instances' ``dragoman_dispatch_seconds`` histogram (cut → ``job_assign`` written, by the scheduler's
    clock), summed: bucket bound -> count. Empty when ``/metrics`` cannot be read (it may need an admin key)."""
    buckets: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        for base in bases:
            try:
                response = await client.get(base.replace("ws", "http", 1) + "/metrics")
            except httpx.HTTPError:
                return {}
            if response.status_code != 200:
                return {}
            for line in response.text.splitlines():
                if line.startswith(_DISPATCH_BUCKET):
                    bound = line[len(_DISPATCH_BUCKET) :].split('"', 1)[0]
                    buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def _difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """The share of the step's dispatches within each bucket up to 10 ms, by bound in ms."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if not total:
        return {}
    shares = {}
    for bound, count in after.items():
        if bound != "+Inf" and float(bound) <= 0.01:
            shares[f"{float(bound) * 1000:g}"] = round((count - before.get(bound, 0.0)) / total, 4)
    return shares


async def run_live(
    scheduler: str,
    store_url: str | None,
    plan: LivePlan,
    monitor: Monitor | None,
    key: str | None = None,
    token: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    bases = [url.rstrip("/") for url in scheduler.split(",")]
    session_urls = [with_query(f"{base}/ws/session", "key", key) for base in bases]
    node_urls = [with_query(f"{base}/ws/node", "token", token) for base in bases]
    steps = []
    for number, sessions in enumerate(plan.steps, 1):
        shares = split(sessions, load_workers(sessions))
        starts = [sum(shares[:i]) for i in range(len(shares))]
        clients: list[ClientWorker] = [
            (_speaker_worker, (session_urls, first, count, sessions, plan))
            for first, count in zip(starts, shares, strict=True)
        ]
        label = f"step {number}/{len(plan.steps)}: {sessions} sessions"
        before = await _dispatch_buckets(bases)
        load = await drive(
            node_urls,
            plan.nodes,
            plan.capacity,
            clients,
            store_url,
            monitor,
            (label, plan.step_s + plan.cycle_s, show_progress),
            inspect=chunk_marks,
        )
        step = _step_report(sessions, plan, load, monitor)
        dispatches = _difference(await _dispatch_buckets(bases), before)
        if dispatches:
            step["scheduler_dispatch_within_ms"] = dispatches
        steps.append(step)
        if not step["ok"] and not plan.all_steps:
            break
    held = [step for step in steps if step["ok"]]
    best = max(held, key=lambda step: step["sessions"], default=None)
    report: dict[str, Any] = {
        "plan": asdict(plan),
        "steps": steps,
        "sessions_per_instance": best["sessions"] if best else 0,
    }
    if best and "scheduler_cpu_us_per_chunk" in best:
        report["scheduler_cpu_us_per_chunk"] = best["scheduler_cpu_us_per_chunk"]
    return report


def main(args: argparse.Namespace) -> int:
    first = 25 if args.sessions is None else args.sessions
    pause_chunks = math.ceil(round(args.pause * 1000) / CHUNK_MS)
    problem = None
    if min(first, args.max_sessions, args.nodes, args.capacity, args.endpoint_silence_ms) < 1:
        problem = "--sessions, --max-sessions, --nodes, --capacity and --endpoint-silence-ms must be positive"
    elif args.max_sessions < first:
        problem = "--max-sessions must be at least --sessions"
    if problem is None:
        plan = LivePlan(
            steps=ramp(first, args.max_sessions),
            step_s=args.duration,
            nodes=args.nodes,
            capacity=args.capacity,
            pause_chunks=pause_chunks,
            endpoint_silence_ms=args.endpoint_silence_ms,
            late_ms=args.late_ms,
            p99_ms=args.p99_ms,
            all_steps=args.all_steps,
        )
        least = math.ceil(plan.finalize_ms / CHUNK_MS) * CHUNK_MS
        if pause_chunks * CHUNK_MS < least:
            problem = f"--pause must be at least {least / 1000} s: the pause must reach where the scheduler cuts"
        elif plan.step_s <= plan.cycle_s:
            problem = f"--duration must be more than one speech and its pause ({plan.cycle_s:.2f} s) with --live"
    if problem is not None:
        print(f"dragoman bench: {problem}", file=sys.stderr)
        return 2

    async def run(scheduler: str, store_url: str | None, monitor: Monitor | None) -> dict[str, Any]:
        return await run_live(scheduler, store_url, plan, monitor, args.key, args.token, show_progress=not args.json)

    settings = {"endpointing": "voice", "endpoint_silence_ms": str(plan.endpoint_silence_ms)}
    report = run_on_target(args, settings, run)
    if report is None:
        return 1
    if not report["steps"][0]["utterances"]:
        why = "; ".join(report["steps"][0]["failed"])
        print(f"dragoman bench: no utterance could be sent (is the scheduler up?): {why}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    faults = ("lost", "duplicated", "chunks_lost", "chunks_duplicated")
    return 1 if any(step[fault] for step in report["steps"] for fault in faults) else 0


def _print(report: dict[str, Any]) -> None:
    """One column per step."""
    from rich.console import Console
    from rich.table import Table

    def figures(step: dict[str, Any], key: str, *qs: str) -> str:
        return " / ".join(f"{step[key][q]:.2f}" if q in step[key] else "-" for q in qs)

    rows: dict[str, Any] = {
        "chunks / s": lambda step: f"{step['chunks_per_s']:g}",
        "finalize → job_assign p50 / p99 / max ms": lambda step: figures(
            step, "finalize_to_job_assign_ms", "p50", "p99", "max"
        ),
        "send lag p99 / max ms": lambda step: figures(step, "send_lag_ms", "p99", "max"),
        "chunks lost / dup / late": lambda step: (
            f"{step['chunks_lost']} / {step['chunks_duplicated']} / {step['chunks_late']}"
        ),
        "utterances / lost / dup / errors": lambda step: (
            f"{step['utterances']} / {step['lost']} / {step['duplicated']} / {step['errors']}"
        ),
        "scheduler CPU µs / chunk": lambda step: str(step.get("scheduler_cpu_us_per_chunk", "-")),
        "scheduler CPU % of a core": lambda step: str(step.get("cpu_percent_of_one_core", {}).get("scheduler", "-")),
        "scheduler's own ≤ 2 / ≤ 5 ms": lambda step: (
            " / ".join(f"{100 * share:.1f} %" for share in _within(step, "2", "5")) or "-"
        ),
        "": lambda step: "ok" if step["ok"] else "; ".join(step["failed"]),
    }
    table = Table(title="dragoman bench --live")
    table.add_column("sessions")
    for step in report["steps"]:
        table.add_column(str(step["sessions"]), overflow="fold")
    for label, value in rows.items():
        table.add_row(label, *(value(step) for step in report["steps"]))
    console = Console()
    console.print(table)
    plan = report["plan"]
    cpu = report.get("scheduler_cpu_us_per_chunk")
    console.print(
        f"One instance held {report['sessions_per_instance']} speaking sessions with finalize → job_assign "
        f"p99 ≤ {plan['p99_ms']} ms and no lost or late chunk"
        + (f"; scheduler CPU {cpu} µs per chunk." if cpu is not None else ".")
    )


def _within(step: dict[str, Any], *bounds: str) -> list[float]:
    shares = step.get("scheduler_dispatch_within_ms", {})
    return [shares[bound] for bound in bounds if bound in shares]
