"""Voice activity of Opus packets, read from the bitstream, never by decoding audio (RFC 6716).

In SILK-only and hybrid packets (TOC configs 0-15) the range-coded data of each Opus frame opens with one
voice-activity flag per SILK frame, set by the encoder's own voice activity detector, then the LBRR flag
(§4.2.3, "Header Bits"), each a bit of probability 1/2; when the flag is set and the frame is the only SILK
frame of its Opus frame, the next symbol is the frame type, which says whether the encoder found a pitch
(a voiced frame) or not (§4.2.7.3). Reading them takes the first few steps of the range decoder (§4.1).

Why the frame type as well as the flag: libopus's detector compares band energies with a noise floor it is
still learning in the first second of a stream, and lets short bursts of steady noise through, so in noise
the flag comes and goes; those frames are unvoiced. Speech has runs of pitched frames. So a packet is
``VOICED`` (pitched, or flagged where the type cannot be read), ``ACTIVE`` (flagged, unpitched: consonants,
and the noise the detector lets through) or ``SILENT``.

CELT-only packets (configs 16-31) carry no flag. They fall back to the packet-size rule of lingua (a packet
longer than ``silence_packet_max_bytes`` is voiced): the scheduler parses audio and never decodes it, and
no lingua client sends CELT at 16 kHz (libopus picks SILK for 16 kHz VOIP at the default bitrate).
"""

from __future__ import annotations

import enum

_CODE_BOT = 1 << 23  # the range is renormalised while it is at most this (EC_CODE_BOT)
_CODE_MASK = (1 << 31) - 1  # EC_CODE_TOP - 1
# silk_type_offset_VAD_iCDF: the frame type and quantiser offset of a frame with the flag set (RFC 6716 §4.2.7.3);
# symbols 0-1 are unvoiced, 2-3 voiced.
_TYPE_WITH_VOICE_ICDF = (232, 158, 10, 0)
_FIRST_VOICED_TYPE = 2


class Activity(enum.IntEnum):
    SILENT = 0
    ACTIVE = 1
    VOICED = 2


class _RangeDecoder:
    """The first steps of the Opus range decoder (RFC 6716 §4.1; libopus ``entdec.c``). Reads zeros past the
    end of the data, as libopus does."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._rng = 128
        self._rem = self._byte()
        self._val = self._rng - 1 - (self._rem >> 1)
        self._normalise()

    def _byte(self) -> int:
        pos = self._pos
        self._pos += 1
        return self._data[pos] if pos < len(self._data) else 0

    def _normalise(self) -> None:
        while self._rng <= _CODE_BOT:
            self._rng <<= 8
            sym = self._rem
            self._rem = self._byte()
            sym = ((sym << 8) | self._rem) >> 1
            self._val = ((self._val << 8) + (0xFF & ~sym)) & _CODE_MASK

    def bit(self, logp: int) -> bool:
        """``ec_dec_bit_logp``: a bit that is set with probability 1 / 2**logp."""
        s = self._rng >> logp
        bit = self._val < s
        if bit:
            self._rng = s
        else:
            self._val -= s
            self._rng -= s
        self._normalise()
        return bit

    def icdf(self, icdf: tuple[int, ...], ftb: int) -> int:
        """``ec_dec_icdf``: a symbol from an inverse cumulative table with ``2**ftb`` as its total."""
        s = self._rng
        r = s >> ftb
        symbol = -1
        while True:
            symbol += 1
            t, s = s, r * icdf[symbol]
            if self._val >= s:
                break
        self._val -= s
        self._rng = t - s
        self._normalise()
        return symbol


def _frames(packet: bytes) -> list[bytes] | None:
    """The Opus frames of a packet (RFC 6716 §3.2), or None if it is malformed."""
    code = packet[0] & 0x03
    body = packet[1:]
    if code == 0:
        return [body]
    if code == 1:
        half, odd = divmod(len(body), 2)
        return None if odd else [body[:half], body[half:]]
    if code == 2:
        size = _frame_size(body, 0)
        if size is None:
            return None
        first, used = size
        rest = body[used:]
        return [rest[:first], rest[first:]] if first <= len(rest) else None
    if not body:
        return None
    count, vbr, padded = body[0] & 0x3F, body[0] & 0x80, body[0] & 0x40
    pos, padding = 1, 0
    while padded:  # each 255 means 254 bytes of padding and another length byte
        if pos >= len(body):
            return None
        padding += body[pos] - (body[pos] == 255)
        padded = body[pos] == 255
        pos += 1
    end = len(body) - padding
    if count == 0 or end < pos:
        return None
    sizes: list[int] = []
    if vbr:
        for _ in range(count - 1):
            coded = _frame_size(body[:end], pos)
            if coded is None:
                return None
            sizes.append(coded[0])
            pos += coded[1]
        sizes.append(end - pos - sum(sizes))
    else:
        each, odd = divmod(end - pos, count)
        if odd:
            return None
        sizes = [each] * count
    if min(sizes) < 0:
        return None
    frames = []
    for length in sizes:
        frames.append(body[pos : pos + length])
        pos += length
    return frames


def _frame_size(body: bytes, pos: int) -> tuple[int, int] | None:
    """A frame length coded in one or two bytes at ``pos`` (§3.2.1): (length, bytes used)."""
    if pos >= len(body):
        return None
    if body[pos] < 252:
        return body[pos], 1
    if pos + 1 >= len(body):
        return None
    return body[pos] + 4 * body[pos + 1], 2


def _silk_frame_activity(frame: bytes, silk_frames: int, stereo: bool) -> Activity:
    if len(frame) <= 1:  # libopus takes a frame of 0 or 1 bytes as lost (DTX): nothing was said
        return Activity.SILENT
    dec = _RangeDecoder(frame)
    flags = [dec.bit(1) for _ in range(silk_frames)]  # the mid (or only) channel's flags come first
    if not any(flags):
        return Activity.SILENT
    if stereo or silk_frames > 1 or dec.bit(1):
        # The frame type follows other symbols (side-channel flags, LBRR frames): take the flag alone.
        return Activity.VOICED
    voiced = dec.icdf(_TYPE_WITH_VOICE_ICDF, 8) >= _FIRST_VOICED_TYPE
    return Activity.VOICED if voiced else Activity.ACTIVE


def _single_frame_activity(packet: bytes) -> Activity:
    """``_silk_frame_activity`` for the packet every client sends (one mono frame with one SILK frame: code 0,
    10 or 20 ms), decoded in place: the same three symbols with the range decoder inlined, since the scheduler
    reads every packet of every stream (about 2× faster than the general path; the tests compare the two)."""
    n = len(packet)
    if n <= 2:  # a frame of 0 or 1 bytes is lost (DTX)
        return Activity.SILENT
    pos = 2
    rng = 128
    rem = packet[1]
    val = rng - 1 - (rem >> 1)
    symbols = 0
    while True:
        while rng <= _CODE_BOT:
            rng <<= 8
            sym = rem
            rem = packet[pos] if pos < n else 0
            pos += 1
            sym = ((sym << 8) | rem) >> 1
            val = ((val << 8) + (0xFF & ~sym)) & _CODE_MASK
        if symbols == 2:  # the frame type, from its inverse cumulative table
            r = rng >> 8
            return Activity.VOICED if val < r * _TYPE_WITH_VOICE_ICDF[1] else Activity.ACTIVE
        s = rng >> 1  # a bit of probability 1/2: the voice-activity flag, then the LBRR flag
        bit = val < s
        if bit:
            rng = s
        else:
            val -= s
            rng -= s
        if symbols == 0 and not bit:
            return Activity.SILENT
        if symbols == 1 and bit:
            return Activity.VOICED  # LBRR frames come before the type: take the flag alone
        symbols += 1


def packet_activity(packet: bytes, silence_packet_max_bytes: int) -> Activity:
    """The voice activity of one Opus packet: the most active of its frames."""
    if not packet:
        return Activity.SILENT
    toc = packet[0]
    config = toc >> 3
    if config >= 16:  # CELT-only: no flag in the bitstream (see the module's docstring)
        return Activity.VOICED if len(packet) > silence_packet_max_bytes else Activity.SILENT
    if toc & 0x07 == 0 and (config >= 12 or config % 4 < 2):  # code 0, mono, one SILK frame
        return _single_frame_activity(packet)
    frames = _frames(packet)
    if frames is None:  # the node cannot decode it either
        return Activity.SILENT
    # SILK-only: Opus frames of 10, 20, 40 or 60 ms hold one to three SILK frames; hybrid: 10 or 20 ms, one.
    silk_frames = max(1, (10, 20, 40, 60)[config % 4] // 20) if config < 12 else 1
    stereo = bool(packet[0] & 0x04)
    return max(_silk_frame_activity(frame, silk_frames, stereo) for frame in frames)
