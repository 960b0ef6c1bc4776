"""Who may connect: node tokens, client keys, admin keys and browser Origins (README "Security").

A secret is configured as ``name:secret`` (the name shows in logs and owns what the secret creates: node ids,
HTTP jobs) or as a bare secret (named after a prefix of its digest). Secrets are kept as SHA-256 digests and
compared in constant time against every configured digest, so neither a match nor its position shows in the
time an answer takes.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dragoman.config import ConfigError, Settings

MAX_SECRET_CHARS = 512  # longer presented secrets are refused unread: hashing them costs the server


def has_secret_files(settings: Settings) -> bool:
    """Some secrets come from a file, which SIGHUP re-reads (instead of stopping the server)."""
    return bool(settings.node_tokens_file or settings.client_keys_file or settings.admin_keys_file)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def new_resume_token() -> str:
    """The secret a client needs to resume its session (256 random bits)."""
    return secrets.token_urlsafe(32)


def resume_digest(token: str) -> str:
    """What the session record keeps of a resume token: its digest, so the store never holds the token and the
    script comparing digests leaks nothing about the token through its timing."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class _Secret:
    name: str
    digest: bytes


def _parse(setting: str, where: str, lines: Iterable[str]) -> list[_Secret]:
    parsed = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = "", line
        name, secret = name.strip(), secret.strip()
        if not secret:
            raise ConfigError(f"{setting}: {where} entry {number}: empty secret (expected name:secret)")
        if len(secret) > MAX_SECRET_CHARS:
            raise ConfigError(f"{setting}: {where} entry {number}: secret longer than {MAX_SECRET_CHARS} characters")
        parsed.append(_Secret(name or f"key-{hashlib.sha256(secret.encode()).hexdigest()[:8]}", digest(secret)))
    return parsed


class SecretSet:
    """The secrets of one setting: its list plus its file (re-read by ``load``)."""

    def __init__(self, setting: str, listed: tuple[str, ...], file: str) -> None:
        self.setting = setting
        self._listed = _parse(setting, "list", listed)
        self.file = file
        self._secrets = list(self._listed)

    def load(self) -> None:
        """Re-read the file; on an error the secrets in use stay as they were."""
        if not self.file:
            return
        try:
            text = Path(self.file).read_text()
        except OSError as exc:
            raise ConfigError(f"{self.setting}_file {self.file}: {exc.strerror or exc}") from None
        self._secrets = self._listed + _parse(self.setting, f"file {self.file}", text.splitlines())

    def __bool__(self) -> bool:
        return bool(self._secrets) or bool(self.file)

    def __len__(self) -> int:
        return len(self._secrets)

    def name_of(self, presented: str | None) -> str | None:
        """The name of the secret presented, or None; every digest is compared, without an early exit."""
        if not presented or len(presented) > MAX_SECRET_CHARS:
            return None
        given = digest(presented)
        found = None
        for secret in self._secrets:
            if hmac.compare_digest(secret.digest, given) and found is None:
                found = secret.name
        return found


def _origin(value: str) -> str:
    return value.strip().rstrip("/").lower()


@dataclass(frozen=True)
class Verdict:
    """Admitted under ``name`` ('' when no authentication applies), or refused for ``refused``. ``by_key``: the
    name is a client key's (not an allowed Origin's)."""

    name: str = ""
    refused: str = ""
    by_key: bool = False


def bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Auth:
    def __init__(self, settings: Settings) -> None:
        self.nodes = SecretSet("node_tokens", settings.node_tokens, settings.node_tokens_file)
        self.clients = SecretSet("client_keys", settings.client_keys, settings.client_keys_file)
        self.admins = SecretSet("admin_keys", settings.admin_keys, settings.admin_keys_file)
        self.origins = frozenset(_origin(o) for o in settings.allowed_origins)
        self.open_operator_endpoints = settings.open_operator_endpoints
        self.reload()

    def reload(self) -> None:
        """Re-read the secret files (SIGHUP). A bad file raises ConfigError and changes nothing."""
        for secret_set in (self.nodes, self.clients, self.admins):
            secret_set.load()

    @property
    def on(self) -> bool:
        """Any authentication is configured."""
        return bool(self.nodes or self.clients or self.origins or self.admins)

    @property
    def clients_checked(self) -> bool:
        return bool(self.clients or self.origins)

    def origin_refused(self, headers: Mapping[str, str]) -> bool:
        """With ``allowed_origins`` set, a socket from a browser page not listed is refused (both paths)."""
        origin = headers.get("origin")
        return bool(self.origins) and origin is not None and not self._origin_allowed(origin)

    def _origin_allowed(self, origin: str) -> bool:
        return "*" in self.origins or _origin(origin) in self.origins

    def node(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verdict:
        if self.origin_refused(headers):
            return Verdict(refused="origin not allowed")
        if not self.nodes:
            return Verdict()
        presented = query.get("token") or bearer(headers)
        if not presented:
            return Verdict(refused="node token required (?token= or Authorization: Bearer)")
        name = self.nodes.name_of(presented)
        return Verdict(name) if name else Verdict(refused="node token not valid")

    def session(self, headers: Mapping[str, str], query: Mapping[str, str]) -> Verdict:
        """A client socket: admitted by its key (``?key=`` or ``Authorization: Bearer``), else by an allowed
        Origin (browsers cannot set headers on a WebSocket, and lingua's web client sends no key)."""
        if self.origin_refused(headers):
            return Verdict(refused="origin not allowed")
        if not self.clients_checked:
            return Verdict()
        presented = query.get("key") or bearer(headers)
        if presented:
            name = self.clients.name_of(presented)
            return Verdict(name, by_key=True) if name else Verdict(refused="client key not valid")
        origin = headers.get("origin")
        if origin is not None and self.origins and self._origin_allowed(origin):
            return Verdict(f"origin {_origin(origin)}")
        return Verdict(refused="client key required (?key= or Authorization: Bearer)")

    def api(self, headers: Mapping[str, str]) -> Verdict:
        """An HTTP API call: a client key in ``Authorization: Bearer`` whenever clients are checked."""
        if not self.clients_checked:
            return Verdict()
        presented = bearer(headers)
        if not presented:
            return Verdict(refused="client key required (Authorization: Bearer)")
        name = self.clients.name_of(presented)
        return Verdict(name) if name else Verdict(refused="client key not valid")

    def operator(self, headers: Mapping[str, str], query_key: str | None = None) -> Verdict:
        """``/api/v1/cluster``, ``/api/v1/stats``, ``/metrics``, the dashboard and traces: an admin key once any auth
        is on, in ``Authorization: Bearer`` or as ``?key=`` (a browser opening the dashboard cannot set headers)."""
        if not self.on or self.open_operator_endpoints:
            return Verdict()
        presented = bearer(headers) or query_key
        if not presented:
            return Verdict(refused="admin key required (Authorization: Bearer; see admin_keys)")
        name = self.admins.name_of(presented)
        return Verdict(name) if name else Verdict(refused="admin key not valid")


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problem(settings: Settings, auth: Auth) -> str | None:
    """Why ``dragoman serve`` must not start: a non-loopback host without authentication (unless ``insecure``)."""
    if settings.insecure or is_loopback(settings.host):
        return None
    missing = []
    if not auth.nodes:
        missing.append("node_tokens (or node_tokens_file)")
    if not auth.clients_checked:
        missing.append("client_keys (or client_keys_file) or allowed_origins")
    if not missing:
        return None
    return (
        f"host {settings.host!r} is not loopback and {' and '.join(missing)} not set: anyone who reaches the port "
        "could act as a node or a client; set them, or pass --insecure (DRAGOMAN_INSECURE=1)"
    )


_SECRET_IN_QUERY = re.compile(r"\b(token|key)=[^&\s\"']*")


class SecretQueryFilter(logging.Filter):
    """Masks ``token=`` and ``key=`` values in log lines: uvicorn logs each WebSocket's path with its query."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "=" in message and _SECRET_IN_QUERY.search(message):
            record.msg, record.args = _SECRET_IN_QUERY.sub(r"\1=***", message), None
        return True
