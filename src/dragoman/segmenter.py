"""Cutting a streaming session's audio into utterances: lingua's finalize rules (PROTOCOL.md §10).

Pure logic, no I/O: the session actor feeds it chunks, TTS events and timer wake-ups (times in ms of
a monotonic clock) and gets back the cuts to turn into jobs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dragoman import metrics
from dragoman.audio import plan_a_stats
from dragoman.config import Settings
from dragoman.protocol import new_uuid


class CutReason(enum.Enum):
    IS_FINAL = "is_final"
    TIMEOUT = "timeout"
    MAX_DURATION = "max_duration"
    MAX_LENGTH = "max_length"
    SESSION_CLOSE = "session_close"


# padding_ms and the job_assign flag of each reason (§10.3; SessionClose closes its turn, §11.2).
PADDING_MS = {
    CutReason.IS_FINAL: 280,
    CutReason.TIMEOUT: 220,
    CutReason.MAX_DURATION: 220,
    CutReason.MAX_LENGTH: 0,
    CutReason.SESSION_CLOSE: 220,
}


@dataclass(frozen=True, slots=True)
class Cut:
    audio: bytes
    reason: CutReason
    turn_id: str
    duration_ms: int
    client_timestamp_ms: int | None  # of the utterance's first chunk


class Segmenter:
    """One session's open utterance buffer and the rules that close it.

    Hangover is not applied: lingua only delayed its cuts by it (chunks arriving meanwhile went to
    the next utterance anyway), so Dragoman cuts at once and the node appends ``padding_ms``.
    """

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._buf = bytearray()
        self._packets = 0
        self._voiced = 0
        self._client_ts: int | None = None
        self._last_chunk: float | None = None
        self._last_voiced: float | None = None
        self._timer_base: float | None = None  # the pause timer runs from here; None = disarmed
        self._held = False  # an IsFinal cut was too short to take: merge it into what follows
        self._tts_since: float | None = None
        self.turn_id = new_uuid()

    def _tts_playing(self, now: float) -> bool:
        return self._tts_since is not None and now - self._tts_since < self._s.tts_playing_max_ms

    def on_chunk(self, payload: bytes, is_final: bool, now: float, client_ts: int | None = None) -> list[Cut]:
        cuts: list[Cut] = []
        gap = self._last_chunk is not None and now - self._last_chunk > self._s.pause_ms
        if payload and self._buf and gap and not self._tts_playing(now):
            # The arriving chunk is the onset of new speech: it starts the next utterance (B15).
            cuts += self._cut(CutReason.TIMEOUT)
        self._last_chunk = now
        if payload:
            stats = plan_a_stats(payload, self._s.silence_packet_max_bytes)
            if not self._buf:
                self._client_ts = client_ts
            self._buf += payload
            self._packets += stats.packets
            self._voiced += stats.voiced_packets
            if stats.voiced_packets:
                self._last_voiced = now
        reason: CutReason | None = None
        if len(self._buf) > self._s.max_length_bytes:
            reason = CutReason.MAX_LENGTH
        elif is_final:
            reason = CutReason.IS_FINAL
        elif self._packets * 20 >= self._s.max_duration_ms:
            reason = CutReason.MAX_DURATION
        if reason is CutReason.IS_FINAL and 0 < self._voiced * 20 < self._s.min_utterance_ms:
            self._held = True  # §10.6 (2): an onset split off by the client's silence detector
            metrics.CUTS.inc("merged")
            reason = None
        if reason is not None:
            cuts += self._cut(reason)
        else:
            self._timer_base = now
        return cuts

    def timer_deadline(self) -> float | None:
        """When ``on_timer`` should run next, or None."""
        if not self._buf:
            return None
        deadlines = []
        if self._timer_base is not None:
            deadlines.append(self._timer_base + self._s.pause_ms)
        if self._held and self._last_voiced is not None:
            deadlines.append(self._last_voiced + self._s.pause_ms)  # §10.6 (3): never held for longer
        if self._tts_since is not None:
            deadlines.append(self._tts_since + self._s.tts_playing_max_ms)
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> list[Cut]:
        if self._tts_since is not None and not self._tts_playing(now):
            self._tts_since = None  # no tts_play_ended within the bound: playback is over
            self._timer_base = now
        deadline = self.timer_deadline()
        if deadline is None or now < deadline:
            return []
        return self._cut(CutReason.TIMEOUT)

    def on_tts_started(self, now: float) -> None:
        self._tts_since = now
        self._timer_base = None

    def on_tts_ended(self, now: float) -> None:
        self._tts_since = None
        self._timer_base = now

    def flush(self) -> list[Cut]:
        """Cut whatever is buffered (session_close)."""
        return self._cut(CutReason.SESSION_CLOSE) if self._buf else []

    def _cut(self, reason: CutReason) -> list[Cut]:
        audio, packets, voiced, client_ts = bytes(self._buf), self._packets, self._voiced, self._client_ts
        self._buf.clear()
        self._packets = self._voiced = 0
        self._client_ts = None
        self._held = False
        self._timer_base = None
        turn_id = self.turn_id
        if reason is not CutReason.MAX_DURATION:
            self.turn_id = new_uuid()  # a MaxDuration cut continues its turn (§10.4)
        if not audio:
            return []
        if voiced == 0:
            metrics.CUTS.inc("discarded")  # §10.6 (1): silence only, no job, no index
            return []
        metrics.CUTS.inc(reason.value)
        return [Cut(audio, reason, turn_id, packets * 20, client_ts)]
