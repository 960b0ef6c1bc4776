"""Unit tests of dragoman.scheduler.voice: voice activity read from Opus packets that libopus (PyAV) encodes here from
generated signals, and from packets built by hand for the framing cases."""

from __future__ import annotations

import fractions
import random
from collections import Counter

import av
import pytest

from dragoman.opus import encode_plan_a
from dragoman.scheduler.voice import (
    Activity,
    _RangeDecoder,
    _silk_frame_activity,
    _single_frame_activity,
    packet_activity,
)

from signals import mix, noise, silence, speechlike

SILENCE_MAX = 10
WARM_UP_PACKETS = 50  # libopus's detector learns the background during the first second of a stream


def activities(pcm: bytes) -> list[Activity]:
    return [packet_activity(packet, SILENCE_MAX) for packet in encode_plan_a(pcm)]


def test_range_decoder_reads_the_first_bit_from_the_top_of_the_first_byte() -> None:
    """With probability 1/2 the first decoded bit is the first bit of the stream (ec_dec_init, ec_dec_bit_logp)."""
    for first in range(256):
        assert _RangeDecoder(bytes([first, 0x55, 0xAA])).bit(1) is (first >= 0x80)


def test_range_decoder_decodes_bits_and_symbols_in_sequence() -> None:
    """0b10 then 0b1011_0000: flag set, LBRR clear, a voiced frame type; 0b1000_0000: an unvoiced one."""
    dec = _RangeDecoder(bytes([0xB0, 0, 0, 0]))
    assert (dec.bit(1), dec.bit(1), dec.icdf((232, 158, 10, 0), 8)) == (True, False, 2)
    dec = _RangeDecoder(bytes([0x80, 0, 0, 0]))
    assert (dec.bit(1), dec.bit(1), dec.icdf((232, 158, 10, 0), 8)) == (True, False, 0)
    assert _RangeDecoder(b"").bit(1) is False  # past the end it reads zeros, as libopus does


def test_libopus_packets_are_silk_wideband_20_ms_without_lbrr() -> None:
    """What the rest relies on: PyAV's libopus (VOIP, 16 kHz) writes SILK-only wideband 20 ms, one frame, and no
    LBRR (in-band FEC is off), so the frame type follows the flags."""
    packets = encode_plan_a(speechlike(1000, seed=3))
    assert {packet[0] >> 3 for packet in packets} == {9} and {packet[0] & 3 for packet in packets} == {0}
    for packet in packets:
        dec = _RangeDecoder(packet[1:])
        dec.bit(1)
        assert dec.bit(1) is False


def test_speech_is_voiced_and_digital_silence_is_silent() -> None:
    acts = activities(silence(500) + speechlike(2000, seed=1) + silence(1000))
    lead, speech, tail = acts[:25], acts[25:125], acts[130:]
    assert set(lead) == set(tail) == {Activity.SILENT}
    counts = Counter(speech)
    assert counts[Activity.VOICED] >= 60, counts  # mostly pitched; the bursts between syllables are not
    assert counts[Activity.SILENT] <= 10, counts


@pytest.mark.parametrize("dbfs", [-50, -40, -30])
def test_noise_is_never_voiced(dbfs: float) -> None:
    """The flag alone comes and goes in noise (and is set while the detector warms up); the frames are unpitched."""
    acts = activities(noise(4000, dbfs, seed=7))
    assert Activity.VOICED not in acts
    settled = acts[WARM_UP_PACKETS:]
    assert settled.count(Activity.SILENT) > len(settled) / 2


@pytest.mark.parametrize("dbfs", [-50, -40, -30])
def test_speech_in_noise_is_voiced_and_the_noise_around_it_is_not(dbfs: float) -> None:
    pcm = noise(1500, dbfs, seed=1) + mix(speechlike(2000, seed=2), noise(2000, dbfs, seed=2)) + noise(2000, dbfs, 3)
    acts = activities(pcm)
    before, speech, after = acts[:75], acts[75:175], acts[180:]
    assert Activity.VOICED not in before and Activity.VOICED not in after
    assert speech.count(Activity.VOICED) >= 40


def _encode_48k(pcm16k: bytes, application: str, bitrate: int) -> list[bytes]:
    """Encode with libopus at 48 kHz (resampled by repeating samples), where it may pick hybrid or CELT."""
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.bit_rate = 48000, "mono", "s16", bitrate
    ctx.time_base = fractions.Fraction(1, 48000)
    ctx.options = {"application": application, "frame_duration": "20"}
    ctx.open()
    samples = memoryview(pcm16k).cast("h")
    up = bytes(memoryview(bytes(b"".join(s.to_bytes(2, "little", signed=True) * 3 for s in samples))))
    packets: list[bytes] = []
    for k, offset in enumerate(range(0, len(up) - 1920 + 1, 1920)):
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(up[offset : offset + 1920])
        frame.sample_rate, frame.time_base, frame.pts = 48000, fractions.Fraction(1, 48000), k * 960
        packets += [bytes(p) for p in ctx.encode(frame)]
    return packets


def test_hybrid_packets_carry_the_flag_too() -> None:
    packets = _encode_48k(silence(500) + speechlike(1500, seed=4) + silence(1000), "voip", 48000)
    hybrid = [p for p in packets if 12 <= p[0] >> 3 <= 15]
    assert len(hybrid) >= 40  # libopus picks hybrid for super-wideband at 48 kbit/s (later CELT, for "music")
    acts = [packet_activity(p, SILENCE_MAX) for p in hybrid]
    assert set(acts[:25]) == {Activity.SILENT}  # the leading silence
    assert acts[25:].count(Activity.VOICED) >= 10


def test_celt_only_packets_fall_back_to_the_size_rule() -> None:
    packets = _encode_48k(speechlike(1000, seed=5), "lowdelay", 32000)
    assert all(p[0] >> 3 >= 16 for p in packets)  # restricted low delay: CELT only
    assert {packet_activity(p, SILENCE_MAX) for p in packets} == {Activity.VOICED}
    celt_20ms = 0xF8  # config 31: CELT FB 20 ms, one frame
    assert packet_activity(bytes([celt_20ms]) + b"\xff" * 9, SILENCE_MAX) is Activity.SILENT  # 10 bytes: silence
    assert packet_activity(bytes([celt_20ms]) + b"\x00" * 11, SILENCE_MAX) is Activity.VOICED


SILK_WB_20MS = 0x48  # config 9, mono, code 0
VOICED_FRAME = bytes([0xB0]) + bytes(20)
UNVOICED_FRAME = bytes([0x80]) + bytes(20)
SILENT_FRAME = bytes([0x00]) + bytes(20)


def test_frame_types_of_a_single_frame_packet() -> None:
    assert packet_activity(bytes([SILK_WB_20MS]) + VOICED_FRAME, SILENCE_MAX) is Activity.VOICED
    assert packet_activity(bytes([SILK_WB_20MS]) + UNVOICED_FRAME, SILENCE_MAX) is Activity.ACTIVE
    assert packet_activity(bytes([SILK_WB_20MS]) + SILENT_FRAME, SILENCE_MAX) is Activity.SILENT
    lbrr = bytes([0xC0]) + bytes(20)  # flag set, LBRR set: the type is not next, the flag decides
    assert packet_activity(bytes([SILK_WB_20MS]) + lbrr, SILENCE_MAX) is Activity.VOICED


def test_lost_and_empty_frames_are_silent() -> None:
    assert packet_activity(b"", SILENCE_MAX) is Activity.SILENT
    assert packet_activity(bytes([SILK_WB_20MS]), SILENCE_MAX) is Activity.SILENT
    assert packet_activity(bytes([SILK_WB_20MS, 0xFF]), SILENCE_MAX) is Activity.SILENT  # one byte: DTX


def test_two_and_many_frame_packets_take_the_most_active_frame() -> None:
    code1 = bytes([SILK_WB_20MS | 1])
    assert packet_activity(code1 + SILENT_FRAME + VOICED_FRAME, SILENCE_MAX) is Activity.VOICED
    assert packet_activity(code1 + SILENT_FRAME + SILENT_FRAME, SILENCE_MAX) is Activity.SILENT
    assert packet_activity(code1 + SILENT_FRAME + b"\x00", SILENCE_MAX) is Activity.SILENT  # odd: malformed
    code2 = bytes([SILK_WB_20MS | 2, len(UNVOICED_FRAME)])
    assert packet_activity(code2 + UNVOICED_FRAME + SILENT_FRAME, SILENCE_MAX) is Activity.ACTIVE
    assert packet_activity(bytes([SILK_WB_20MS | 2, 200]) + SILENT_FRAME, SILENCE_MAX) is Activity.SILENT  # too long
    cbr3 = bytes([SILK_WB_20MS | 3, 3])  # three frames of equal size
    assert packet_activity(cbr3 + SILENT_FRAME + SILENT_FRAME + VOICED_FRAME, SILENCE_MAX) is Activity.VOICED
    vbr3 = bytes([SILK_WB_20MS | 3, 0x80 | 0x40 | 2, 3, len(SILENT_FRAME)])  # VBR, 3 bytes of padding, 2 frames
    assert packet_activity(vbr3 + SILENT_FRAME + UNVOICED_FRAME + b"\0\0\0", SILENCE_MAX) is Activity.ACTIVE
    assert packet_activity(bytes([SILK_WB_20MS | 3]), SILENCE_MAX) is Activity.SILENT  # no frame count
    assert packet_activity(bytes([SILK_WB_20MS | 3, 0x40]), SILENCE_MAX) is Activity.SILENT  # padding cut off


def test_packets_of_several_silk_frames_and_stereo_use_the_flags_alone() -> None:
    silk_wb_40ms, silk_wb_60ms = 0x50, 0x58  # configs 10 and 11: two and three SILK frames
    second_only = bytes([0x40]) + bytes(20)  # flags 0, 1: voice in the second SILK frame
    assert packet_activity(bytes([silk_wb_40ms]) + second_only, SILENCE_MAX) is Activity.VOICED
    assert packet_activity(bytes([silk_wb_60ms]) + SILENT_FRAME, SILENCE_MAX) is Activity.SILENT
    stereo = SILK_WB_20MS | 0x04
    assert packet_activity(bytes([stereo]) + UNVOICED_FRAME, SILENCE_MAX) is Activity.VOICED
    assert packet_activity(bytes([stereo]) + SILENT_FRAME, SILENCE_MAX) is Activity.SILENT


def test_the_inlined_decoder_agrees_with_the_general_one() -> None:
    rng = random.Random(7)
    tocs = [config << 3 for config in (0, 1, 4, 5, 8, 9, 12, 13, 14, 15)]  # code 0, mono, one SILK frame
    packets = [bytes([rng.choice(tocs)]) + rng.randbytes(rng.randrange(0, 80)) for _ in range(20_000)]
    packets += encode_plan_a(mix(speechlike(2000), noise(2000, -40)))
    for packet in packets:
        assert _single_frame_activity(packet) == _silk_frame_activity(packet[1:], 1, False), packet.hex()
