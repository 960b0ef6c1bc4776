"""Dragoman: a lock-free, Redis-backed scheduler for real-time speech-translation networks."""

__version__ = "0.1.0"
