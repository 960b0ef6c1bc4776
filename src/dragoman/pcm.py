"""Speech in the one shape lingua's nodes take: raw s16le, 16 kHz, mono (PROTOCOL.md §4.2).

Every lingua component works at 16 kHz mono, and Plan A Opus is encoded from that too, so audio is converted
once, on arrival: WAV of any sample rate and channel count (8/16/24/32-bit integer PCM) is downmixed by
averaging the channels and resampled; ``.pcm``/``.raw`` files are taken to be in that shape already. The client
converts the files it sends; the node agent converts what its TTS service answers (a WAV at the voice's own
rate, e.g. Piper's 22050 Hz, which a 16 kHz consumer would otherwise play 27 % slow) and the ``pcm16`` jobs
the echo engine plays back. One converter serves both, so they resample the same way.

Pure Python on purpose (``wave`` + ``array``, no numpy): the client must install anywhere the scheduler does,
and the pcm16 path must work without a codec. Audio is converted block by block, so memory stays at the
size of the result (2 bytes per output sample) whatever the input length; it is CPU work, so async callers
run it in a worker thread.

Errors are the client library's ``AudioError`` (a ``ClientError``, as the client promises its callers); the
node catches the same class.
"""

from __future__ import annotations

import array
import io
import math
import struct
import sys
import wave
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, BinaryIO

from dragoman.errors import AudioError

__all__ = [
    "RAW_SUFFIXES",
    "SAMPLE_RATE",
    "Audio",
    "AudioError",
    "Converter",
    "decode_wav",
    "load_audio",
    "make_wav",
    "resample_pcm16",
    "write_wav",
]

#: The sample rate of everything on lingua's wire.
SAMPLE_RATE = 16000
#: File suffixes read as headerless s16le 16 kHz mono.
RAW_SUFFIXES = frozenset({".pcm", ".raw"})

_BLOCK_FRAMES = 65536  # source frames converted per step
_INT32 = next(code for code in ("i", "l") if array.array(code).itemsize == 4)
_BIG_ENDIAN = sys.byteorder == "big"
_U8_TO_S8 = bytes((b + 128) & 0xFF for b in range(256))  # unsigned 8-bit WAV samples -> two's complement
_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_PCM_SUBFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
# What ``wave`` raises on a malformed file: its own Error, and plain errors from its chunk walker.
_WAVE_ERRORS = (wave.Error, EOFError, struct.error, RuntimeError, ValueError)


@dataclass(frozen=True, slots=True)
class Audio:
    """Speech ready for the wire: raw s16le samples at 16 kHz, mono, no header."""

    pcm: bytes
    #: What the file was, for messages: e.g. ``"WAV 44100 Hz, 2 channels, 16-bit"``.
    source: str

    @property
    def samples(self) -> int:
        return len(self.pcm) // 2

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE


def load_audio(path: str | Path) -> Audio:
    """Read a WAV file or a raw ``.pcm``/``.raw`` file as 16 kHz mono s16le.

    Raises ``AudioError`` with a one-line reason for a missing or unreadable file, a file that is not
    audio, an unsupported encoding (compressed or floating-point WAV) or a file without any samples.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(12)
            f.seek(0)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                audio = _read_wav(f, str(path))
            elif path.suffix.lower() in RAW_SUFFIXES:
                audio = _read_raw(f)
            else:
                raise AudioError(
                    f"{path}: not a WAV file (expected a RIFF/WAVE file, or raw s16le 16 kHz mono audio "
                    f"named *.pcm or *.raw)"
                )
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{path}: is a directory") from None
    except OSError as exc:
        raise AudioError(f"{path}: {exc.strerror or exc}") from None
    if not audio.pcm:
        raise AudioError(f"{path}: the file holds no audio samples")
    return audio


def _read_raw(f: BinaryIO) -> Audio:
    data = f.read()
    return Audio(data[: len(data) - len(data) % 2], "raw s16le 16000 Hz mono")  # a trailing odd byte is dropped


def decode_wav(data: bytes, name: str = "WAV data") -> Audio:
    """Convert WAV bytes (e.g. a TTS service's answer) to 16 kHz mono s16le, as ``load_audio`` converts a file.

    Raises ``AudioError`` (its message starts with ``name``) for bytes that are not a readable integer-PCM WAV;
    a valid WAV without samples gives empty ``pcm``."""
    return _read_wav(io.BytesIO(data), name)


def _read_wav(f: BinaryIO, name: str) -> Audio:
    try:
        reader = _WaveReader(f)
    except _WAVE_ERRORS as exc:
        raise AudioError(f"{name}: unreadable WAV file ({str(exc) or 'malformed or truncated header'})") from None
    try:
        channels, width, rate = reader.getnchannels(), reader.getsampwidth(), reader.getframerate()
        if width not in (1, 2, 3, 4):
            raise AudioError(f"{name}: unsupported WAV sample width of {8 * width} bits (8, 16, 24 or 32 only)")
        if rate <= 0:
            raise AudioError(f"{name}: invalid WAV sample rate {rate}")
        source = f"WAV {rate} Hz, {channels} channel{'s' if channels > 1 else ''}, {8 * width}-bit"
        converter = Converter(rate, channels, width)
        out = array.array("h")
        try:
            while True:
                block = reader.readframes(_BLOCK_FRAMES)
                if not block:
                    break
                out.extend(converter.feed(block))
        except _WAVE_ERRORS as exc:
            raise AudioError(f"{name}: unreadable WAV data ({str(exc) or 'malformed or truncated data'})") from None
        out.extend(converter.finish())
    finally:
        reader.close()
    return Audio(_s16le(out), source)


def resample_pcm16(pcm: bytes, rate: int, out_rate: int = SAMPLE_RATE) -> bytes:
    """Resample raw s16le mono from ``rate`` to ``out_rate`` with :class:`Converter` (a trailing odd byte is
    dropped). Raises ``ValueError`` for a rate below 1."""
    converter = Converter(rate, 1, 2, out_rate)
    out = converter.feed(pcm)
    out.extend(converter.finish())
    return _s16le(out)


def _s16le(samples: array.array[int]) -> bytes:
    if _BIG_ENDIAN:
        samples.byteswap()
    return samples.tobytes()


class _WaveReader(wave.Wave_read):
    """``wave.Wave_read`` that also accepts WAVE_FORMAT_EXTENSIBLE integer PCM.

    Python 3.11's ``wave`` rejects the extensible header, but that is what common tools (sox, ffmpeg) write
    for 24/32-bit or multi-channel PCM — exactly the files this reader must take. Python 3.12 accepts it
    itself; this override only widens the one check and keeps the module's own reading.
    """

    def _read_fmt_chunk(self, chunk: Any) -> None:
        fmt = chunk.read(16)
        if len(fmt) < 16:
            raise EOFError
        tag, channels, rate, _byte_rate, _align, bits = struct.unpack("<HHLLHH", fmt)
        if tag == _WAVE_FORMAT_EXTENSIBLE:
            ext = chunk.read(24)  # cbSize, valid bits, channel mask, SubFormat GUID
            if len(ext) < 24:
                raise EOFError
            if ext[8:10] != b"\x01\x00" or ext[10:24] != _PCM_SUBFORMAT_TAIL:
                raise wave.Error("WAVE_FORMAT_EXTENSIBLE with a non-PCM sub-format (only integer PCM is supported)")
        elif tag != _WAVE_FORMAT_PCM:
            kind = {3: "IEEE float", 6: "A-law", 7: "mu-law", 0x55: "MP3"}.get(tag, f"format tag {tag}")
            raise wave.Error(f"{kind} WAV is not supported, only integer PCM")
        if not channels:
            raise wave.Error("bad # of channels")
        self._nchannels = channels
        self._framerate = rate
        self._sampwidth = (bits + 7) // 8
        if not self._sampwidth:
            raise wave.Error("bad sample width")
        self._framesize = channels * self._sampwidth
        self._comptype = "NONE"
        self._compname = "not compressed"


class Converter:
    """Integer PCM of any rate and channel count -> 16 kHz mono s16, fed block by block.

    Channels are averaged. Resampling is exact rational arithmetic, so the output has ``floor(n * 16000 /
    rate)`` samples for ``n`` input frames whatever the block boundaries:
    - downsampling averages the input over each output sample's span (area averaging: a box low-pass that
      keeps most of the aliasing of e.g. 44.1 kHz material out of the 0-8 kHz speech band);
    - upsampling interpolates linearly between neighbouring input samples.
    """

    def __init__(self, rate: int, channels: int, width: int, out_rate: int = SAMPLE_RATE) -> None:
        if width not in (1, 2, 3, 4) or channels < 1 or rate < 1:
            raise ValueError(f"unsupported PCM layout: {rate} Hz, {channels} channels, {width} bytes")
        self.channels = channels
        self.width = width
        g = math.gcd(rate, out_rate)
        self._l, self._m = rate // g, out_rate // g  # output j spans [j*l, (j+1)*l) in units of 1/m input sample
        # Integer samples of each width are scaled to 16 bits by num/den, and divided by the channel count.
        self._num, self._den = {1: (256, 1), 2: (1, 1), 3: (1, 65536), 4: (1, 65536)}[width]
        self._den *= channels
        self._buf: list[int] = []  # channel sums not yet consumed
        self._base = 0  # absolute index of _buf[0]
        self._next = 0  # index of the next output sample
        self._carry = b""  # bytes of an incomplete frame

    def feed(self, data: bytes) -> array.array[int]:
        """Convert the next bytes of interleaved little-endian PCM; returns the output samples now complete."""
        frame = self.channels * self.width
        data = self._carry + data
        cut = len(data) - len(data) % frame
        data, self._carry = data[:cut], data[cut:]
        self._buf.extend(self._mix(self._ints(data)))
        return self._run(final=False)

    def finish(self) -> array.array[int]:
        """The remaining output samples (the last ones of an upsampled signal repeat the final input sample)."""
        return self._run(final=True)

    def _ints(self, data: bytes) -> array.array[int]:
        if self.width == 1:
            return array.array("b", data.translate(_U8_TO_S8))
        if self.width == 2:
            values = array.array("h", data)
        else:
            if self.width == 3:  # s24 -> s32 with a zero low byte: slicing runs at C speed
                wide = bytearray(len(data) // 3 * 4)
                wide[1::4], wide[2::4], wide[3::4] = data[0::3], data[1::3], data[2::3]
                data = bytes(wide)
            values = array.array(_INT32, data)
        if _BIG_ENDIAN:
            values.byteswap()
        return values

    def _mix(self, values: array.array[int]) -> list[int] | array.array[int]:
        c = self.channels
        if c == 1:
            return values
        if c == 2:
            return [a + b for a, b in zip(values[0::2], values[1::2], strict=True)]
        return list(map(sum, zip(*(values[k::c] for k in range(c)), strict=True)))

    def _run(self, final: bool) -> array.array[int]:
        if self._l == self._m:
            out = [self._scale(v, 1) for v in self._buf]
            self._base += len(self._buf)
            self._buf = []
            return array.array("h", out)
        return array.array("h", self._downsample() if self._l > self._m else self._upsample(final))

    def _scale(self, value: int, divisor: int) -> int:
        """round(value * num / (den * divisor)), clipped to s16."""
        d = self._den * divisor
        v = (2 * value * self._num + d) // (2 * d)
        return -32768 if v < -32768 else 32767 if v > 32767 else v

    def _downsample(self) -> list[int]:
        step, m, buf, base = self._l, self._m, self._buf, self._base
        prefix = [0, *accumulate(buf)]
        end = (base + len(buf)) * m
        out: list[int] = []
        j = self._next

        def area(x: int) -> int:  # integral of the buffered signal from its start to x (units of 1/m sample)
            i, r = divmod(x - base * m, m)
            return m * prefix[i] + (r * buf[i] if r else 0)

        while (j + 1) * step <= end:
            out.append(self._scale(area((j + 1) * step) - area(j * step), step))
            j += 1
        self._next = j
        self._drop((j * step) // m)
        return out

    def _upsample(self, final: bool) -> list[int]:
        step, m, buf, base = self._l, self._m, self._buf, self._base
        n = base + len(buf)
        out: list[int] = []
        j = self._next
        while True:
            k, r = divmod(j * step, m)
            if k + 1 < n:
                out.append(self._scale(buf[k - base] * (m - r) + buf[k + 1 - base] * r, m))
            elif final and k < n:
                out.append(self._scale(buf[k - base], 1))
            else:
                break
            j += 1
        self._next = j
        self._drop((j * step) // m)
        return out

    def _drop(self, first_needed: int) -> None:
        drop = min(max(first_needed - self._base, 0), len(self._buf))
        if drop:
            del self._buf[:drop]
            self._base += drop


def make_wav(pcm: bytes, sample_rate: int = SAMPLE_RATE, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV of raw s16le samples (interleaved if ``channels`` > 1; an incomplete last frame is
    dropped): what a TTS service answers, and what ``write_wav`` stores."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm[: len(pcm) - len(pcm) % (2 * channels)])
    return out.getvalue()


def write_wav(path: str | Path, pcm: bytes, sample_rate: int = SAMPLE_RATE) -> None:
    """Write raw s16le mono samples as a 16-bit PCM WAV file."""
    Path(path).write_bytes(make_wav(pcm, sample_rate))
