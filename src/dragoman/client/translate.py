"""``dragoman translate FILE``: stream a speech file through a scheduler and show each translation.

Two ways to send, as lingua's clients do:
- ``opus`` (default): the web client's streaming path. The file is encoded as Plan A Opus and sent in
  260 ms ``audio_chunk``s; the scheduler cuts utterances: at the pauses of the speech (its default
  ``endpointing = "voice"`` measures them in the audio, so they are found however fast the file is sent), by
  its max-duration rule, at an ``is_final`` every ``--cut-every`` seconds if asked, and at the end of the file.
- ``pcm16``: the mobile app's one-shot path. The file is cut every ``--cut-every`` seconds (10 by default)
  into ``utterance`` messages with indices the client chooses.

Either way the session ends with ``session_close``, after waiting for the outcomes of every utterance the
scheduler announced, so nothing in flight is cut short by the scheduler's close grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dragoman import protocol as p
from dragoman.client.output import Reporter, SavedAudio, Summary, TtsWriter
from dragoman.client.session import Reconnected, SessionClient, SessionConfig
from dragoman.client.tracker import OutcomeTracker
from dragoman.errors import ClientError
from dragoman.opus import CHUNK_PACKETS, PACKET_MS, OpusEncoder, plan_a_chunks
from dragoman.pcm import SAMPLE_RATE, Audio, load_audio

CHUNK_S = CHUNK_PACKETS * PACKET_MS / 1000  # 0.26 s of audio per audio_chunk
DEFAULT_UTTERANCE_S = 10.0  # pcm16: the longest utterance sent (the scheduler's max_duration_ms, §10.3)
#: After the last audio, how long nothing new must happen before the session is closed: covers the scheduler's
#: cut hangover (200 ms) and job dispatch, after which every utterance is announced by a ui_event.
SETTLE_S = 1.0


@dataclass(frozen=True, slots=True)
class TranslateOptions:
    file: Path
    urls: list[str]
    config: SessionConfig
    audio_format: Literal["opus", "pcm16"] = "opus"
    realtime: bool = False
    #: Cut an utterance every this many seconds of audio (None: opus leaves it to the scheduler).
    cut_every: float | None = None
    out_dir: Path | None = None
    #: Seconds to wait for outstanding outcomes once all audio is sent.
    timeout: float = 60.0
    heartbeat_interval: float = 30.0
    key: str | None = None  # the client key (?key=)
    ca_file: str | None = None  # the certificates wss:// trusts (default: the system's)


async def translate(options: TranslateOptions, reporter: Reporter) -> Summary:
    """Run one translation session for a file. Raises ``ClientError`` (e.g. ``AudioError``, ``ConnectError``)
    with a one-line reason."""
    started = time.monotonic()
    audio = await asyncio.to_thread(load_audio, options.file)
    if options.audio_format == "opus":
        OpusEncoder()  # fails now, before connecting, if the codec is missing
    writer = TtsWriter(options.out_dir) if options.out_dir is not None else None
    client = SessionClient(
        options.urls,
        options.config,
        ui_events=True,
        heartbeat_interval=options.heartbeat_interval,
        key=options.key,
        ca_file=options.ca_file,
    )
    ack = await client.connect()
    tracker = OutcomeTracker()
    run = _Run(client, tracker, reporter, writer)
    what = f"{audio.source}, {audio.duration_s:.1f} s, sent as {options.audio_format}"
    reporter.started(client.url, ack.session_id, what, audio.duration_s)
    consumer = asyncio.create_task(run.consume(), name="dragoman translate: results")
    try:
        if options.audio_format == "opus":
            await _stream_opus(client, audio, options, reporter)
            expected = None
        else:
            expected = await _send_utterances(client, audio, options, reporter)
        reporter.waiting()
        await run.drain(options.timeout, expected)
        await client.close(reason="end_of_file", timeout=options.timeout + 10)
        await consumer
    except BaseException:
        consumer.cancel()
        with contextlib.suppress(BaseException):
            await consumer
        with contextlib.suppress(Exception):
            await client.abort()
        raise
    counts = tracker.counts
    if counts["never_dispatched"]:
        reporter.notice(
            f"{counts['never_dispatched']} utterance(s) never reached a node: no node serves "
            f"{_pair(options.config)}, or every one was busy until the session closed"
        )
    return Summary(
        session_id=client.session_id,
        results=counts["translation_result"],
        missing=counts["missing_result"] - counts["never_dispatched"],
        errors=counts["error"],
        never_dispatched=counts["never_dispatched"],
        outstanding=len(tracker.outstanding),
        elapsed_s=time.monotonic() - started,
    )


def _pair(config: SessionConfig) -> str:
    if config.lang_a and config.lang_b:
        return f"{config.lang_a}<->{config.lang_b}"
    return f"{config.src_lang}:{config.tgt_lang}"


class _Run:
    """The receiving side of one ``translate``: tracks slots, prints outcomes and saves their audio."""

    def __init__(self, client: SessionClient, tracker: OutcomeTracker, reporter: Reporter, writer: TtsWriter | None):
        self.client = client
        self.tracker = tracker
        self.reporter = reporter
        self.writer = writer
        self._number_base = 0  # output file numbering continues across a session that was not resumed
        self._highest = -1
        self._failure: ClientError | None = None

    async def consume(self) -> None:
        try:
            async for event in self.client:
                tracked = self.tracker.observe(event)
                if isinstance(event, p.ClientAsrPartial):
                    self.reporter.partial(event.utterance_index, event.text)
                elif isinstance(event, Reconnected):
                    self._reconnected(event)
                elif tracked is not None:
                    saved: SavedAudio | None = None
                    if tracked.index is not None:
                        self._highest = max(self._highest, self._number_base + tracked.index)
                    message = tracked.message
                    if self.writer is not None and isinstance(message, p.TranslationResult):
                        try:
                            saved = self.writer.save(self._number_base + message.utterance_index, message)
                        except OSError as exc:
                            self.reporter.notice(f"could not save the audio of utterance {tracked.index}: {exc}")
                    self.reporter.outcome(tracked, saved)
        except ClientError as exc:
            self._failure = exc
            raise

    def _reconnected(self, event: Reconnected) -> None:
        if event.resumed:
            self.reporter.notice(f"reconnected to {event.url}; session {event.session_id} resumed")
            return
        self._number_base = self._highest + 1
        self.reporter.notice(
            f"reconnected to {event.url}, but session {event.previous_session_id} was not resumed: its "
            f"utterances in flight are lost; the rest of the file goes to the new session {event.session_id}"
        )

    async def drain(self, timeout: float, expected: int | None) -> None:
        """Wait until every announced utterance has its outcome (and, for ``expected`` utterances sent with
        chosen indices, that many outcomes), or ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent_at = loop.time()
        while loop.time() < deadline:
            if self._failure is not None:
                raise self._failure
            t = self.tracker
            if expected is not None:
                if sum(t.counts.values()) >= expected:
                    return
            elif not t.outstanding and t.quiet_for() >= SETTLE_S and loop.time() - sent_at >= SETTLE_S:
                return
            await asyncio.sleep(0.05)
        if self.tracker.outstanding:
            self.reporter.notice(
                f"{len(self.tracker.outstanding)} utterance(s) still unanswered after {timeout:g} s; closing"
            )


class _Pacer:
    """Sends at the pace of speech: item ``k`` no earlier than ``start + offset_k`` (no drift over a file)."""

    def __init__(self, realtime: bool) -> None:
        self.realtime = realtime
        self._start = time.monotonic()

    async def wait_until(self, offset_s: float) -> None:
        if self.realtime:
            delay = self._start + offset_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def _stream_opus(client: SessionClient, audio: Audio, options: TranslateOptions, reporter: Reporter) -> None:
    chunks_per_cut = max(1, round(options.cut_every / CHUNK_S)) if options.cut_every else None
    pacer = _Pacer(options.realtime)
    total = audio.duration_s
    for k, (chunk, last) in enumerate(_with_last(plan_a_chunks(audio.pcm))):
        await pacer.wait_until(k * CHUNK_S)
        cut = last or (chunks_per_cut is not None and (k + 1) % chunks_per_cut == 0)
        await client.send_chunk(chunk, is_final=cut)
        reporter.sent(min(total, (k + 1) * CHUNK_S))


async def _send_utterances(client: SessionClient, audio: Audio, options: TranslateOptions, reporter: Reporter) -> int:
    step_s = options.cut_every or DEFAULT_UTTERANCE_S
    step = max(1, int(step_s * SAMPLE_RATE)) * 2
    pacer = _Pacer(options.realtime)
    count = 0
    for index, offset in enumerate(range(0, len(audio.pcm), step)):
        piece = audio.pcm[offset : offset + step]
        end_s = (offset + len(piece)) / 2 / SAMPLE_RATE
        await pacer.wait_until(end_s)  # an utterance can only be sent once it has been spoken
        await client.send_utterance(index, piece, audio_format="pcm16", sample_rate=SAMPLE_RATE)
        reporter.sent(end_s)
        count += 1
    return count


def _with_last(items: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each item with whether it is the last one."""
    previous: bytes | None = None
    for item in items:
        if previous is not None:
            yield previous, False
        previous = item
    if previous is not None:
        yield previous, True
