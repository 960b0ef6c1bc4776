"""Plan A Opus, the streaming format of lingua (PROTOCOL.md §4.1): 16 kHz mono, 20 ms packets, application
VOIP, each packet framed as a u16 little-endian length followed by its bytes, no container.

The codec is libopus as bundled in the wheels of PyAV (the ``av`` package): of the libopus bindings on PyPI
it is the maintained one that installs with pip alone (no system ``libopus0``), on Linux, macOS and Windows.
It is imported lazily, so what does not use Opus (the client's pcm16 utterances and HTTP API, a node sending
``pcm16`` speech) works without it. The client encodes the speech it streams and decodes the speech it gets
back; the node agent encodes its TTS output (``--tts-format opus``) with the same encoder.

Two differences from calling libopus directly, both handled here:
- FFmpeg always sets a bitrate, so the encoder gets libopus's own automatic value for 16 kHz mono 20 ms
  (``60 * Fs / frame_size + Fs * channels`` = 19 kbit/s), which is what "the encoder's default bitrate" means;
- FFmpeg's decoder always outputs 48 kHz, so decoded audio is brought back to 16 kHz (exactly 320 samples per
  20 ms packet).
"""

from __future__ import annotations

import fractions
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from dragoman.audio import plan_a_packets
from dragoman.errors import AudioError, CodecUnavailableError
from dragoman.pcm import SAMPLE_RATE, Converter

if TYPE_CHECKING:
    from types import ModuleType

#: Samples in one 20 ms packet at 16 kHz.
PACKET_SAMPLES = 320
PACKET_MS = 20
#: Packets in one ``audio_chunk`` of lingua's web client (260 ms, §4.4).
CHUNK_PACKETS = 13
#: lingua's Electron node skips records longer than this (§4.1).
#: libopus's automatic bitrate for 16 kHz mono 20 ms packets: 60 * 16000 / 320 + 16000.
DEFAULT_BITRATE = 19000

_FRAME_BYTES = PACKET_SAMPLES * 2
_DECODE_RATE = 48000  # what FFmpeg's Opus decoders produce, whatever is asked


def _av() -> ModuleType:
    try:
        import av
    except ImportError:
        raise CodecUnavailableError(
            "Opus needs PyAV, which is not installed: pip install av (or use --format pcm16)"
        ) from None
    return av


def opus_available() -> bool:
    """Whether the Opus codec can be loaded (PyAV is installed)."""
    try:
        _av()
    except CodecUnavailableError:
        return False
    return True


class OpusEncoder:
    """16 kHz mono s16le -> 20 ms Opus packets (application VOIP), one packet per 320 input samples."""

    def __init__(self, bitrate: int = DEFAULT_BITRATE) -> None:
        av = _av()
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = fractions.Fraction(1, SAMPLE_RATE)
        ctx.options = {"application": "voip", "frame_duration": str(PACKET_MS)}
        ctx.open()
        self._av = av
        self._ctx = ctx
        self._pending = b""
        self._pts = 0

    def encode(self, pcm: bytes) -> list[bytes]:
        """Encode every whole 20 ms frame available; a partial frame waits for more samples or ``finish``."""
        data = self._pending + pcm
        whole = len(data) - len(data) % _FRAME_BYTES
        self._pending = data[whole:]
        packets: list[bytes] = []
        for offset in range(0, whole, _FRAME_BYTES):
            packets.extend(self._encode_frame(data[offset : offset + _FRAME_BYTES]))
        return packets

    def finish(self) -> list[bytes]:
        """Encode the last partial frame, zero-padded to 20 ms as the web client pads its last packet.

        The encoder's look-ahead (a few ms) is not drained, so ``n`` samples give exactly ``ceil(n / 320)``
        packets, one per 20 ms, like a live capture.
        """
        tail, self._pending = self._pending, b""
        if not tail:
            return []
        return self._encode_frame(tail.ljust(_FRAME_BYTES, b"\0"))

    def _encode_frame(self, frame_bytes: bytes) -> list[bytes]:
        frame = self._av.AudioFrame(format="s16", layout="mono", samples=PACKET_SAMPLES)
        frame.planes[0].update(frame_bytes)
        frame.sample_rate = SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        frame.pts = self._pts
        self._pts += PACKET_SAMPLES
        return [bytes(packet) for packet in self._ctx.encode(frame)]


class OpusDecoder:
    """Opus packets -> 16 kHz mono s16le (320 samples per 20 ms packet)."""

    def __init__(self) -> None:
        av = _av()
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = _DECODE_RATE
        ctx.layout = "mono"
        self._av = av
        self._ctx = ctx
        self._down = Converter(_DECODE_RATE, 1, 2)

    def decode(self, packet: bytes) -> bytes:
        """Decode one packet. Raises ``AudioError`` for bytes that are not Opus."""
        try:
            frames = self._ctx.decode(self._av.Packet(packet))
        except self._av.error.FFmpegError as exc:
            raise AudioError(f"undecodable Opus packet of {len(packet)} bytes: {exc}") from None
        out = bytearray()
        for frame in frames:
            # FFmpeg's libopus decoder gives packed s16 unless float is requested, in the layout set above.
            if frame.format.name != "s16" or frame.layout.nb_channels != 1:
                raise AudioError(f"unexpected Opus decoder output: {frame.format.name}, {frame.layout.name}")
            out += self._down.feed(bytes(frame.planes[0])[: frame.samples * 2]).tobytes()
        return bytes(out)


def plan_a(packets: Iterable[bytes]) -> bytes:
    """Frame packets as Plan A records: u16 little-endian length, then the packet."""
    out = bytearray()
    for packet in packets:
        if len(packet) > 0xFFFF:
            raise ValueError(f"an Opus packet of {len(packet)} bytes does not fit a Plan A record")
        out += len(packet).to_bytes(2, "little")
        out += packet
    return bytes(out)


def parse_plan_a(data: bytes) -> list[bytes]:
    """The packets of a Plan A buffer, as lingua's node reads them (``dragoman.audio.plan_a_packets``)."""
    return list(plan_a_packets(data))


def encode_plan_a(pcm: bytes) -> list[bytes]:
    """All the 20 ms Opus packets of 16 kHz mono s16le audio (the last one zero-padded)."""
    encoder = OpusEncoder()
    return encoder.encode(pcm) + encoder.finish()


def plan_a_chunks(pcm: bytes, packets_per_chunk: int = CHUNK_PACKETS) -> Iterator[bytes]:
    """Plan A ``audio_chunk`` payloads of ``packets_per_chunk`` packets each (13 = the web client's 260 ms),
    encoded lazily, so that a paced sender never encodes far ahead of what it sends."""
    encoder = OpusEncoder()
    step = packets_per_chunk * _FRAME_BYTES
    for offset in range(0, len(pcm), step):
        packets = encoder.encode(pcm[offset : offset + step])
        if offset + step >= len(pcm):
            packets += encoder.finish()
        if packets:
            yield plan_a(packets)


def decode_plan_a(data: bytes) -> bytes:
    """Decode a Plan A buffer (e.g. a ``translation_result.tts_audio`` with ``tts_format "opus"``) to 16 kHz
    mono s16le."""
    decoder = OpusDecoder()
    return b"".join(decoder.decode(packet) for packet in parse_plan_a(data))


def packet_duration_ms(packet: bytes) -> float:
    """The audio duration of one Opus packet, from its TOC byte (RFC 6716 §3.1)."""
    if not packet:
        return 0.0
    toc = packet[0]
    config = toc >> 3
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        frame_ms = (10.0, 20.0, 40.0, 60.0)[config % 4]
    elif config < 16:  # hybrid: 10, 20 ms
        frame_ms = (10.0, 20.0)[config % 2]
    else:  # CELT-only: 2.5, 5, 10, 20 ms
        frame_ms = (2.5, 5.0, 10.0, 20.0)[config % 4]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    else:
        frames = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame_ms * frames
