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

    python benchmarks/endpointing.py [--sentences 10] [--endpoint-silence-ms 800] [--synthetic]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dragoman.opus import CHUNK_PACKETS, PACKET_MS, encode_plan_a, parse_plan_a, plan_a
from dragoman.pcm import load_audio
from dragoman.store.embedded import EmbeddedStore
from dragoman.voice import packet_activity

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


def spoken(count: int, synthetic: bool) -> tuple[list[bytes], str]:
    """The sentences as 16 kHz s16le, trimmed to where the speech is."""
    espeak = None if synthetic else shutil.which("espeak-ng")
    if espeak is None:
        return [speechlike(1800 + 300 * (i % 4), seed=i) for i in range(count)], "synthetic speech-like signal"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run([espeak, "-v", "en", "-s", "160", "-w", str(wav), SENTENCES[i % len(SENTENCES)]], check=True)
            out.append(_trim(load_audio(wav).pcm))
    return out, "espeak-ng"


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


def analyse(run: Run) -> Figures:
    f = Figures(sentences=len(run.test.spans), jobs=len(run.jobs), speech_ms=run.test.speech_ms)
    covered: list[list[int]] = [[] for _ in run.test.spans]  # the jobs over each sentence
    last_sentence: dict[int, int] = {}  # job -> the last sentence it holds part of
    cursor = 0
    for j, (_, job) in enumerate(run.jobs):
        packets = parse_plan_a(base64.b64decode(job["audio"]))
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


def _find(stream: list[bytes], run: list[bytes], start: int) -> int:
    """Where ``run`` first occurs in ``stream`` from ``start`` on (packets of digital silence repeat)."""
    at = stream.index(run[0], start)
    while stream[at : at + len(run)] != run:
        at = stream.index(run[0], at + 1)
    return at


def activity_cost_us(packets: list[bytes]) -> float:
    """What reading the voice activity of a packet costs (``dragoman.voice``), best of three passes."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for packet in packets:
            packet_activity(packet, 10)
        best = min(best, time.perf_counter() - started)
    return best / len(packets) * 1e6


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(count: int, endpoint_silence_ms: int, synthetic: bool) -> None:
    speech, source = spoken(count, synthetic)
    print(
        f"speech: {source}, {count} sentences of {min(len(s) for s in speech) // 32}-"
        f"{max(len(s) for s in speech) // 32} ms; pauses (ms): {test_set(speech, None).pauses}"
    )
    modes = ("voice", "lingua")
    plan = [Run(mode, bg, test_set(speech, bg)) for bg in BACKGROUNDS for mode in modes]
    for run in plan:  # before anything runs: encoding takes the event loop for seconds
        run.packets = encode_plan_a(run.test.pcm)
    print(f"voice activity: {activity_cost_us([p for run in plan for p in run.packets]):.1f} µs of CPU per packet")
    store = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-ep-"))
    url = await store.start()
    instances = {
        "voice": await start_dragoman(url, endpointing="voice", endpoint_silence_ms=endpoint_silence_ms),
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
    report(plan, endpoint_silence_ms)


async def _streamed(run: Run, url: str, runs: dict[str, Run]) -> None:
    """One session: registered under its id before any audio is sent, so that its first job is recognised."""
    async with LinguaWebClient(url) as client:
        await client.init()
        assert client.session_id is not None
        runs[client.session_id] = run
        await _send(run, client)


async def _send(run: Run, client: LinguaWebClient) -> None:
    """Stream a test set as lingua's web client does, in real time."""
    run.started = time.monotonic()
    silent_ms = 0
    for k in range(0, len(run.packets), CHUNK_PACKETS):
        chunk_no = k // CHUNK_PACKETS
        delay = run.started + (chunk_no + 1) * CHUNK_MS / 1000 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pcm = run.test.pcm[chunk_no * CHUNK_MS * 32 : (chunk_no + 1) * CHUNK_MS * 32]
        silent_ms = silent_ms + CHUNK_MS if not any(pcm) else 0  # the level gate sees digital silence only
        await client.chunk(plan_a(run.packets[k : k + CHUNK_PACKETS]))
        if silent_ms >= GATE_SILENCE_MS:
            await client.chunk(b"", is_final=True)
    await asyncio.sleep(4.0)  # keep the session open while lingua's pause timer runs out


def _background(bg: float | None) -> str:
    return "digital silence" if bg is None else f"noise {bg:g} dBFS"


def report(plan: list[Run], endpoint_silence_ms: int) -> None:
    pauses = plan[0].test.pauses
    short = [i for i, pause in enumerate(pauses) if pause < endpoint_silence_ms]
    joined = len({i for k in short for i in (k, k + 1)})
    print(
        f"\nendpoint_silence_ms = {endpoint_silence_ms} (voice): {len(short)} of the {len(pauses)} pauses are "
        f"shorter, so {joined} sentences are expected to be merged with a neighbour\n"
    )
    print(
        "| background | mode | sentences found / split / merged (of n) | jobs | jobs with no speech "
        "| end of speech → `job_assign` p50 / p95 / max (ms), sentences ending a job | the same, every sentence "
        "| audio s sent per s of speech |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for run in plan:
        f = analyse(run)
        print(
            f"| {_background(run.background)} | {run.mode} | {f.found} / {f.split} / {f.merged} (of {f.sentences}) "
            f"| {f.jobs} | {f.voiceless_jobs} | {_spread(f.ending_ms)} | {_spread(f.all_ms)} "
            f"| {f.sent_ms / f.speech_ms:.2f} |"
        )


def _spread(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{percentile(values, 0.5):.0f} / {percentile(values, 0.95):.0f} / {max(values):.0f}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10)
    parser.add_argument("--endpoint-silence-ms", type=int, default=800)
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic signal even with espeak-ng")
    args = parser.parse_args()
    asyncio.run(main(args.sentences, args.endpoint_silence_ms, args.synthetic))
