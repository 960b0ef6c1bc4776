"""Scheduler addresses: one ``--scheduler`` value serves both the WebSocket and the HTTP API.

Users paste whatever they have at hand — ``ws://host:5010/ws/session`` (the web client's setting),
``http://host:5010`` (the dashboard's address) or a bare ``host:5010`` — so both forms are derived from
any of them instead of asking for two flags.
"""

from __future__ import annotations

import os
import ssl
from urllib.parse import urlencode, urlsplit, urlunsplit

DEFAULT_SCHEDULER = "ws://127.0.0.1:5010/ws/session"
#: Environment variable with the default scheduler URL(s), comma-separated.
SCHEDULER_ENV = "DRAGOMAN_SCHEDULER"
SESSION_PATH = "/ws/session"

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def default_schedulers() -> list[str]:
    """The scheduler URLs to use when none is given: ``$DRAGOMAN_SCHEDULER`` (comma-separated), else local."""
    env = os.environ.get(SCHEDULER_ENV, "")
    urls = [u.strip() for u in env.split(",") if u.strip()]
    return urls or [DEFAULT_SCHEDULER]


def _split(url: str) -> tuple[str, str, str, str]:
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    if not parts.netloc:
        raise ValueError(f"not a scheduler URL: {url!r}")
    return parts.scheme.lower(), parts.netloc, parts.path, parts.query


def session_url(url: str) -> str:
    """The ``/ws/session`` WebSocket URL of a scheduler given by any of its URLs (the query, e.g. a token, is kept)."""
    scheme, netloc, path, query = _split(url)
    if scheme not in _TO_WS:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (use ws, wss, http or https)")
    if path in ("", "/"):
        path = SESSION_PATH
    return urlunsplit((_TO_WS[scheme], netloc, path, query, ""))


def http_base(url: str) -> str:
    """The HTTP base URL (scheme and host only) of a scheduler given by any of its URLs."""
    scheme, netloc, _path, _query = _split(url)
    if scheme not in _TO_HTTP:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (use ws, wss, http or https)")
    return urlunsplit((_TO_HTTP[scheme], netloc, "", "", ""))


def with_query(url: str, name: str, value: str | None) -> str:
    """``url`` with ``name=value`` added to its query (a client key, a node token); unchanged for None."""
    if not value:
        return url
    parts = urlsplit(url)
    query = urlencode({name: value})
    return urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The TLS settings of wss:// and https://: the system's trusted certificates, or those of ``ca_file``
    (for a scheduler with a private CA or a self-signed certificate)."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"CA file {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
