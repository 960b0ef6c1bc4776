"""Limits against abuse: rates per socket, sockets per peer address, and log lines that cannot flood."""

from __future__ import annotations

import logging
import time
from typing import Any

REALTIME_AUDIO_BYTES_PER_S = 32_000  # pcm16, 16 kHz, mono: what one second of audio is at most


class TokenBucket:
    """At most ``rate`` units per second on average, ``burst`` at once (0 = no limit)."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self._level = burst
        self._at = time.monotonic()

    def take(self, amount: float = 1.0) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self._level = min(self.burst, self._level + (now - self._at) * self.rate)
        self._at = now
        if amount > self._level:
            return False
        self._level -= amount
        return True


class PeerConnections:
    """Open sockets per peer address; an address leaves the map with its last socket."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, int] = {}

    def enter(self, peer: str) -> bool:
        count = self.open.get(peer, 0)
        if self.limit and count >= self.limit:
            return False
        self.open[peer] = count + 1
        return True

    def leave(self, peer: str) -> None:
        count = self.open.get(peer, 0) - 1
        if count > 0:
            self.open[peer] = count
        else:
            self.open.pop(peer, None)


class RateLimitedLog:
    """At most one line per ``kind`` every ``interval_s``; the next line says how many were left out.

    ``kind`` must come from a fixed set (a reason, not a peer address), so the map stays small."""

    def __init__(self, logger: logging.Logger, interval_s: float = 1.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.interval_s) < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            message += f" ({left_out} similar line(s) left out)"
        self.logger.log(level, message, *args)


class ClientRates:
    """The rate limits of one client socket: frames per second, and audio as a factor of real time.

    Audio is counted in bytes against pcm16 at 16 kHz mono (32,000 bytes a second of speech); Opus is far
    smaller, so for Opus the limit is loose. The burst admits one frame of the largest size (a whole utterance
    sent at once), so the limit bounds the sustained rate."""

    def __init__(self, max_messages_per_s: int, max_audio_speed: int, max_frame_bytes: int) -> None:
        self.max_messages_per_s = max_messages_per_s
        self.max_audio_speed = max_audio_speed
        self.frames = TokenBucket(max_messages_per_s, 2 * max_messages_per_s)
        audio_rate = max_audio_speed * REALTIME_AUDIO_BYTES_PER_S
        self.audio = TokenBucket(audio_rate, max(2 * audio_rate, max_frame_bytes * 3 / 4))

    def frame(self) -> str | None:
        """Why this frame is over the limit, or None."""
        if self.frames.take():
            return None
        return f"over {self.max_messages_per_s} messages per second; frame dropped"

    def audio_bytes(self, base64_chars: int) -> str | None:
        if self.audio.take(base64_chars * 3 / 4):
            return None
        return f"audio sent faster than {self.max_audio_speed}x real time; frame dropped"
