"""One log format for every line of a dragoman process, Dragoman's own and uvicorn's, as text or JSON.

The ids a line is about (``session_id``, ``job_id``, ``node_id``, ``trace_id``) are context variables: a
session's task, a node's socket and a job's handling set them once (``bind``), and a filter puts them on
every record logged while they are set, so no call site has to repeat them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

CONTEXT_FIELDS = ("session_id", "job_id", "node_id", "trace_id")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(name, default=None) for name in CONTEXT_FIELDS
}
LOG_FORMATS = ("text", "json")


def bind(**ids: str | None) -> None:
    """Set ids for the rest of the current task (a session's actor, a node's socket)."""
    for name, value in ids.items():
        _context[name].set(value)


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record (None where not bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(f"{n}={v}" for n in CONTEXT_FIELDS if (v := getattr(record, n, None)))
        return f"{line} [{ids}]" if ids else line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts (ISO 8601, UTC), level, logger, message, the bound ids, exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                body[name] = value
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


# uvicorn's (and websockets') lines for each WebSocket that opens or closes: an access log of the sockets.
_CONNECTION_LINES = frozenset({'%s - "WebSocket %s" [accepted]', "connection open", "connection closed"})


class ConnectionLinesFilter(logging.Filter):
    """Drops the per-connection lines: they go with the access log (off by default)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _CONNECTION_LINES


def configure_logging(level: str, log_format: str = "text", access_log: bool = False) -> None:
    """Every logger of the process, uvicorn's included, writes one format to stderr; without ``access_log``
    neither uvicorn's line per request nor its lines per WebSocket opened and closed are written."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    errors = logging.getLogger("uvicorn.error")
    for old_filter in [f for f in errors.filters if isinstance(f, ConnectionLinesFilter)]:
        errors.removeFilter(old_filter)
    if not access_log:
        errors.addFilter(ConnectionLinesFilter())
