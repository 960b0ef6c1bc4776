"""Unit tests of dragoman.scheduler.segmenter.Segmenter under ``endpointing = "lingua"``: lingua's finalize rules
(PROTOCOL.md §4.5, §10), times in ms; and, at the end, the rule that decides how long a pause ends an utterance
under ``"voice"``. The other voice rules, on encoded signals, are in test_endpointing.py."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from dragoman.audio import PACKET_MS, pcm16_duration_ms, plan_a_stats
from dragoman.config import ConfigError, Settings, load_settings
from dragoman.scheduler import metrics
from dragoman.scheduler.segmenter import PADDING_MS, Cut, CutReason, Segmenter, required_silence_ms, speech_packets

from peers import plan_a, silence_chunk, voiced_chunk

PAUSE = 3000
S = Settings(endpointing="lingua")


def seg(**overrides: Any) -> Segmenter:
    return Segmenter(S.replace(**overrides))


def one(cuts: list[Cut]) -> Cut:
    assert len(cuts) == 1, cuts
    return cuts[0]


V = voiced_chunk()  # 13 voiced packets: 260 ms of voice (< min_utterance_ms)
V2 = voiced_chunk(packets=26, size=50)  # 520 ms of voice (>= min_utterance_ms)
Q = silence_chunk()  # 13 near-silence packets, 65 bytes


# ---------------------------------------------------------------------------------------------------------
# Durations from packet counts (§4.5, B13)


def test_plan_a_stats_counts_records() -> None:
    stats = plan_a_stats(V, S.silence_packet_max_bytes)
    assert (stats.packets, stats.voiced_packets, stats.duration_ms, stats.voiced_ms) == (13, 13, 260, 260)
    quiet = plan_a_stats(Q, S.silence_packet_max_bytes)
    assert (quiet.packets, quiet.voiced_packets, quiet.duration_ms, quiet.voiced_ms) == (13, 0, 260, 0)
    assert PACKET_MS == 20


def test_plan_a_stats_silence_limit_is_inclusive() -> None:
    data = plan_a([b"\x48" * 10, b"\x48" * 11, b"\x48" * 1, b"\x48" * 200])
    stats = plan_a_stats(data, 10)
    assert (stats.packets, stats.voiced_packets) == (4, 2)  # 10 bytes is silence, 11 is voice
    assert plan_a_stats(data, 0).voiced_packets == 4


def test_plan_a_stats_skips_zero_length_and_truncated_records() -> None:
    assert plan_a_stats(b"", 10).packets == 0
    assert plan_a_stats(b"\x00\x00" * 5, 10).packets == 0  # five zero-length records carry no audio
    good = plan_a([b"\x48" * 40] * 3)
    truncated = good + (100).to_bytes(2, "little") + b"\x48" * 99  # the tail record lacks one byte
    assert plan_a_stats(truncated, 10).packets == 3
    assert plan_a_stats(good + b"\x05", 10).packets == 3  # a lone byte is not even a length
    assert plan_a_stats(good + b"\x00\x00", 10).packets == 3
    assert plan_a_stats(b"\xff\xff" + b"x" * 10, 10).packets == 0  # length 65535, not there


def test_not_estimated_from_bytes() -> None:
    """lingua's bytes / 60 x 20 ms estimate (B13) would give 13 x 62 / 60 x 20 = 268 ms here, not 260."""
    data = voiced_chunk(size=60)
    assert len(data) == 13 * 62
    assert plan_a_stats(data, 10).duration_ms == 260
    big = voiced_chunk(packets=5, size=1000)
    assert plan_a_stats(big, 10).duration_ms == 100


def test_pcm16_duration() -> None:
    assert pcm16_duration_ms(32000, 16000) == 1000
    assert pcm16_duration_ms(3200, 16000) == 100
    assert pcm16_duration_ms(3201, 16000) == 100  # a trailing odd byte is no sample
    assert pcm16_duration_ms(48000, 48000) == 500
    assert pcm16_duration_ms(100, 0) == 0


def test_cut_duration_comes_from_packet_counts() -> None:
    s = Segmenter(S)
    odd = plan_a([b"\x48" * 40] * 30 + [b""])  # a zero-length record too
    s.on_chunk(odd, False, 0)
    s.on_chunk(b"\x00\x00" + V, False, 100)
    cut = one(s.on_chunk(b"", True, 200))
    assert cut.audio == odd + b"\x00\x00" + V  # passed through byte for byte
    assert cut.duration_ms == (30 + 13) * 20


# ---------------------------------------------------------------------------------------------------------
# IsFinal (§10.3)


def test_is_final_cuts_the_buffer() -> None:
    s = Segmenter(S)
    turn = s.turn_id
    assert s.on_chunk(V, False, 0, client_ts=1_767_000_000_000) == []
    assert s.on_chunk(V, False, 256, client_ts=1_767_000_000_256) == []
    cut = one(s.on_chunk(b"", True, 512))
    assert cut.reason is CutReason.IS_FINAL and PADDING_MS[cut.reason] == 280
    assert cut.audio == V + V and cut.duration_ms == 520
    assert cut.turn_id == turn and s.turn_id != turn  # an IsFinal cut closes the turn
    assert cut.client_timestamp_ms == 1_767_000_000_000  # the utterance's first chunk
    assert s.timer_deadline() is None  # nothing buffered, nothing to time


def test_is_final_appends_its_payload_first() -> None:
    s = Segmenter(S)
    s.on_chunk(V, False, 0)
    cut = one(s.on_chunk(V2, True, 256))
    assert cut.audio == V + V2 and cut.reason is CutReason.IS_FINAL


def test_padding_per_reason() -> None:
    assert PADDING_MS == {
        CutReason.IS_FINAL: 280,
        CutReason.TIMEOUT: 220,
        CutReason.ENDPOINT: 220,
        CutReason.MAX_DURATION: 220,
        CutReason.MAX_LENGTH: 0,
        CutReason.SESSION_CLOSE: 220,
    }


# ---------------------------------------------------------------------------------------------------------
# Pause timer and gap on arrival (§10.3)


def test_pause_timer_cuts_with_timeout_reason() -> None:
    s = Segmenter(S)
    turn = s.turn_id
    s.on_chunk(V2, False, 1000)
    assert s.timer_deadline() == 1000 + PAUSE
    assert s.on_timer(1000 + PAUSE - 1) == []
    cut = one(s.on_timer(1000 + PAUSE))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2 and cut.turn_id == turn
    assert s.turn_id != turn  # a Timeout cut closes the turn
    assert s.timer_deadline() is None
    assert s.on_timer(1000 + 2 * PAUSE) == []


def test_every_chunk_rearms_the_timer() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    s.on_chunk(V, False, 2000)
    assert s.timer_deadline() == 2000 + PAUSE
    assert s.on_timer(PAUSE) == []  # the timer of the first chunk no longer fires
    assert one(s.on_timer(2000 + PAUSE)).audio == V2 + V


def test_timer_honours_pause_ms_setting() -> None:
    s = seg(pause_ms=300)
    s.on_chunk(V2, False, 50)
    assert s.timer_deadline() == 350
    assert one(s.on_timer(350)).reason is CutReason.TIMEOUT


def test_gap_on_arrival_puts_the_arriving_chunk_into_the_next_utterance() -> None:
    s = Segmenter(S)
    first_turn = s.turn_id
    s.on_chunk(V2, False, 0, client_ts=111)
    cut = one(s.on_chunk(V, False, PAUSE + 1, client_ts=222))  # B15: the onset is not cut off
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2
    assert cut.client_timestamp_ms == 111 and cut.turn_id == first_turn
    nxt = one(s.on_chunk(V2, True, PAUSE + 200))
    assert nxt.audio == V + V2 and nxt.reason is CutReason.IS_FINAL
    assert nxt.client_timestamp_ms == 222 and nxt.turn_id != first_turn


def test_no_gap_cut_at_exactly_pause_ms() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    assert s.on_chunk(V, False, PAUSE) == []  # "more than pause_ms"
    assert one(s.on_chunk(b"", True, PAUSE + 10)).audio == V2 + V


def test_gap_before_an_empty_final_is_an_is_final_cut() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    cut = one(s.on_chunk(b"", True, PAUSE + 500))  # no payload: not a gap on arrival
    assert cut.reason is CutReason.IS_FINAL and cut.audio == V2


def test_gap_on_arrival_with_a_final_chunk_makes_two_cuts() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    cuts = s.on_chunk(V2, True, PAUSE + 1)
    assert [(c.reason, c.audio) for c in cuts] == [(CutReason.TIMEOUT, V2), (CutReason.IS_FINAL, V2)]
    assert cuts[0].turn_id != cuts[1].turn_id


def test_gap_with_nothing_buffered_cuts_nothing() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, True, 0)
    assert s.on_chunk(V2, False, PAUSE + 1000) == []
    assert one(s.flush()).audio == V2


# ---------------------------------------------------------------------------------------------------------
# TTS playback coupling (§10.5)


def test_tts_started_invalidates_the_timer_and_play_ended_rearms_it() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    s.on_tts_started(100)
    deadline = s.timer_deadline()
    assert deadline is not None and deadline > PAUSE  # only the 60 s bound is left
    assert s.on_timer(PAUSE) == [] and s.on_timer(PAUSE + 1000) == []
    s.on_tts_ended(10_000)
    assert s.timer_deadline() == 10_000 + PAUSE
    assert s.on_timer(10_000 + PAUSE - 1) == []
    cut = one(s.on_timer(10_000 + PAUSE))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2


def test_tts_playing_suppresses_the_gap_rule() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    s.on_tts_started(100)
    assert s.on_chunk(V, False, 5000) == []  # the user was listening, not done speaking
    s.on_tts_ended(6000)
    assert one(s.on_chunk(b"", True, 6100)).audio == V2 + V


def test_gap_rule_applies_again_after_tts_play_ended() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    s.on_tts_started(100)
    s.on_tts_ended(200)
    cut = one(s.on_chunk(V, False, 5000))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2


def test_tts_playing_is_bounded_to_60_s() -> None:
    s = Segmenter(S)
    assert S.tts_playing_max_ms == 60_000
    s.on_chunk(V2, False, 0)
    s.on_tts_started(100)
    assert s.timer_deadline() == 100 + 60_000
    assert s.on_timer(100 + 60_000) == []  # playback is over: the pause timer runs from now
    assert s.timer_deadline() == 100 + 60_000 + PAUSE
    cut = one(s.on_timer(100 + 60_000 + PAUSE))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2


def test_gap_rule_applies_after_the_60_s_bound_without_play_ended() -> None:
    s = Segmenter(S)
    s.on_chunk(V2, False, 0)
    s.on_tts_started(100)
    assert s.on_chunk(V, False, 30_000) == []  # still playing: no gap cut
    cut = one(s.on_chunk(V, False, 100 + 60_000 + 1))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V2 + V


# ---------------------------------------------------------------------------------------------------------
# MaxDuration, turns and MaxLength (§10.3, §10.4)


def test_max_duration_cut_and_turn_continuity() -> None:
    s = Segmenter(S)
    turn = s.turn_id
    cuts: list[Cut] = []
    for i in range(39):  # 39 x 260 ms = 10 140 ms >= max_duration_ms
        cuts += s.on_chunk(V, False, i * 256)
    cut = one(cuts)
    assert cut.reason is CutReason.MAX_DURATION and cut.duration_ms == 39 * 260 and cut.turn_id == turn
    assert s.turn_id == turn  # the turn continues
    s.on_chunk(V2, False, 39 * 256)
    second = one(s.on_chunk(b"", True, 40 * 256))
    assert second.reason is CutReason.IS_FINAL and second.turn_id == turn and second.audio == V2
    s.on_chunk(V2, False, 41 * 256)
    third = one(s.on_chunk(b"", True, 42 * 256))
    assert third.turn_id not in (turn, "")  # the turn ended with its first non-MaxDuration cut


def test_consecutive_max_duration_cuts_share_a_turn_until_a_timeout() -> None:
    s = seg(max_duration_ms=1000)
    turn = s.turn_id
    cuts: list[Cut] = []
    for i in range(8):  # 4 chunks of 260 ms reach 1040 ms
        cuts += s.on_chunk(V, False, i * 256)
    assert [c.reason for c in cuts] == [CutReason.MAX_DURATION, CutReason.MAX_DURATION]
    assert [c.duration_ms for c in cuts] == [1040, 1040]
    assert [c.turn_id for c in cuts] == [turn, turn]
    s.on_chunk(V2, False, 8 * 256)
    last = one(s.on_timer(8 * 256 + PAUSE))
    assert last.reason is CutReason.TIMEOUT and last.turn_id == turn
    s.on_chunk(V2, False, 20_000)
    assert one(s.on_chunk(b"", True, 20_100)).turn_id != turn


def test_is_final_takes_precedence_over_max_duration() -> None:
    s = seg(max_duration_ms=1000)
    for i in range(3):
        s.on_chunk(V, False, i * 256)
    cut = one(s.on_chunk(V, True, 800))  # 1040 ms and final
    assert cut.reason is CutReason.IS_FINAL


def _record(size: int) -> bytes:
    return plan_a([b"\x48" * size])


def test_max_length_cuts_beyond_512000_bytes() -> None:
    s = Segmenter(S)
    assert S.max_length_bytes == 512_000
    exact = _record(4000) * 127 + _record(512_000 - 127 * 4002 - 2)
    assert len(exact) == 512_000
    assert s.on_chunk(exact, False, 0) == []  # exactly the limit: no cut (only "> 500 KiB" cuts)
    cut = one(s.on_chunk(b"\x00\x00", False, 100))  # two more bytes (a zero-length record)
    assert cut.reason is CutReason.MAX_LENGTH and PADDING_MS[cut.reason] == 0
    assert len(cut.audio) == 512_002 and cut.duration_ms == 128 * 20
    assert s.turn_id != cut.turn_id  # MaxLength closes its turn


def test_max_length_takes_precedence_over_is_final_and_max_duration() -> None:
    s = seg(max_duration_ms=100)
    big = _record(4000) * 130  # 520 260 bytes, 2.6 s
    cut = one(s.on_chunk(big, True, 0))
    assert cut.reason is CutReason.MAX_LENGTH and cut.audio == big


# ---------------------------------------------------------------------------------------------------------
# Silence and tiny fragments (§10.6, B12)


def test_silence_only_buffers_produce_no_cut() -> None:
    s = Segmenter(S)
    discarded = metrics.CUTS.get("discarded")
    turn = s.turn_id
    for i in range(3):  # the web client's pause pattern
        assert s.on_chunk(Q, False, i * 512) == []
        assert s.on_chunk(b"", True, i * 512 + 256) == []
    assert metrics.CUTS.get("discarded") == discarded + 3
    s.on_chunk(Q + Q, False, 5000)
    assert s.on_timer(5000 + PAUSE) == []  # a Timeout of silence: no cut either
    s.on_chunk(silence_chunk(size=8), False, 10_000)
    assert s.flush() == []
    assert s.turn_id != turn
    cut = one(s.on_chunk(V2, True, 20_000))  # the next real utterance is whole and alone
    assert cut.audio == V2


def test_silence_only_max_duration_and_gap_make_no_cut() -> None:
    s = seg(max_duration_ms=520)
    assert s.on_chunk(Q, False, 0) == []
    assert s.on_chunk(Q, False, 256) == []  # 520 ms of silence reaches MaxDuration: dropped
    s2 = Segmenter(S)
    s2.on_chunk(Q, False, 0)
    assert s2.on_chunk(V2, False, PAUSE + 1) == []  # the gap cut of silence is dropped, V2 kept
    assert one(s2.on_chunk(b"", True, PAUSE + 100)).audio == V2


def test_short_voiced_is_final_is_held_and_merged_into_what_follows() -> None:
    s = Segmenter(S)
    merged = metrics.CUTS.get("merged")
    turn = s.turn_id
    assert s.on_chunk(V, True, 0) == []  # 260 ms of voice < 500 ms: an onset split off
    assert metrics.CUTS.get("merged") == merged + 1
    assert s.on_chunk(V2, False, 256) == []
    cut = one(s.on_chunk(b"", True, 512))
    assert cut.audio == V + V2 and cut.reason is CutReason.IS_FINAL and cut.turn_id == turn
    assert cut.duration_ms == 260 + 520


@pytest.mark.parametrize(("packets", "held"), [(24, True), (25, False)])
def test_min_utterance_threshold_counts_voiced_packets(packets: int, held: bool) -> None:
    s = Segmenter(S)
    audio = voiced_chunk(packets=packets) + silence_chunk(packets=40)  # silence does not count as voice
    cuts = s.on_chunk(audio, True, 0)
    assert (cuts == []) is held


def test_held_buffer_is_cut_pause_ms_after_its_last_voiced_chunk_despite_silence() -> None:
    s = Segmenter(S)
    assert s.on_chunk(V, True, 0) == []  # held
    t = 0
    while t + 256 < PAUSE:  # the web client: a near-silence chunk and another is_final every ~256 ms
        t += 256
        assert s.on_chunk(Q, False, t) == []
        assert s.on_chunk(b"", True, t + 1) == []
        assert s.timer_deadline() == PAUSE  # the silence does not push the deadline back
    assert s.on_timer(PAUSE - 1) == []
    cut = one(s.on_timer(PAUSE))
    assert cut.reason is CutReason.TIMEOUT  # short, but still translated
    assert cut.audio.startswith(V) and len(cut.audio) == len(V) + (t // 256) * len(Q)
    assert s.timer_deadline() is None


def test_later_voice_moves_the_held_deadline() -> None:
    s = Segmenter(S)
    s.on_chunk(V, True, 0)
    s.on_chunk(voiced_chunk(packets=5), False, 1000)  # still < 500 ms of voice in total
    s.on_chunk(Q, False, 1500)
    assert s.timer_deadline() == 1000 + PAUSE
    assert s.on_timer(PAUSE) == []
    assert one(s.on_timer(1000 + PAUSE)).reason is CutReason.TIMEOUT


def test_held_buffer_is_taken_by_session_close_and_max_duration() -> None:
    s = Segmenter(S)
    s.on_chunk(V, True, 0)
    cut = one(s.flush())
    assert cut.reason is CutReason.SESSION_CLOSE and cut.audio == V
    m = seg(max_duration_ms=1000)
    m.on_chunk(V, True, 0)
    cuts: list[Cut] = []
    for i in range(1, 4):
        cuts += m.on_chunk(V, False, i * 256)
    cut = one(cuts)
    assert cut.reason is CutReason.MAX_DURATION and cut.audio == V * 4


def test_held_buffer_is_cut_by_a_gap_on_arrival() -> None:
    s = Segmenter(S)
    s.on_chunk(V, True, 0)
    cut = one(s.on_chunk(V2, False, PAUSE + 1))
    assert cut.reason is CutReason.TIMEOUT and cut.audio == V


# ---------------------------------------------------------------------------------------------------------
# Session close and empty cuts (§5.6, §10.1)


def test_flush_cuts_what_is_buffered_as_session_close() -> None:
    s = Segmenter(S)
    turn = s.turn_id
    s.on_chunk(V2, False, 0, client_ts=42)
    cut = one(s.flush())
    assert cut.reason is CutReason.SESSION_CLOSE and PADDING_MS[cut.reason] == 220
    assert cut.audio == V2 and cut.turn_id == turn and cut.client_timestamp_ms == 42
    assert s.flush() == []


def test_empty_cuts_are_no_ops() -> None:
    s = Segmenter(S)
    assert s.flush() == []
    assert s.on_chunk(b"", True, 0) == []
    assert s.on_chunk(b"", True, 256) == []
    assert s.on_chunk(b"", False, 512) == []
    assert s.timer_deadline() is None and s.on_timer(10_000) == []
    s.on_chunk(V2, False, 600)
    cut = one(s.on_chunk(b"", True, 700))
    assert cut.audio == V2
    assert s.on_chunk(b"", True, 800) == []  # right after a cut: nothing to cut


def test_no_chunk_is_lost_between_utterances() -> None:
    """Every byte appended comes out in exactly one cut, in order (§10.1, B14)."""
    s = seg(max_duration_ms=2000)
    sent = bytearray()
    out: list[Cut] = []
    t = 0
    chunks = [V2, V, Q, V2, V2, V, V2, Q, V2, V2, V2, V2, V2, V]
    for i, chunk in enumerate(chunks):
        t += 5000 if i in (4, 9) else 256  # two gaps on arrival
        sent += chunk
        out += s.on_chunk(chunk, i in (2, 6), t)
    out += s.flush()
    assert b"".join(c.audio for c in out) == bytes(sent)
    assert {c.reason for c in out} >= {CutReason.TIMEOUT, CutReason.IS_FINAL, CutReason.MAX_DURATION}


# ---------------------------------------------------------------------------------------------------------
# The lingua rules are today's, exactly


def _random_session(s: Segmenter, seed: int, final_share: float) -> list[tuple[object, ...]]:
    """A long random session of chunks (voiced, near-silence, odd records, empty), finals, timer wake-ups and
    TTS events; what was cut, in a comparable form (turns numbered in order of appearance, audio hashed)."""
    rnd = random.Random(seed)
    out: list[tuple[object, ...]] = []
    turns: dict[str, int] = {}
    now = 0.0

    def record(step: object, cuts: list[Cut]) -> None:
        for c in cuts:
            turn = turns.setdefault(c.turn_id, len(turns))
            digest = hashlib.sha256(c.audio).hexdigest()[:12]
            out.append((step, c.reason.value, c.duration_ms, c.client_timestamp_ms, turn, digest))

    for step in range(400):
        now += rnd.choice([1, 50, 256, 256, 256, 400]) if rnd.random() < 0.8 else rnd.uniform(500, 4000)
        while (due := s.timer_deadline()) is not None and due <= now:
            record(step, s.on_timer(due))
        kind = rnd.random()
        payload: bytes | None = b""
        if kind < 0.55:
            payload = voiced_chunk(packets=rnd.randint(1, 26), size=rnd.randint(11, 90))
        elif kind < 0.75:
            payload = silence_chunk(packets=rnd.randint(1, 13), size=rnd.randint(1, 10))
        elif kind < 0.8:
            payload = plan_a([b"\x48" * rnd.randint(0, 12)] * 3) + b"\x05"
        elif kind < 0.85:
            s.on_tts_started(now)
            payload = None
        elif kind < 0.9:
            s.on_tts_ended(now)
            payload = None
        if payload is not None:
            record(step, s.on_chunk(payload, rnd.random() < final_share, now, client_ts=step))
    record("flush", s.flush())
    return out


@pytest.mark.parametrize(
    ("overrides", "seed", "final_share", "cuts", "digest"),
    [
        ({}, 0, 0.25, 68, "031732167d5af9a03379e961d1b8bb14944f401f933217c6ca52dab6c12b84d9"),
        (
            {"max_duration_ms": 1500, "pause_ms": 1000, "min_utterance_ms": 300},
            1,
            0.1,
            89,
            "dd8f132c54993a2c8e7b6f43b5bb10dc99d347f0ba96a26970ea968e429403b7",
        ),
    ],
)
def test_lingua_cuts_are_those_of_the_segmenter_before_voice_endpointing(
    overrides: dict[str, int], seed: int, final_share: float, cuts: int, digest: str
) -> None:
    """The digests were recorded by running the Segmenter of commit a574995 (before ``endpointing`` existed) on
    these sessions; they change if the fake packets of peers.py change."""
    out = _random_session(seg(**overrides), seed, final_share)
    assert len(out) == cuts
    assert hashlib.sha256(repr(out).encode()).hexdigest() == digest


# ---------------------------------------------------------------------------------------------------------
# endpointing = "voice": the pause that ends an utterance shrinks as the utterance grows

VOICE = Settings()  # the default: 800 ms up to 1 s of speech, 380 ms from 2.5 s on


def test_required_silence_falls_linearly_from_short_to_long_utterances() -> None:
    rule = VOICE.replace(
        endpoint_silence_ms=800, endpoint_min_silence_ms=400, endpoint_short_utterance_ms=1000,
        endpoint_long_utterance_ms=3000,
    )  # fmt: skip
    assert [required_silence_ms(rule, ms) for ms in (0, 1000, 1500, 2000, 3000, 9000)] == [800, 800, 700, 600, 400, 400]
    fixed = rule.replace(endpoint_min_silence_ms=800)  # the rule of a fixed pause, if a deployment wants it
    assert {required_silence_ms(fixed, ms) for ms in (0, 2000, 9000)} == {800}


def test_a_long_utterance_is_cut_at_a_short_pause() -> None:
    s = Segmenter(VOICE)
    [cut] = s.on_chunk(voiced_chunk(packets=150) + silence_chunk(packets=20), False, 0)  # 3 s, then 400 ms
    assert cut.reason is CutReason.ENDPOINT and cut.voice_ms == 3000


def test_a_short_utterance_is_not_cut_at_the_same_pause() -> None:
    s = Segmenter(VOICE)
    assert s.on_chunk(voiced_chunk(packets=40) + silence_chunk(packets=20), False, 0) == []  # 0.8 s, then 400 ms
    assert s.on_chunk(voiced_chunk(packets=40), False, 1200) == []  # the pause was inside the utterance
    [cut] = s.on_chunk(silence_chunk(packets=40), False, 2000)
    assert cut.voice_ms == 1600


def test_the_utterance_length_counts_its_pauses_not_only_its_voiced_packets() -> None:
    """Noise hides voiced frames; the length that sets the pause is the time from the first voice on."""
    s = Segmenter(VOICE)
    speech = (voiced_chunk(packets=20) + silence_chunk(packets=10)) * 5  # 2 s of voice over 3 s of speech
    [cut] = s.on_chunk(speech + silence_chunk(packets=10), False, 0)  # 200 ms pauses, then one of 400 ms
    assert cut.voice_ms == 2000 and required_silence_ms(VOICE, 2800) == VOICE.endpoint_min_silence_ms


def test_a_pause_inside_a_chunk_cuts_there_and_the_rest_starts_the_next_utterance() -> None:
    s = Segmenter(VOICE)
    first, second = voiced_chunk(packets=150), voiced_chunk(packets=150, size=50)
    cuts = s.on_chunk(first + silence_chunk(packets=25) + second + silence_chunk(packets=25), False, 0)
    assert [c.reason for c in cuts] == [CutReason.ENDPOINT] * 2
    assert [c.voice_ms for c in cuts] == [3000, 3000]
    assert cuts[0].audio.startswith(first) and cuts[1].audio.find(second) >= 0
    assert cuts[0].turn_id != cuts[1].turn_id


def test_speech_packets_are_those_the_endpoint_rule_sees() -> None:
    packets = [voiced_chunk(packets=1), silence_chunk(packets=1)] * 2
    flags = speech_packets([p[2:] for p in packets], VOICE.silence_packet_max_bytes)
    assert flags == [True, False, True, False]


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"DRAGOMAN_ENDPOINT_MIN_SILENCE_MS": "900"}, "endpoint_min_silence_ms: must be at most endpoint_silence_ms"),
        ({"DRAGOMAN_ENDPOINT_SHORT_UTTERANCE_MS": "4000"}, "endpoint_short_utterance_ms: must be at most"),
    ],
)
def test_the_endpoint_rule_settings_are_checked(environ: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_settings(environ=environ)
    assert load_settings(environ={"DRAGOMAN_ENDPOINT_MIN_SILENCE_MS": "300"}).endpoint_min_silence_ms == 300
