"""The exceptions of Dragoman's tools: the client library, and the audio modules it shares with the node agent.

Every failure a caller can reasonably handle is a ``ClientError`` with a one-line message, so a program
(and ``dragoman translate``) can report it without a traceback and pick an exit code from its class.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error raised by ``dragoman.client`` and the shared audio modules; ``str(exc)`` is a
    one-line, human-readable reason."""


class AudioError(ClientError):
    """An audio file that cannot be read or converted (missing, not audio, an unsupported encoding)."""


class CodecUnavailableError(AudioError):
    """No Opus codec is installed (PyAV, from the ``av`` package, provides it)."""


class ConnectError(ClientError):
    """No scheduler could be reached, or none accepted the session (every URL was tried)."""


class ConnectionLostError(ClientError):
    """The socket dropped and reconnecting failed for good (the backoff's attempts ran out)."""


class SessionClosedError(ClientError):
    """The session is not open: not connected yet, or already closed."""


class CloseTimeoutError(ClientError):
    """``session_close`` was sent but the scheduler did not acknowledge it in time."""


class ApiError(ClientError):
    """The HTTP API answered with an error status; the server's JSON problem is kept as it was sent.

    Dragoman's problems look like ``{"error": "invalid_request", "message": "...", "field": "audio"}``.
    """

    def __init__(self, status: int, body: Any, method: str, url: str) -> None:
        self.status = status
        self.body = body
        self.method = method
        self.url = url
        problem = body if isinstance(body, dict) else {}
        self.error: str | None = _str_or_none(problem.get("error"))
        self.message: str | None = _str_or_none(problem.get("message"))
        self.field: str | None = _str_or_none(problem.get("field"))
        super().__init__(self._describe())

    def _describe(self) -> str:
        what = f"{self.method} {self.url}: HTTP {self.status}"
        if self.error or self.message:
            detail = ": ".join(part for part in (self.error, self.message) if part)
            if self.field:
                detail += f" (field {self.field})"
            return f"{what}: {detail}"
        text = str(self.body).strip().replace("\n", " ")
        return f"{what}: {text[:200]}" if text else what


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
