"""Node-side audio work: reading job audio, and turning a TTS service's WAV into what a client can play.

The scheduler never decodes audio (PROTOCOL.md §1.1), but a node must: the TTS services answer with a WAV at
the voice's own rate (Piper: 22050 Hz), while ``tts_audio`` must be 16 kHz mono, either raw s16le (``pcm16``)
or Plan A Opus (``opus``) (§4.3, NODE-SERVICES.md). Feeding 22.05 kHz samples to a 16 kHz consumer plays 27 %
slow, which was a bug of the original node, so we resample first.

Resampling is plain linear interpolation in integer arithmetic, without an anti-aliasing filter: it needs no
numpy, is exact and deterministic (tests can predict the output), and for speech synthesised at 22.05 kHz the
folded band (8-11 kHz) carries little energy. It is CPU work, so callers run it in a worker thread.
"""

from __future__ import annotations

import array
import fractions
import io
import sys
import wave
from dataclasses import dataclass
from typing import Any, Final

TARGET_RATE: Final = 16_000
PACKET_MS: Final = 20
PACKET_SAMPLES: Final = TARGET_RATE * PACKET_MS // 1000  # 320 samples per Plan A packet
MAX_PLAN_A_PACKET: Final = 4096  # the Electron node skips longer records (§4.1)


class AudioError(ValueError):
    """Audio that cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class PlanAInfo:
    packets: int
    bytes: int

    @property
    def duration_ms(self) -> int:
        return self.packets * PACKET_MS


def plan_a_info(data: bytes) -> PlanAInfo:
    """Count Plan A records (u16 LE length + packet) the way the Electron node reads them: records of length
    0 or above 4096 are skipped, and a truncated tail record is ignored."""
    packets = 0
    pos, end = 0, len(data)
    while pos + 2 <= end:
        length = data[pos] | (data[pos + 1] << 8)
        pos += 2 + length
        if pos > end:
            break
        if 0 < length <= MAX_PLAN_A_PACKET:
            packets += 1
    return PlanAInfo(packets, len(data))


def pcm16_duration_ms(size: int, sample_rate: int) -> int:
    """Duration of ``size`` bytes of s16le mono (a trailing odd byte is dropped, as the node does)."""
    return (size // 2) * 1000 // sample_rate if sample_rate > 0 else 0


def _samples(data: bytes) -> array.array[int]:
    samples = array.array("h")
    samples.frombytes(data[: len(data) - len(data) % 2])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _to_bytes(samples: array.array[int]) -> bytes:
    if sys.byteorder == "big":
        samples = array.array("h", samples)
        samples.byteswap()
    return samples.tobytes()


def resample_pcm16(data: bytes, src_rate: int, dst_rate: int = TARGET_RATE) -> bytes:
    """Resample s16le mono from ``src_rate`` to ``dst_rate`` by linear interpolation.

    The output has ``round(n * dst_rate / src_rate)`` samples; output sample ``i`` sits at input position
    ``i * src_rate / dst_rate``, so the first sample is kept and the duration is preserved."""
    if src_rate <= 0 or dst_rate <= 0:
        raise AudioError(f"invalid sample rate {src_rate} -> {dst_rate}")
    src = _samples(data)
    if src_rate == dst_rate or not src:
        return _to_bytes(src)
    n_in = len(src)
    n_out = (n_in * dst_rate + src_rate // 2) // src_rate
    out = array.array("h", bytes(2 * n_out))
    last = n_in - 1
    half = dst_rate // 2
    for i in range(n_out):
        pos = i * src_rate
        i0 = pos // dst_rate
        frac = pos - i0 * dst_rate
        if i0 >= last:
            out[i] = src[last]
            continue
        a = src[i0]
        value = a * dst_rate + (src[i0 + 1] - a) * frac
        out[i] = (value + half) // dst_rate  # rounded; stays within the two neighbours, so within int16
    return _to_bytes(out)


def wav_to_pcm16(wav_bytes: bytes, dst_rate: int = TARGET_RATE) -> bytes:
    """Parse a 16-bit PCM WAV (mono, or stereo that is down-mixed) and return s16le mono at ``dst_rate``."""
    try:
        with wave.open(io.BytesIO(wav_bytes), "rb") as wav:
            width, channels, rate = wav.getsampwidth(), wav.getnchannels(), wav.getframerate()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as exc:
        raise AudioError(f"not a PCM WAV file: {exc}") from None
    if width != 2:
        raise AudioError(f"WAV sample width {8 * width} bits; 16 expected")
    if channels < 1:
        raise AudioError("WAV without channels")
    if channels > 1:
        interleaved = _samples(frames)
        mono = array.array("h", bytes(2 * (len(interleaved) // channels)))
        for i in range(len(mono)):
            base = i * channels
            mono[i] = sum(interleaved[base : base + channels]) // channels
        frames = _to_bytes(mono)
    return resample_pcm16(frames, rate, dst_rate)


def make_wav(pcm: bytes, sample_rate: int, channels: int = 1) -> bytes:
    """A 16-bit WAV of ``pcm`` (s16le): what a TTS service returns. Used by tests and tools."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(sample_rate)
        wav.writeframes(pcm)
    return out.getvalue()


def opus_available() -> bool:
    """Whether the Opus encoder can be loaded (PyAV, the ``av`` package, is installed)."""
    try:
        _av()
    except AudioError:
        return False
    return True


def _av() -> Any:
    try:
        import av  # PyAV bundles libopus in its wheels: no system library needed (same codec as dragoman.client)
    except ImportError:
        raise AudioError("Opus output needs PyAV: pip install av (or use --tts-format pcm16)") from None
    return av


def encode_plan_a(pcm: bytes) -> bytes:
    """Encode 16 kHz s16le mono as Plan A Opus (§4.1): 20 ms VOIP packets, each as a u16 LE length + packet.

    The bitrate is libopus's automatic value for 16 kHz mono 20 ms (60 * 16000 / 320 + 16000 = 19 kbit/s),
    i.e. "the encoder's default bitrate" (FFmpeg always sets one). The last frame is zero-padded to 320
    samples, as the web client pads its last packet (§4.4), so ``n`` samples give ``ceil(n / 320)`` packets."""
    av = _av()
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = TARGET_RATE
    ctx.layout = "mono"
    ctx.format = "s16"
    ctx.bit_rate = 60 * TARGET_RATE // PACKET_SAMPLES + TARGET_RATE
    ctx.time_base = fractions.Fraction(1, TARGET_RATE)
    ctx.options = {"application": "voip", "frame_duration": str(PACKET_MS)}
    ctx.open()
    frame_bytes = PACKET_SAMPLES * 2
    data = pcm[: len(pcm) - len(pcm) % 2]
    out = bytearray()
    for pts, start in enumerate(range(0, len(data), frame_bytes)):
        frame = av.AudioFrame(format="s16", layout="mono", samples=PACKET_SAMPLES)
        frame.planes[0].update(data[start : start + frame_bytes].ljust(frame_bytes, b"\0"))
        frame.sample_rate = TARGET_RATE
        frame.time_base = fractions.Fraction(1, TARGET_RATE)
        frame.pts = pts * PACKET_SAMPLES
        for packet in ctx.encode(frame):
            body = bytes(packet)
            if len(body) > 0xFFFF:  # cannot happen for a 20 ms packet; guards the u16 length
                raise AudioError(f"Opus packet of {len(body)} bytes")
            out += len(body).to_bytes(2, "little")
            out += body
    return bytes(out)
