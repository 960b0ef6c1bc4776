"""Cutting a streaming session's audio into utterances: lingua's finalize rules (PROTOCOL.md §10), and
endpointing on the voice activity the Opus bitstream carries.

Pure logic, no I/O: the session actor feeds it chunks, TTS events and timer wake-ups (times in ms of
a monotonic clock) and gets back the cuts to turn into jobs.

``endpointing = "lingua"`` applies lingua's rules exactly: chunks are kept byte for byte, a packet is voiced
when it is longer than ``silence_packet_max_bytes``. ``"voice"`` (the default) judges packets by the voice
activity in the bitstream (``dragoman.scheduler.voice``) and adds to lingua's rules:
- an **Endpoint** cut once enough non-voice follows voice (the flags of a pause cut): ``endpoint_silence_ms``
  after a short utterance, less as it grows, ``endpoint_min_silence_ms`` after a long one
  (``required_silence_ms``); found packet by packet, so inside a chunk too;
- no job for a cut with less than ``min_voice_ms`` of voice;
- only ``voice_lead_in_ms`` of non-voice before the first voice and ``voice_tail_ms`` after the last voice
  are sent; the rest is trimmed, at packet boundaries.
Pauses are measured in audio time (packets), so a client that streams faster than real time gets the same cuts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from dragoman.audio import PACKET_MS, plan_a_packets, plan_a_stats
from dragoman.config import Settings
from dragoman.protocol import new_uuid
from dragoman.scheduler import metrics
from dragoman.scheduler.voice import Activity, packet_activity


class CutReason(enum.Enum):
    IS_FINAL = "is_final"
    TIMEOUT = "timeout"
    ENDPOINT = "endpoint"
    MAX_DURATION = "max_duration"
    MAX_LENGTH = "max_length"
    SESSION_CLOSE = "session_close"


# padding_ms and the job_assign flag of each reason (§10.3; SessionClose closes its turn, §11.2).
PADDING_MS = {
    CutReason.IS_FINAL: 280,
    CutReason.TIMEOUT: 220,
    CutReason.ENDPOINT: 220,
    CutReason.MAX_DURATION: 220,
    CutReason.MAX_LENGTH: 0,
    CutReason.SESSION_CLOSE: 220,
}
#: The reasons of a pause: their jobs carry ``is_timeout_triggered``.
PAUSE_CUTS = frozenset({CutReason.TIMEOUT, CutReason.ENDPOINT})
#: voice: unpitched packets right after voiced ones continue the speech this long at most (a final consonant;
#: noise that the encoder's detector lets through must not hold an utterance open).
CONSONANT_MS = 200
#: voice: how late a real-time client's next chunk may be before the clock takes it to have stopped sending.
CHUNK_LATE_MS = 100


def required_silence_ms(settings: Settings, speech_ms: int) -> int:
    """The non-voice that ends an utterance whose speech (first voiced packet to end of speech, its pauses
    included) lasts ``speech_ms``: ``endpoint_silence_ms`` up to ``endpoint_short_utterance_ms``, then linearly
    less, ``endpoint_min_silence_ms`` from ``endpoint_long_utterance_ms`` on. A pause after a few words is often
    a hesitation, and cutting there leaves the translation without context; after a long stretch the context is
    there and a merge would hold the whole of it back (the endpoint rules of ASR decoders, e.g. Kaldi's, end a
    longer utterance at a shorter pause too). Measured in audio time, not voiced packets: noise hides voiced
    frames (docs/BENCHMARKS.md)."""
    longest, shortest = settings.endpoint_silence_ms, settings.endpoint_min_silence_ms
    short, long = settings.endpoint_short_utterance_ms, settings.endpoint_long_utterance_ms
    if speech_ms <= short:
        return longest
    if speech_ms >= long:
        return shortest
    return longest - (longest - shortest) * (speech_ms - short) // (long - short)


@dataclass(frozen=True, slots=True)
class Cut:
    audio: bytes
    reason: CutReason
    turn_id: str
    duration_ms: int
    client_timestamp_ms: int | None  # of the utterance's first chunk
    voice_ms: int  # of voiced packets, as the endpointing mode judges them


@dataclass(frozen=True, slots=True)
class _Taken:
    audio: bytes
    packets: int
    voiced: int


class _VerbatimBuffer:
    """lingua's buffer: chunk payloads byte for byte; a packet is voiced when longer than the silence limit."""

    def __init__(self, silence_packet_max_bytes: int) -> None:
        self._silence_max = silence_packet_max_bytes
        self._data = bytearray()
        self.packets = self.voiced = 0
        self.trailing_ms = 0  # not measured

    def __len__(self) -> int:
        return len(self._data)

    def add(self, payload: bytes) -> int:
        stats = plan_a_stats(payload, self._silence_max)
        self._data += payload
        self.packets += stats.packets
        self.voiced += stats.voiced_packets
        return stats.voiced_packets

    def take(self) -> _Taken:
        taken = _Taken(bytes(self._data), self.packets, self.voiced)
        self._data.clear()
        self.packets = self.voiced = 0
        return taken


class _VoiceBuffer:
    """The buffer of ``endpointing = "voice"``: Plan A records with their voice activity.

    Speech ends after the last voiced packet and the unpitched packets right after it (a final consonant, at
    most ``CONSONANT_MS``). Before the first voiced packet only ``lead_in`` packets are kept; ``take`` keeps
    ``tail`` packets after the end of speech and leaves the rest as the lead-in of what follows. Records that
    carry no audio (§4.1) are dropped.
    """

    def __init__(self, silence_packet_max_bytes: int, lead_in: int, tail: int) -> None:
        self._silence_max = silence_packet_max_bytes
        self._lead_in, self._tail = lead_in, tail
        self._records: list[bytes] = []
        self._activity: list[Activity] = []
        self._size = 0
        self._speech_end = 0  # records up to here hold the speech
        self._voiced_end = 0  # records up to here hold the last voiced packet
        self._voice_start = 0  # the first voiced packet is here
        self.voiced = 0

    def __len__(self) -> int:
        return self._size

    @property
    def packets(self) -> int:
        return len(self._records)

    @property
    def speech_ms(self) -> int:
        """From the first voiced packet to the end of speech, pauses included."""
        return (self._speech_end - self._voice_start) * PACKET_MS if self.voiced else 0

    @property
    def trailing_ms(self) -> int:
        """Non-voice after the end of speech (0 while there is no voice)."""
        return (len(self._records) - self._speech_end) * PACKET_MS if self.voiced else 0

    def add(self, packet: bytes) -> bool:
        """Append one packet; whether it is voiced."""
        activity = packet_activity(packet, self._silence_max)
        self._append(len(packet).to_bytes(2, "little") + packet, activity)
        return activity is Activity.VOICED

    def _append(self, record: bytes, activity: Activity) -> None:
        self._records.append(record)
        self._activity.append(activity)
        self._size += len(record)
        if activity is Activity.VOICED:
            if not self.voiced:
                self._voice_start = len(self._records) - 1
            self.voiced += 1
            self._voiced_end = len(self._records)
        continues_speech = (
            activity is Activity.ACTIVE
            and self.voiced
            and self._speech_end == len(self._records) - 1
            and (len(self._records) - self._voiced_end) * PACKET_MS <= CONSONANT_MS
        )
        if activity is Activity.VOICED or continues_speech:
            self._speech_end = len(self._records)
        if not self.voiced and len(self._records) > self._lead_in:  # no voice yet: keep the lead-in only
            self._size -= len(self._records.pop(0))
            del self._activity[0]
            metrics.AUDIO_TRIMMED_SECONDS.inc(amount=PACKET_MS / 1000)

    def take(self) -> _Taken:
        end = min(len(self._records), self._speech_end + self._tail) if self.voiced else len(self._records)
        taken = _Taken(b"".join(self._records[:end]), end, self.voiced)
        rest = list(zip(self._records[end:], self._activity[end:], strict=True))
        self._records, self._activity = [], []
        self._size = self._speech_end = self._voiced_end = self.voiced = 0
        for record, activity in rest:
            self._append(record, activity)
        return taken


def speech_packets(packets: list[bytes], silence_packet_max_bytes: int) -> list[bool]:
    """Which packets of a stream ``endpointing = "voice"`` takes for speech (voiced, or a final consonant after
    voice); the runs of the others are the pauses it can see (benchmarks/endpointing.py measures them)."""
    buf = _VoiceBuffer(silence_packet_max_bytes, lead_in=len(packets), tail=0)  # trims nothing
    speech = []
    for packet in packets:
        buf.add(packet)
        speech.append(buf.voiced > 0 and buf.trailing_ms == 0)
    return speech


class Segmenter:
    """One session's open utterance buffer and the rules that close it.

    Hangover is not applied: lingua only delayed its cuts by it (chunks arriving meanwhile went to
    the next utterance anyway), so Dragoman cuts at once and the node appends ``padding_ms``.
    """

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._voice = settings.endpointing == "voice"
        self._buf: _VerbatimBuffer | _VoiceBuffer
        if self._voice:
            lead_in, tail = (-(-ms // PACKET_MS) for ms in (settings.voice_lead_in_ms, settings.voice_tail_ms))
            self._buf = _VoiceBuffer(settings.silence_packet_max_bytes, lead_in, tail)
            self._min_voice_ms = settings.min_voice_ms
        else:
            self._buf = _VerbatimBuffer(settings.silence_packet_max_bytes)
            self._min_voice_ms = PACKET_MS  # §10.6 (1): one voiced packet is enough
        self._client_ts: int | None = None
        self._last_chunk: float | None = None
        self._last_chunk_ms = 0  # voice: the audio of the last chunk that carried some
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
            if not (self._buf.voiced if self._voice else self._buf):
                self._client_ts = client_ts  # voice: lead-in carried from an earlier chunk does not count
            if isinstance(self._buf, _VoiceBuffer):
                cuts += self._add_voice(self._buf, payload, now, client_ts)
            elif self._buf.add(payload):
                self._last_voiced = now
        reason: CutReason | None = None
        if len(self._buf) > self._s.max_length_bytes:
            reason = CutReason.MAX_LENGTH
        elif is_final:
            reason = CutReason.IS_FINAL
        elif self._buf.packets * PACKET_MS >= self._s.max_duration_ms:
            reason = CutReason.MAX_DURATION
        if reason is CutReason.IS_FINAL and 0 < self._buf.voiced * PACKET_MS < self._s.min_utterance_ms:
            self._held = True  # §10.6 (2): an onset split off by the client's silence detector
            metrics.CUTS.inc("merged")
            reason = None
        if reason is not None:
            cuts += self._cut(reason)
        else:
            self._timer_base = now
        return cuts

    def _add_voice(self, buf: _VoiceBuffer, payload: bytes, now: float, client_ts: int | None) -> list[Cut]:
        """Add a chunk packet by packet: where the pause after voice becomes long enough, even inside the chunk
        (a file streamed faster than real time comes in long chunks), an Endpoint cut takes what came before and
        the rest of the chunk goes on into the next utterance."""
        cuts: list[Cut] = []
        packets = 0
        for packet in plan_a_packets(payload):
            packets += 1
            if buf.add(packet):
                self._last_voiced = now
            elif buf.voiced and buf.trailing_ms >= required_silence_ms(self._s, buf.speech_ms):
                cuts += self._cut(CutReason.ENDPOINT)
                self._client_ts = client_ts
        self._last_chunk_ms = packets * PACKET_MS or self._last_chunk_ms
        return cuts

    def _endpoint_deadline(self) -> float | None:
        """voice: when the pause reaches the required silence if the client, streaming in real time, sends no
        voice meanwhile; a client that stops sending is taken to be silent. The audio on its way is taken to
        continue the pause only once the pause seen is ``endpoint_min_silence_ms`` long (longer than pauses
        inside sentences): before, the cut waits for that audio, or for the chunk to be ``CHUNK_LATE_MS`` late."""
        buf = self._buf
        if (
            not isinstance(buf, _VoiceBuffer)
            or not buf.voiced
            or self._last_chunk is None
            or self._tts_since is not None
        ):
            return None
        pause = buf.trailing_ms
        wait = required_silence_ms(self._s, buf.speech_ms) - pause
        if pause < self._s.endpoint_min_silence_ms:
            wait = max(wait, self._last_chunk_ms + CHUNK_LATE_MS)
        return self._last_chunk + wait

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
        endpoint = self._endpoint_deadline()
        if endpoint is not None:
            deadlines.append(endpoint)
        return min(deadlines) if deadlines else None

    def on_timer(self, now: float) -> list[Cut]:
        if self._tts_since is not None and not self._tts_playing(now):
            self._tts_since = None  # no tts_play_ended within the bound: playback is over
            self._timer_base = now
        endpoint = self._endpoint_deadline()
        if endpoint is not None and now >= endpoint:
            return self._cut(CutReason.ENDPOINT)
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
        taken, client_ts = self._buf.take(), self._client_ts
        self._client_ts = None
        self._held = False
        self._timer_base = None
        turn_id = self.turn_id
        if reason is not CutReason.MAX_DURATION:
            self.turn_id = new_uuid()  # a MaxDuration cut continues its turn (§10.4)
        if not taken.audio:
            return []
        voice_ms = taken.voiced * PACKET_MS
        if voice_ms < self._min_voice_ms:
            metrics.CUTS.inc("discarded")  # §10.6 (1): no voice, no job, no index
            metrics.VOICELESS_CUTS.inc(reason.value)
            metrics.AUDIO_TRIMMED_SECONDS.inc(amount=taken.packets * PACKET_MS / 1000)
            return []
        metrics.CUTS.inc(reason.value)
        metrics.AUDIO_SENT_SECONDS.inc(amount=taken.packets * PACKET_MS / 1000)
        metrics.VOICE_SENT_SECONDS.inc(amount=voice_ms / 1000)
        return [Cut(taken.audio, reason, turn_id, taken.packets * PACKET_MS, client_ts, voice_ms)]
