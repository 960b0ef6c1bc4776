"""Dragoman's client library: a session client for ``/ws/session``, a client for the HTTP job API, and the
audio tools they need (WAV reading, Plan A Opus: ``dragoman.pcm`` and ``dragoman.opus``, shared with the node
agent). The ``translate`` and ``status`` commands are in ``dragoman.client.cli``.

The names below are imported on first use, so that ``dragoman serve`` (whose CLI registers the client
commands) does not load websockets, httpx or PyAV; the codec (PyAV) is only loaded when Opus is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dragoman.client.http import (
        ApiClient,
        Job,
        JobCreated,
        JobsClient,
    )
    from dragoman.client.session import (
        Backoff,
        Reconnected,
        SessionClient,
        SessionConfig,
        SessionEvent,
    )
    from dragoman.client.tracker import (
        OutcomeTracker,
        TrackedOutcome,
    )
    from dragoman.errors import (
        ApiError,
        AudioError,
        ClientError,
        CloseTimeoutError,
        CodecUnavailableError,
        ConnectError,
        ConnectionLostError,
        SessionClosedError,
    )
    from dragoman.opus import (
        OpusDecoder,
        OpusEncoder,
        decode_plan_a,
        encode_plan_a,
        parse_plan_a,
        plan_a,
        plan_a_chunks,
    )
    from dragoman.pcm import (
        SAMPLE_RATE,
        Audio,
        load_audio,
        write_wav,
    )

_EXPORTS = {
    "SAMPLE_RATE": "dragoman.pcm",
    "Audio": "dragoman.pcm",
    "load_audio": "dragoman.pcm",
    "write_wav": "dragoman.pcm",
    "ApiError": "dragoman.errors",
    "AudioError": "dragoman.errors",
    "ClientError": "dragoman.errors",
    "CloseTimeoutError": "dragoman.errors",
    "CodecUnavailableError": "dragoman.errors",
    "ConnectError": "dragoman.errors",
    "ConnectionLostError": "dragoman.errors",
    "SessionClosedError": "dragoman.errors",
    "ApiClient": "dragoman.client.http",
    "Job": "dragoman.client.http",
    "JobCreated": "dragoman.client.http",
    "JobsClient": "dragoman.client.http",
    "OpusDecoder": "dragoman.opus",
    "OpusEncoder": "dragoman.opus",
    "decode_plan_a": "dragoman.opus",
    "encode_plan_a": "dragoman.opus",
    "parse_plan_a": "dragoman.opus",
    "plan_a": "dragoman.opus",
    "plan_a_chunks": "dragoman.opus",
    "Backoff": "dragoman.client.session",
    "Reconnected": "dragoman.client.session",
    "SessionClient": "dragoman.client.session",
    "SessionConfig": "dragoman.client.session",
    "SessionEvent": "dragoman.client.session",
    "OutcomeTracker": "dragoman.client.tracker",
    "TrackedOutcome": "dragoman.client.tracker",
}
__all__ = [
    "SAMPLE_RATE",
    "ApiClient",
    "ApiError",
    "Audio",
    "AudioError",
    "Backoff",
    "ClientError",
    "CloseTimeoutError",
    "CodecUnavailableError",
    "ConnectError",
    "ConnectionLostError",
    "Job",
    "JobCreated",
    "JobsClient",
    "OpusDecoder",
    "OpusEncoder",
    "OutcomeTracker",
    "Reconnected",
    "SessionClient",
    "SessionClosedError",
    "SessionConfig",
    "SessionEvent",
    "TrackedOutcome",
    "decode_plan_a",
    "encode_plan_a",
    "load_audio",
    "parse_plan_a",
    "plan_a",
    "plan_a_chunks",
    "write_wav",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
