"""Endpointing: ``endpointing = "voice"`` against ``"lingua"`` on spoken sentences separated by pauses.

The test set is made here: sentences spoken by espeak-ng (the Debian package, when it is installed; otherwise
the script says so and uses the synthetic speech-like signal of tests/signals.py), separated by pauses of
0.3 to 4 s, in digital silence and in white noise at -50, -40 and -30 dBFS (the noise runs under the speech
too, as a microphone's does). It is encoded by libopus as lingua's web client does (SILK wideband, 20 ms, 13
packets per chunk) and streamed in real time through ``/ws/session`` of one Dragoman instance per mode (real
embedded valkey-server, loopback) to a scripted lingua node that answers every job at once.

The client behaves like lingua's web client: its level gate closes only on digital silence, so in noise it
streams without pause and never sends ``is_final``; after 3.25 s of digital silence its silence detector sends
``is_final``, then again with every chunk until speech resumes (PROTOCOL.md §10.6).

Each job's audio is located in the stream by its packets (Dragoman passes them through) and compared with where
the sentences are. Reported per mode and background: sentences found alone in one job / split over several jobs
/ merged with another in one job, jobs with no speech, end of speech → ``job_assign`` of the job holding that end
(p50 / p95 / max, over the sentences that end their job, and over every sentence: one merged into the next waits
for it), and audio seconds sent per second of speech.

``--runs`` prints instead what any cut rule has to work with: the runs of non-voice (as ``endpointing = "voice"``
judges packets) inside each sentence and at each pause, and the speech before them. ``--sweep`` replays the test
set through the ``Segmenter`` in-process (no server; the same chunk timing) for a grid of
``endpoint_min_silence_ms`` × ``endpoint_long_utterance_ms`` and prints found / split / merged over the four
backgrounds. ``--rate`` and ``--joined`` make the test set harder: a slower speaker (espeak-ng words per minute,
160 by default: longer words, and longer pauses at commas), or sentences two by two joined by ", and" (6-8 s).

    python benchmarks/endpointing.py [--sentences 10] [--set NAME=VALUE ...] [--synthetic] [--rate WPM] [--joined]
    python benchmarks/endpointing.py --runs | --sweep   [--rate WPM] [--joined]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dragoman.config import Settings, load_settings
from dragoman.opus import CHUNK_PACKETS, PACKET_MS, encode_plan_a, parse_plan_a, plan_a
from dragoman.pcm import load_audio
from dragoman.scheduler.segmenter import Segmenter, required_silence_ms, speech_packets
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.voice import packet_activity

from conftest import start_dragoman
from peers import LinguaNode, LinguaWebClient
from signals import mix, noise, silence, speechlike

SENTENCES = [  # half of them with commas, where espeak-ng pauses inside the sentence
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Well, if you have time, please send the report to my office before noon.",
    "We will meet at the station at half past seven.",
    "Could you tell me, if you know, where the nearest pharmacy is?",
    "The weather has been unusually warm for this time of year.",
    "I would like a cup of tea, with milk, and no sugar.",
    "Our flight was delayed by three hours because of the storm.",
    "Thank you, really, for all your help with the project.",
    "The museum is closed on Mondays and public holidays.",
    "She has been learning, slowly but surely, to play the piano.",
]
PAUSES_MS = [300, 2500, 600, 4000, 1000, 1500, 400, 3000, 800, 2000]
BACKGROUNDS: list[float | None] = [None, -50, -40, -30]  # None: digital silence
LEAD_MS, TAIL_MS = 1500, 4000
CHUNK_MS = CHUNK_PACKETS * PACKET_MS
GATE_SILENCE_MS = 3250  # lingua's web client: its silence detector fires after about 3 s + 250 ms


def spoken(count: int, synthetic: bool, rate: int = 160, joined: bool = False) -> tuple[list[bytes], str]:
    """The sentences as 16 kHz s16le, trimmed to where the speech is."""
    espeak = None if synthetic else shutil.which("espeak-ng")
    if espeak is None:
        return [speechlike(1800 + 300 * (i % 4), seed=i) for i in range(count)], "synthetic speech-like signal"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            wav = Path(tmp) / f"{i}.wav"
            text = SENTENCES[i % len(SENTENCES)]
            if joined:
                text = text.rstrip(".?") + ", and " + SENTENCES[(i + 1) % len(SENTENCES)].lower()
            subprocess.run([espeak, "-v", "en", "-s", str(rate), "-w", str(wav), text], check=True)
            out.append(_trim(load_audio(wav).pcm))
    return out, f"espeak-ng at {rate} words a minute" + (", sentences joined two by two" if joined else "")


def _trim(pcm: bytes, threshold: int = 64) -> bytes:
    samples = memoryview(pcm).cast("h")
    loud = [i for i, s in enumerate(samples) if abs(s) > threshold]
    return pcm[2 * loud[0] : 2 * (loud[-1] + 1)] if loud else pcm


@dataclass
class TestSet:
    pcm: bytes
    spans: list[tuple[int, int]]  # each sentence's (start, end) in ms of audio
    pauses: list[int]

    @property
    def speech_ms(self) -> int:
        return sum(end - start for start, end in self.spans)


def test_set(speech: list[bytes], background: float | None) -> TestSet:
    def bg(ms: int, seed: int) -> bytes:
        return silence(ms) if background is None else noise(ms, background, seed)

    parts, spans, at = [bg(LEAD_MS, 1)], [], LEAD_MS
    pauses = [PAUSES_MS[i % len(PAUSES_MS)] for i in range(len(speech) - 1)] + [TAIL_MS]
    for i, (sentence, pause) in enumerate(zip(speech, pauses, strict=True)):
        ms = len(sentence) // 32
        parts += [mix(sentence, bg(ms, 100 + i)), bg(pause, 200 + i)]
        spans.append((at, at + ms))
        at += ms + pause
    return TestSet(b"".join(parts), spans, pauses[:-1])


@dataclass
class Run:
    mode: str
    background: float | None
    test: TestSet
    packets: list[bytes] = field(default_factory=list)
    started: float = 0.0  # wall clock (monotonic s) at which audio time 0 was spoken
    jobs: list[tuple[float, dict[str, Any]]] = field(default_factory=list)


async def serve_node(node: LinguaNode, runs: dict[str, Run], done: asyncio.Event) -> None:
    """Answer every job at once, and heartbeat as the node does (every 15 s)."""
    beat = time.monotonic()
    while not done.is_set():
        if time.monotonic() - beat >= 15:
            await node.heartbeat()
            beat = time.monotonic()
        try:
            job = await node.next_job(timeout=0.2)
        except (TimeoutError, AssertionError):
            continue
        runs[job["session_id"]].jobs.append((time.monotonic(), job))
        await node.result(job)


@dataclass
class Figures:
    found: int = 0
    split: int = 0
    merged: int = 0
    sentences: int = 0
    jobs: int = 0
    voiceless_jobs: int = 0
    ending_ms: list[float] = field(default_factory=list)  # end of speech -> job_assign, sentences that end a job
    all_ms: list[float] = field(default_factory=list)  # the same for every sentence (a merged one waits longer)
    sent_ms: int = 0
    speech_ms: int = 0
    # voice: the same latency less the silence the rule required of that job (``required_silence_ms`` of its speech)
    beyond_ms: list[float] = field(default_factory=list)


def analyse(run: Run, voice: Settings | None = None) -> Figures:
    f = Figures(sentences=len(run.test.spans), jobs=len(run.jobs), speech_ms=run.test.speech_ms)
    covered: list[list[int]] = [[] for _ in run.test.spans]  # the jobs over each sentence
    last_sentence: dict[int, int] = {}  # job -> the last sentence it holds part of
    cursor = 0
    required: dict[int, int] = {}  # voice: job -> the pause that ended it
    for j, (_, job) in enumerate(run.jobs):
        packets = parse_plan_a(base64.b64decode(job["audio"]))
        if voice is not None:
            required[j] = required_silence_ms(voice, _speech_ms(packets))
        start = _find(run.packets, packets, cursor)
        cursor = start + len(packets)
        begin, end = start * PACKET_MS, cursor * PACKET_MS
        f.sent_ms += end - begin
        inside = [i for i, (s, e) in enumerate(run.test.spans) if min(e, end) - max(s, begin) >= 100]
        if not inside:
            f.voiceless_jobs += 1
            continue
        for i in inside:
            covered[i].append(j)
        last_sentence[j] = inside[-1]
    for i, jobs in enumerate(covered):
        if jobs:  # the sentence is over for the listener when the job holding its end is assigned
            latency = (run.jobs[jobs[-1]][0] - run.started) * 1000 - run.test.spans[i][1]
            f.all_ms.append(latency)
            if last_sentence[jobs[-1]] == i:
                f.ending_ms.append(latency)
                if jobs[-1] in required:
                    f.beyond_ms.append(latency - required[jobs[-1]])
    job_sentences: dict[int, int] = {}
    for jobs in covered:
        for j in jobs:
            job_sentences[j] = job_sentences.get(j, 0) + 1
    for jobs in covered:
        if len(jobs) > 1:
            f.split += 1
        elif len(jobs) == 1 and job_sentences[jobs[0]] > 1:
            f.merged += 1
        elif len(jobs) == 1:
            f.found += 1
    return f


def _speech_ms(packets: list[bytes]) -> int:
    """From the first voiced packet to the end of speech, as the ``Segmenter`` measures an utterance."""
    speech = [k for k, is_speech in enumerate(speech_packets(packets, 10)) if is_speech]
    return (speech[-1] + 1 - speech[0]) * PACKET_MS if speech else 0


def _find(stream: list[bytes], run: list[bytes], start: int) -> int:
    """Where ``run`` first occurs in ``stream`` from ``start`` on (packets of digital silence repeat)."""
    at = stream.index(run[0], start)
    while stream[at : at + len(run)] != run:
        at = stream.index(run[0], at + 1)
    return at


def activity_cost_us(packets: list[bytes]) -> float:
    """What reading the voice activity of a packet costs (``dragoman.scheduler.voice``), best of three passes."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for packet in packets:
            packet_activity(packet, 10)
        best = min(best, time.perf_counter() - started)
    return best / len(packets) * 1e6


def segmenter_cost_us(plan: list[Run], settings: Settings) -> float:
    """What the ``Segmenter`` costs per packet of the web client's chunks, voice activity and cut rules
    included (timers and metrics too), best of three passes."""
    chunks = [chunk for run in plan for chunk, _ in web_client_chunks(run)]
    packets = sum(len(run.packets) for run in plan)
    best = float("inf")
    for _ in range(3):
        segmenter = Segmenter(settings)
        started = time.perf_counter()
        for k, chunk in enumerate(chunks):
            segmenter.on_chunk(chunk, False, k * CHUNK_MS)
        best = min(best, time.perf_counter() - started)
    return best / packets * 1e6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def prepared(args: argparse.Namespace, modes: tuple[str, ...]) -> list[Run]:
    speech, source = spoken(args.sentences, args.synthetic, args.rate, args.joined)
    print(
        f"speech: {source}, {args.sentences} sentences of {min(len(s) for s in speech) // 32}-"
        f"{max(len(s) for s in speech) // 32} ms; pauses (ms): {test_set(speech, None).pauses}"
    )
    plan = [Run(mode, bg, test_set(speech, bg)) for bg in BACKGROUNDS for mode in modes]
    for run in plan:  # before anything runs: encoding takes the event loop for seconds
        run.packets = encode_plan_a(run.test.pcm)
    return plan


async def main(args: argparse.Namespace, voice: Settings) -> None:
    plan = prepared(args, ("voice", "lingua"))
    print(f"voice activity: {activity_cost_us([p for run in plan for p in run.packets]):.1f} µs of CPU per packet")
    print(f"Segmenter (voice): {segmenter_cost_us(plan, voice):.1f} µs of CPU per packet, all rules included")
    store = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-ep-"))
    url = await store.start()
    overrides = {name: getattr(voice, name) for name in args.overrides}
    instances = {
        "voice": await start_dragoman(url, endpointing="voice", **overrides),
        "lingua": await start_dragoman(url, endpointing="lingua"),
    }
    done = asyncio.Event()
    runs: dict[str, Run] = {}
    try:
        nodes = {mode: LinguaNode(d.node_url, max_concurrent_jobs=64) for mode, d in instances.items()}
        for node in nodes.values():
            await node.start()
        servers = [asyncio.create_task(serve_node(node, runs, done)) for node in nodes.values()]
        await asyncio.gather(*(_streamed(run, instances[run.mode].session_url, runs) for run in plan))
        await asyncio.sleep(1.0)  # the last jobs
        done.set()
        await asyncio.gather(*servers)
        for node in nodes.values():
            await node.close()
    finally:
        for d in instances.values():
            await d.stop()
        await store.stop()
    report(plan, voice)


async def _streamed(run: Run, url: str, runs: dict[str, Run]) -> None:
    """One session: registered under its id before any audio is sent, so that its first job is recognised."""
    async with LinguaWebClient(url) as client:
        await client.init()
        assert client.session_id is not None
        runs[client.session_id] = run
        reading = asyncio.create_task(_read(client))
        try:
            await _send(run, client)
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


async def _read(client: LinguaWebClient) -> None:
    """Read what the session sends, as the web client does: a socket left unread stops answering pings and is
    disconnected (``ws_ping_timeout_ms``)."""
    while True:
        with contextlib.suppress(TimeoutError):
            await client.recv(timeout=60)


def web_client_chunks(run: Run) -> list[tuple[bytes, bool]]:
    """The chunks lingua's web client sends for a test set, one every 260 ms of audio, and whether an
    ``is_final`` follows each."""
    out = []
    silent_ms = 0
    for k in range(0, len(run.packets), CHUNK_PACKETS):
        chunk_no = k // CHUNK_PACKETS
        pcm = run.test.pcm[chunk_no * CHUNK_MS * 32 : (chunk_no + 1) * CHUNK_MS * 32]
        silent_ms = silent_ms + CHUNK_MS if not any(pcm) else 0  # the level gate sees digital silence only
        out.append((plan_a(run.packets[k : k + CHUNK_PACKETS]), silent_ms >= GATE_SILENCE_MS))
    return out


async def _send(run: Run, client: LinguaWebClient) -> None:
    """Stream a test set as lingua's web client does, in real time."""
    run.started = time.monotonic()
    for chunk_no, (chunk, final_after) in enumerate(web_client_chunks(run)):
        delay = run.started + (chunk_no + 1) * CHUNK_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await client.chunk(chunk)
        if final_after:
            await client.chunk(b"", is_final=True)
    await asyncio.sleep(4.0)  # keep the session open while lingua's pause timer runs out


def replayed(run: Run, settings: Settings) -> Run:
    """``--sweep``: the cuts of the ``Segmenter`` alone for the web client's chunks, at the times they are sent
    (the timers run between chunks); no server, no network: the endpointing rule and nothing else."""
    segmenter = Segmenter(settings)
    run.jobs = []

    def cut(at_ms: float, cuts: list[Any]) -> None:
        run.jobs += [(at_ms / 1000, {"audio": base64.b64encode(c.audio).decode()}) for c in cuts]

    for chunk_no, (chunk, final_after) in enumerate(web_client_chunks(run)):
        now = (chunk_no + 1) * CHUNK_MS
        while (due := segmenter.timer_deadline()) is not None and due < now:
            cut(due, segmenter.on_timer(due))
        cut(now, segmenter.on_chunk(chunk, False, now))
        if final_after:
            cut(now, segmenter.on_chunk(b"", True, now))
    return run


def _background(bg: float | None) -> str:
    return "digital silence" if bg is None else f"noise {bg:g} dBFS"


def _rule(s: Settings) -> str:
    return (
        f"endpoint_silence_ms {s.endpoint_silence_ms} up to {s.endpoint_short_utterance_ms} ms of speech, "
        f"endpoint_min_silence_ms {s.endpoint_min_silence_ms} from {s.endpoint_long_utterance_ms} ms"
    )


def report(plan: list[Run], voice: Settings) -> None:
    print(f"\nvoice: {_rule(voice)}\n")
    print(
        "| background | mode | sentences found / split / merged (of n) | jobs | jobs with no speech "
        "| end of speech → `job_assign` p50 / p95 / max (ms), sentences ending a job "
        "| the same less the required silence | the same, every sentence | audio s sent per s of speech |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for run in plan:
        f = analyse(run, voice if run.mode == "voice" else None)
        print(
            f"| {_background(run.background)} | {run.mode} | {f.found} / {f.split} / {f.merged} (of {f.sentences}) "
            f"| {f.jobs} | {f.voiceless_jobs} | {_spread(f.ending_ms)} | {_spread(f.beyond_ms)} | {_spread(f.all_ms)} "
            f"| {f.sent_ms / f.speech_ms:.2f} |"
        )


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{percentile(values, 0.5):.0f} / {percentile(values, 0.95):.0f} / {max(values):.0f}"


def runs_report(plan: list[Run]) -> None:
    """``--runs``: the non-voice runs inside each sentence and at each pause, with the speech before them."""
    for run in plan:
        speech = speech_packets(run.packets, 10)
        runs = _non_speech_runs(speech)
        print(
            f"\n{_background(run.background)}: longest non-voice run (ms) inside each sentence, and at each "
            "pause, @ the ms of speech before it"
        )
        inside, at_pause = [], []
        for i, (start, end) in enumerate(run.test.spans):
            first = next(k for k in range(start // PACKET_MS, len(speech)) if speech[k])
            within = [(b - a, a - first) for a, b in runs if a > first and b * PACKET_MS < end]
            longest = max(within, default=(0, 0))
            inside.append(f"{longest[0] * PACKET_MS}@{longest[1] * PACKET_MS}")
            if i + 1 < len(run.test.spans):
                following = run.test.spans[i + 1][0]
                pause = max((b - a, a - first) for a, b in runs if a * PACKET_MS < following and b * PACKET_MS > end)
                at_pause.append(f"{pause[0] * PACKET_MS}@{pause[1] * PACKET_MS}")
        print("  inside:   " + ", ".join(inside))
        print("  at pause: " + ", ".join(f"{p} ({ms} ms)" for p, ms in zip(at_pause, run.test.pauses, strict=True)))


def _non_speech_runs(speech: list[bool]) -> list[tuple[int, int]]:
    """(first, end) packet indices of each run of non-speech after the first speech."""
    runs, start = [], None
    for k, is_speech in enumerate(speech):
        if is_speech and start is not None:
            runs.append((start, k))
        if is_speech or start is not None:
            start = None if is_speech else start
        elif k > 0 and speech[k - 1]:
            start = k
    return runs


SWEEP_MIN_SILENCE_MS = (320, 340, 360, 380, 400, 420, 440)
SWEEP_LONG_UTTERANCE_MS = (2000, 2500, 3000, 3500, 4000)


def sweep(plan: list[Run], base: Settings) -> None:
    """``--sweep``: found / split / merged over the four backgrounds for a grid of the rule's settings."""
    print(f"\nfound / split / merged of {len(plan) * len(plan[0].test.spans)} over the four backgrounds")
    print(f"(endpoint_silence_ms {base.endpoint_silence_ms} up to {base.endpoint_short_utterance_ms} ms of speech)\n")
    print("| `endpoint_min_silence_ms` | " + " | ".join(f"long {ms}" for ms in SWEEP_LONG_UTTERANCE_MS) + " |")
    print("|---|" + "---|" * len(SWEEP_LONG_UTTERANCE_MS))
    for shortest in SWEEP_MIN_SILENCE_MS:
        cells = []
        for long in SWEEP_LONG_UTTERANCE_MS:
            settings = base.replace(endpoint_min_silence_ms=shortest, endpoint_long_utterance_ms=long)
            figures = [analyse(replayed(run, settings)) for run in plan]
            cells.append(" / ".join(str(sum(getattr(f, k) for f in figures)) for k in ("found", "split", "merged")))
        print(f"| {shortest} | " + " | ".join(cells) + " |")


def _overrides(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair}: expected NAME=VALUE")
        out[name] = value
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a setting of the voice instance"
    )
    parser.add_argument("--endpoint-silence-ms", type=int, help="the same as --set endpoint_silence_ms=N")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic signal even with espeak-ng")
    parser.add_argument("--rate", type=int, default=160, help="espeak-ng's speed, words a minute")
    parser.add_argument("--joined", action="store_true", help="join the sentences two by two (longer sentences)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--runs", action="store_true", help="print the non-voice runs of the test set (no server)")
    what.add_argument("--sweep", action="store_true", help="replay a grid of the rule's settings (no server)")
    args = parser.parse_args()
    overrides = _overrides(args.set)
    if args.endpoint_silence_ms is not None:
        overrides["endpoint_silence_ms"] = str(args.endpoint_silence_ms)
    args.overrides = list(overrides)
    voice_settings = load_settings(environ={}, overrides=overrides)
    if args.runs:
        runs_report(prepared(args, ("voice",)))
    elif args.sweep:
        sweep(prepared(args, ("voice",)), voice_settings)
    else:
        asyncio.run(main(args, voice_settings))
