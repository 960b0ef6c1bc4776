"""``endpointing = "voice"``: cuts at pauses found in the Opus bitstream, no job without voice, non-voice trimmed
(dragoman.scheduler.segmenter with dragoman.scheduler.voice). Streams are encoded here by libopus from generated
signals, in web-client chunks of 13 packets; times in ms. The lingua rules are in test_segmenter.py."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
from pathlib import Path
from typing import Any

import pytest

from dragoman.audio import PACKET_MS
from dragoman.client.output import JsonReporter
from dragoman.client.session import SessionConfig
from dragoman.client.translate import TranslateOptions, translate
from dragoman.config import ConfigError, Settings, load_settings
from dragoman.opus import CHUNK_PACKETS, encode_plan_a, parse_plan_a, plan_a
from dragoman.pcm import write_wav
from dragoman.scheduler import metrics
from dragoman.scheduler.segmenter import CHUNK_LATE_MS, CONSONANT_MS, Cut, CutReason, Segmenter, required_silence_ms

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, silence_chunk, voiced_chunk
from signals import mix, noise, silence, speechlike

V = Settings()  # endpointing = "voice" is the default
CHUNK_MS = CHUNK_PACKETS * PACKET_MS
END = V.endpoint_silence_ms


def seg(**overrides: Any) -> Segmenter:
    return Segmenter(V.replace(**overrides))


def chunks_of(pcm: bytes) -> list[bytes]:
    packets = encode_plan_a(pcm)
    return [plan_a(packets[k : k + CHUNK_PACKETS]) for k in range(0, len(packets), CHUNK_PACKETS)]


def stream(s: Segmenter, chunks: list[bytes], realtime: bool = True, start: float = 0) -> list[tuple[float, Cut]]:
    """Feed chunks as a client does, in real time (each chunk when its audio is over, timers run between)
    or all at once; returns (time, cut), then what ``flush`` cuts."""
    out: list[tuple[float, Cut]] = []
    now = start
    for k, chunk in enumerate(chunks):
        if realtime:
            now = start + (k + 1) * CHUNK_MS
            while (due := s.timer_deadline()) is not None and due < now:
                out += [(due, cut) for cut in s.on_timer(due)]
        out += [(now, cut) for cut in s.on_chunk(chunk, False, now)]
    return out


def records(data: bytes) -> list[bytes]:
    return parse_plan_a(data)


# A test set: speech-like sentences of 2 s separated by 1.5 s pauses, in noise or digital silence.
SENTENCE_MS, PAUSE_MS, LEAD_MS = 2000, 1500, 1000


def sentences(count: int, background: float | None) -> bytes:
    def bg(ms: int, seed: int) -> bytes:
        return silence(ms) if background is None else noise(ms, background, seed)

    parts = [bg(LEAD_MS, 100)]
    for i in range(count):
        parts += [mix(speechlike(SENTENCE_MS, seed=i), bg(SENTENCE_MS, i)), bg(PAUSE_MS, 200 + i)]
    return b"".join(parts)


@pytest.fixture(scope="module")
def noisy() -> list[bytes]:
    return chunks_of(sentences(3, -40))


@pytest.mark.parametrize("background", [None, -50, -40, -30])
def test_one_endpoint_cut_per_sentence_and_none_for_the_background(background: float | None) -> None:
    voiceless = metrics.VOICELESS_CUTS.get("endpoint")
    cuts = stream(Segmenter(V), chunks_of(sentences(3, background)))
    assert [c.reason for _, c in cuts] == [CutReason.ENDPOINT] * 3
    for i, (at, cut) in enumerate(cuts):
        end_of_sentence = LEAD_MS + i * (SENTENCE_MS + PAUSE_MS) + SENTENCE_MS
        # 2 s of speech need less than endpoint_silence_ms of pause (required_silence_ms), found a chunk late at most
        required = required_silence_ms(V, SENTENCE_MS)
        assert V.endpoint_min_silence_ms < required < END
        assert end_of_sentence + required - CHUNK_MS <= at <= end_of_sentence + required + 2 * CHUNK_MS
        assert cut.voice_ms >= 500
        # Only the speech and its margins are sent: at most the lead-in, the sentence and the tail.
        assert cut.duration_ms <= V.voice_lead_in_ms + SENTENCE_MS + V.voice_tail_ms + PACKET_MS
    assert len({c.turn_id for _, c in cuts}) == 3  # each closes its turn
    assert metrics.VOICELESS_CUTS.get("endpoint") == voiceless  # the background never made a cut


def test_lingua_finds_no_pause_in_noise(noisy: list[bytes]) -> None:
    """The compatibility switch: packet sizes of noise are those of speech, so lingua's rules only cut at 10 s."""
    s = Segmenter(V.replace(endpointing="lingua"))
    cuts = [c for _, c in stream(s, noisy)] + s.flush()
    assert [c.reason for c in cuts] == [CutReason.MAX_DURATION, CutReason.SESSION_CLOSE]  # 11.5 s, three sentences
    assert cuts[0].audio == b"".join(noisy[:39]) and b"".join(c.audio for c in cuts) == b"".join(noisy)


def test_a_file_streamed_faster_than_real_time_is_cut_at_the_same_pauses(noisy: list[bytes]) -> None:
    paced = stream(Segmenter(V), noisy)
    at_once = stream(Segmenter(V), noisy, realtime=False)
    assert [(c.reason, c.audio) for _, c in at_once] == [(c.reason, c.audio) for _, c in paced]


def test_cuts_keep_packets_whole_and_in_order_and_count_what_is_not_sent(noisy: list[bytes]) -> None:
    trimmed = metrics.AUDIO_TRIMMED_SECONDS.get()
    sent, voice = metrics.AUDIO_SENT_SECONDS.get(), metrics.VOICE_SENT_SECONDS.get()
    s = Segmenter(V)
    cuts = [c for _, c in stream(s, noisy)] + s.flush()
    sent_packets = [p for chunk in noisy for p in records(chunk)]
    cursor = 0
    for cut in cuts:  # each cut is a contiguous run of the packets sent, after those of the cut before
        packets = records(cut.audio)
        start = sent_packets.index(packets[0], cursor)
        assert sent_packets[start : start + len(packets)] == packets
        cursor = start + len(packets)
    kept = sum(c.duration_ms for c in cuts)
    dropped = len(sent_packets) * PACKET_MS - kept
    assert dropped > 0
    assert metrics.AUDIO_TRIMMED_SECONDS.get() - trimmed == pytest.approx(dropped / 1000)
    assert metrics.AUDIO_SENT_SECONDS.get() - sent == pytest.approx(kept / 1000)
    assert metrics.VOICE_SENT_SECONDS.get() - voice == pytest.approx(sum(c.voice_ms for c in cuts) / 1000)


def test_metrics_page_shows_the_endpointing_figures() -> None:
    s = Segmenter(V)
    s.on_chunk(voiced_chunk(packets=30) + silence_chunk(packets=40), False, 0)
    s.on_chunk(voiced_chunk(packets=2) + silence_chunk(packets=40), False, 2000)  # too little voice: no job
    page = metrics.render()
    assert 'dragoman_cuts_total{reason="endpoint"}' in page
    assert 'dragoman_voiceless_cuts_total{reason="endpoint"}' in page
    for name in ("audio_sent", "voice_sent", "audio_trimmed"):
        assert f"# TYPE dragoman_{name}_seconds_total counter" in page


def test_lead_in_and_tail_are_kept_around_the_speech() -> None:
    s = seg(voice_lead_in_ms=200, voice_tail_ms=300)
    chunks = [silence_chunk()] * 4 + [voiced_chunk(packets=30)] + [silence_chunk()] * 5
    [(_, cut)] = stream(s, chunks)
    packets = records(cut.audio)
    assert len(packets) == 10 + 30 + 15  # 200 ms before, 300 ms after
    assert packets[10:40] == records(voiced_chunk(packets=30))


def test_the_pause_is_measured_in_audio_from_the_end_of_voice() -> None:
    s = Segmenter(V)
    assert s.on_chunk(voiced_chunk(packets=30), False, 0) == []
    quiet = [silence_chunk(packets=10)] * 4  # 800 ms of non-voice, but the last chunk completes it
    assert s.on_chunk(quiet[0], False, 1) == [] and s.on_chunk(quiet[1], False, 2) == []
    assert s.on_chunk(quiet[2], False, 3) == []
    [cut] = s.on_chunk(quiet[3], False, 4)
    assert cut.reason is CutReason.ENDPOINT


def test_unpitched_packets_continue_speech_for_a_final_consonant_only() -> None:
    unpitched = bytes([0x48, 0x80]) + bytes(40)  # flagged, unpitched: a consonant, or noise
    s = Segmenter(V)
    assert s.on_chunk(voiced_chunk(packets=30) + plan_a([unpitched] * 5), False, 0) == []
    [cut] = s.on_chunk(silence_chunk(packets=40), False, 1)  # the pause counts from the end of the consonant
    assert len(records(cut.audio)) == 30 + 5 + V.voice_tail_ms // PACKET_MS
    s = Segmenter(V)
    [(_, cut)] = stream(s, [voiced_chunk(packets=30) + plan_a([unpitched] * 60)])  # taken for noise after 200 ms
    assert cut.reason is CutReason.ENDPOINT
    assert len(records(cut.audio)) == 30 + (CONSONANT_MS + V.voice_tail_ms) // PACKET_MS


def test_a_client_that_stops_sending_is_cut_when_the_pause_would_be_long_enough() -> None:
    s = Segmenter(V)
    s.on_chunk(voiced_chunk(packets=30), False, 800)
    s.on_chunk(silence_chunk(packets=10), False, 1000)  # 200 ms of pause so far
    assert s.timer_deadline() == 1000 + END - 200
    assert s.on_timer(1000 + END - 201) == []
    [cut] = s.on_timer(1000 + END - 200)
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 600
    assert s.timer_deadline() is None or s.on_timer(10_000) == []  # what is left is non-voice: no cut


def test_a_short_pause_seen_waits_for_the_audio_on_its_way_before_the_clock_cuts() -> None:
    """A long utterance ends at endpoint_min_silence_ms; a shorter pause at the end of a chunk may be a comma
    whose end is in the next chunk, so the clock does not cut before that chunk is late."""
    s = Segmenter(V)
    s.on_chunk(voiced_chunk(packets=130), False, 2600)  # 2.6 s of speech: endpoint_min_silence_ms is enough
    s.on_chunk(silence_chunk(packets=13), False, 2860)  # 260 ms of pause so far
    assert s.timer_deadline() == 2860 + 260 + CHUNK_LATE_MS  # not 2860 + (380 - 260): the chunk is due at 3120
    assert s.on_chunk(voiced_chunk(packets=13), False, 3120) == []  # it came: the pause was a comma
    [cut] = s.on_chunk(silence_chunk(packets=V.endpoint_min_silence_ms // PACKET_MS), False, 3500)
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 143 * PACKET_MS
    s.on_chunk(voiced_chunk(packets=88), False, 6000)  # 1.76 s of speech: more than 380 ms of pause is needed
    s.on_chunk(silence_chunk(packets=20), False, 6400)  # 400 ms seen: the audio on its way is taken to be pause
    required = required_silence_ms(V, 88 * PACKET_MS)
    assert s.timer_deadline() == 6400 + required - 400 < 6400 + 400
    [cut] = s.on_timer(6400 + required - 400)
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 88 * PACKET_MS


def test_voice_resuming_before_the_deadline_continues_the_utterance() -> None:
    s = Segmenter(V)
    s.on_chunk(voiced_chunk(packets=30) + silence_chunk(packets=20), False, 0)  # a 400 ms pause
    s.on_chunk(voiced_chunk(packets=30), False, 300)
    [cut] = s.on_chunk(silence_chunk(packets=40), False, 900)
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 1200


def test_tts_playing_suspends_the_deadline_but_not_the_pause_in_the_audio() -> None:
    s = Segmenter(V)
    s.on_chunk(voiced_chunk(packets=30), False, 0)
    s.on_tts_started(100)
    deadline = s.timer_deadline()
    assert deadline is not None and deadline > END  # only the playback bound and the pause timer are left
    assert s.on_timer(END + 100) == []
    [cut] = s.on_chunk(silence_chunk(packets=40), False, 1000)
    assert cut.reason is CutReason.ENDPOINT


def test_less_voice_than_min_voice_ms_makes_no_job() -> None:
    voiceless = metrics.VOICELESS_CUTS.get("endpoint")
    s = seg(min_voice_ms=100)
    assert s.on_chunk(voiced_chunk(packets=4) + silence_chunk(packets=40), False, 0) == []  # 80 ms of voice
    assert metrics.VOICELESS_CUTS.get("endpoint") == voiceless + 1
    [cut] = s.on_chunk(voiced_chunk(packets=5) + silence_chunk(packets=40), False, 1000)  # 100 ms: enough
    assert cut.voice_ms == 100


def test_an_is_final_on_a_buffer_without_voice_is_discarded() -> None:
    s = Segmenter(V)
    discarded = metrics.CUTS.get("discarded")
    assert s.on_chunk(silence_chunk(), True, 0) == []
    assert s.on_chunk(chunks_of(noise(260, -40, seed=1))[0], True, 300) == []
    assert metrics.CUTS.get("discarded") == discarded + 2


def test_a_short_voiced_onset_is_held_and_carried_into_the_next_utterance() -> None:
    s = Segmenter(V)
    onset = voiced_chunk()  # 260 ms of voice < min_utterance_ms, split off by the client's is_final
    assert s.on_chunk(onset, True, 0) == []
    [cut] = s.on_chunk(voiced_chunk(packets=26), True, 260)
    assert cut.reason is CutReason.IS_FINAL and cut.audio.startswith(onset)


def test_a_held_onset_followed_by_a_pause_is_an_endpoint_cut() -> None:
    s = Segmenter(V)
    assert s.on_chunk(voiced_chunk(), True, 0) == []  # held
    [cut] = s.on_chunk(silence_chunk(packets=40), True, 800)
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 260


def test_endpoint_takes_precedence_over_max_duration_and_closes_the_turn() -> None:
    s = seg(max_duration_ms=1000)
    turn = s.turn_id
    [cut] = s.on_chunk(voiced_chunk(packets=20) + silence_chunk(packets=40), False, 0)  # 1200 ms, pause at the end
    assert cut.reason is CutReason.ENDPOINT and s.turn_id != turn


def test_max_duration_cuts_speech_without_a_pause_and_keeps_its_turn() -> None:
    s = seg(max_duration_ms=2000)
    turn = s.turn_id
    cuts = stream(s, [voiced_chunk()] * 8)
    assert [c.reason for _, c in cuts] == [CutReason.MAX_DURATION] and s.turn_id == turn


def test_leading_non_voice_does_not_count_towards_max_duration() -> None:
    s = seg(max_duration_ms=2500)
    assert stream(s, [silence_chunk()] * 20) == []  # 5.2 s of non-voice: only the lead-in is buffered
    cuts = stream(s, [voiced_chunk()] * 4 + [silence_chunk()] * 4, start=20 * CHUNK_MS)
    assert [c.reason for _, c in cuts] == [CutReason.ENDPOINT]


def test_records_without_audio_are_dropped() -> None:
    s = Segmenter(V)
    junk = b"\x00\x00" + (5000).to_bytes(2, "little") + bytes(5000)  # a zero-length and an over-long record
    [cut] = s.on_chunk(voiced_chunk(packets=30) + junk + silence_chunk(packets=40), False, 0)
    assert records(cut.audio) == records(voiced_chunk(packets=30) + silence_chunk(packets=15))


def test_endpointing_setting_is_checked() -> None:
    assert load_settings(environ={"DRAGOMAN_ENDPOINTING": "lingua"}).endpointing == "lingua"
    with pytest.raises(ConfigError, match="endpointing: expected one of voice, lingua, got 'vad'"):
        load_settings(environ={"DRAGOMAN_ENDPOINTING": "vad"})


async def test_noisy_stream_makes_one_job_per_sentence_with_pause_flags(
    dragoman: StartDragoman, noisy: list[bytes]
) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for chunk in noisy:  # faster than real time: the cuts come from the audio
            await client.chunk(chunk)
        jobs = [await node.next_job() for _ in range(3)]
        await node.expect_nothing(0.5, types={"job_assign"})  # none for the noise
        # (in any order: a job cut before the node's first heartbeat landed waits, and is sent after a later one)
        assert sorted(j["utterance_index"] for j in jobs) == [0, 1, 2]
        for job in jobs:
            assert job["is_timeout_triggered"] is True and job["padding_ms"] == 220
            assert "is_manual_cut" not in job and "is_max_duration_triggered" not in job
            assert len(parse_plan_a(base64.b64decode(job["audio"]))) * PACKET_MS <= 2600
        assert len({j["turn_id"] for j in jobs}) == 3
        await client.chunk(b"", is_final=True)  # what is left is noise: no job
        await node.expect_nothing(0.3, types={"job_assign"})


def speech_with_pauses(sentences_ms: list[int], pause_ms: int, background: float) -> bytes:
    """Speech-like sentences of the given lengths separated by ``pause_ms``, in noise, with 1.5 s after the last."""
    parts = [noise(LEAD_MS, background, 100)]
    for i, ms in enumerate(sentences_ms):
        pause = pause_ms if i + 1 < len(sentences_ms) else 1500
        parts += [mix(speechlike(ms, seed=10 + i), noise(ms, background, 20 + i)), noise(pause, background, 30 + i)]
    return b"".join(parts)


@pytest.mark.parametrize(
    ("sentences_ms", "jobs"),
    [
        ([3000, 3000, 3000], 3),  # long sentences end at a short pause
        ([800, 3000], 1),  # the same pause after a few words is taken for a hesitation
    ],
)
async def test_a_short_pause_ends_a_long_utterance_only(
    dragoman: StartDragoman, sentences_ms: list[int], jobs: int
) -> None:
    """450 ms pauses, shorter than endpoint_silence_ms and longer than endpoint_min_silence_ms (with the unvoiced
    edges of the words around them, 440-470 ms of non-voice), in noise at -40 dBFS."""
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for chunk in chunks_of(speech_with_pauses(sentences_ms, 450, -40)):
            await client.chunk(chunk)
        got = [await node.next_job() for _ in range(jobs)]
        await node.expect_nothing(0.5, types={"job_assign"})
    assert [j["is_timeout_triggered"] for j in got] == [True] * jobs
    audio_ms = [len(parse_plan_a(base64.b64decode(j["audio"]))) * PACKET_MS for j in got]
    if jobs == len(sentences_ms):  # each job holds one sentence and its margins
        assert all(3000 <= ms <= 3000 + V.voice_lead_in_ms + V.voice_tail_ms + CONSONANT_MS for ms in audio_ms)
    else:  # one job holds both, and the pause between them
        assert audio_ms[0] >= sum(sentences_ms) + 450


async def test_lingua_switch_keeps_byte_for_byte_audio(dragoman: StartDragoman, noisy: list[bytes]) -> None:
    d = await dragoman(endpointing="lingua")
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for chunk in noisy:
            await client.chunk(chunk)
        await client.chunk(b"", is_final=True)
        # 11.5 s: MaxDuration at 10.14 s, then the is_final (made at once: assigned in either order)
        jobs = sorted([await node.next_job(), await node.next_job()], key=lambda job: int(job["utterance_index"]))
        assert jobs[0]["is_max_duration_triggered"] is True and jobs[1]["is_manual_cut"] is True
        assert b"".join(base64.b64decode(j["audio"]) for j in jobs) == b"".join(noisy)


async def test_translate_finds_the_pauses_of_a_file_without_cut_every(dragoman: StartDragoman, tmp_path: Path) -> None:
    """``dragoman translate`` streams faster than real time; the pauses are found in the audio all the same."""
    d = await dragoman()
    wav = tmp_path / "three sentences.wav"
    write_wav(wav, sentences(3, -40))
    options = TranslateOptions(file=wav, urls=[d.session_url], config=SessionConfig.one_way("zh", "en"), timeout=20)
    jobs: list[dict[str, Any]] = []
    async with LinguaNode(d.node_url) as node:
        await node.start()

        async def answer() -> None:
            while True:
                jobs.append(await node.next_job(timeout=60))
                await node.result(jobs[-1])

        answering = asyncio.create_task(answer())
        try:
            summary = await translate(options, JsonReporter(out=io.StringIO()))
        finally:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
    assert (summary.results, summary.errors, summary.outstanding) == (3, 0, 0)
    assert [job["is_timeout_triggered"] for job in jobs] == [True] * 3  # three pauses; the noise after: no job
