"""Test signals, 16 kHz mono s16le, made here (pure Python): speech-like syllables, noise, digital silence.

The speech-like signal is what an encoder's voice detector takes for speech: syllables of a pitched,
vowel-like sound (harmonics of a gliding fundamental under two formant peaks, with an attack and a decay),
separated by short unvoiced bursts, as in connected speech. A steady tone is not enough: libopus's detector
learns a steady sound as background within a second.
"""

from __future__ import annotations

import array
import math
import random

SAMPLE_RATE = 16000
FULL_SCALE = 32767


def _ms(n_ms: float) -> int:
    return int(SAMPLE_RATE * n_ms / 1000)


def silence(ms: float) -> bytes:
    return bytes(2 * _ms(ms))


def noise(ms: float, dbfs: float, seed: int = 0) -> bytes:
    """White Gaussian noise of ``dbfs`` RMS relative to full scale."""
    rnd = random.Random(seed)
    sigma = 10 ** (dbfs / 20) * FULL_SCALE
    return array.array("h", (max(-32768, min(32767, round(rnd.gauss(0, sigma)))) for _ in range(_ms(ms)))).tobytes()


def _syllable(ms: float, f0: float, formants: tuple[float, float], peak: float, rnd: random.Random) -> list[float]:
    n = _ms(ms)
    glide = rnd.uniform(-0.25, 0.25)
    harmonics = [k for k in range(1, 40) if k * f0 * (1 + abs(glide)) < 3800]
    weights = [sum(1 / (1 + ((k * f0 - f) / 150) ** 2) for f in formants) + 0.05 for k in harmonics]
    norm = sum(weights)
    out, phase = [], 0.0
    attack, decay = _ms(30), _ms(60)
    for i in range(n):
        phase += 2 * math.pi * f0 * (1 + glide * i / n) / SAMPLE_RATE
        env = min(1.0, i / attack, (n - i) / decay)
        out.append(peak * env * sum(w * math.sin(k * phase) for k, w in zip(harmonics, weights, strict=True)) / norm)
    return out


_VOWELS = ((730, 1090), (270, 2290), (300, 870), (530, 1840), (660, 1720), (490, 1350))


def speechlike(ms: float, seed: int = 0, level: float = 0.3) -> bytes:
    """About ``ms`` of speech-like audio: syllables of 120-280 ms, peak ``level`` of full scale."""
    rnd = random.Random(seed)
    samples: list[float] = []
    base = rnd.uniform(100, 200)
    while len(samples) < _ms(ms):
        f0 = base * rnd.uniform(0.85, 1.2)
        samples += _syllable(rnd.uniform(120, 280), f0, rnd.choice(_VOWELS), level, rnd)
        burst = _ms(rnd.uniform(30, 80))  # a consonant: a short unvoiced burst
        samples += [rnd.gauss(0, level * 0.08) for _ in range(burst)]
    samples = samples[: _ms(ms)]
    return array.array("h", (round(max(-1.0, min(1.0, x)) * FULL_SCALE) for x in samples)).tobytes()


def mix(a: bytes, b: bytes) -> bytes:
    """Sample-wise sum of two signals (clipped); the longer one's tail is kept."""
    x, y = array.array("h", a), array.array("h", b)
    if len(x) < len(y):
        x, y = y, x
    out = array.array("h", x)
    for i, v in enumerate(y):
        out[i] = max(-32768, min(32767, out[i] + v))
    return out.tobytes()
