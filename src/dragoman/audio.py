"""Audio facts the scheduler needs, by parsing, never by decoding (PROTOCOL.md §4).

Dragoman passes audio bytes through untouched; it only counts Plan A packets to know durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

PACKET_MS = 20  # Plan A: 16 kHz mono, 20 ms per Opus packet
MAX_PACKET_BYTES = 4096  # the Electron node skips longer records (§4.1), so they carry no audio


@dataclass(frozen=True, slots=True)
class PlanAStats:
    packets: int
    voiced_packets: int  # packets longer than the silence limit

    @property
    def duration_ms(self) -> int:
        return self.packets * PACKET_MS

    @property
    def voiced_ms(self) -> int:
        return self.voiced_packets * PACKET_MS


def plan_a_packets(data: bytes) -> Iterator[bytes]:
    """The packets of a Plan A buffer (u16 little-endian length + packet), read as lingua's node reads them:
    records of length 0 or over 4096 bytes carry no audio and are skipped; a truncated last record is ignored."""
    pos, end = 0, len(data)
    while pos + 2 <= end:
        length = data[pos] | (data[pos + 1] << 8)
        pos += 2
        if pos + length > end:
            return
        if 0 < length <= MAX_PACKET_BYTES:
            yield data[pos : pos + length]
        pos += length


def plan_a_stats(data: bytes, silence_packet_max_bytes: int) -> PlanAStats:
    """Count the packets of a Plan A buffer, and those longer than the silence limit (voiced)."""
    packets = voiced = 0
    for packet in plan_a_packets(data):
        packets += 1
        if len(packet) > silence_packet_max_bytes:
            voiced += 1
    return PlanAStats(packets, voiced)


def pcm16_duration_ms(size: int, sample_rate: int) -> int:
    return size * 1000 // (2 * sample_rate) if sample_rate > 0 else 0
