"""Settings: defaults, overridden by a TOML file, then ``DRAGOMAN_*`` environment variables, then flags.

Every field of ``Settings`` is a setting. Its environment variable is ``DRAGOMAN_`` plus the upper-cased
name (``DRAGOMAN_JOB_TIMEOUT_MS``); in the TOML file it is the name itself, at the top level.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dragoman.logs import LOG_FORMATS, configure_logging

__all__ = ["ConfigError", "Settings", "configure_logging", "load_settings"]


#: The values of the ``endpointing`` setting.
ENDPOINTING_MODES = ("voice", "lingua")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    # Serving
    host: str = "127.0.0.1"
    port: int = 5010
    redis_url: str = ""  # empty: start an embedded valkey-server in data_dir
    data_dir: str = "dragoman-data"
    key_prefix: str = "dragoman"
    workers: int = 1  # serve: instances on this machine sharing the port (SO_REUSEPORT) and the store
    cells: int = 1  # scheduling cells, each its own hash tag (a Redis Cluster spreads them over its masters)
    store_max_connections: int = 64  # pooled store connections (a standalone store's scripts share one of their own)
    store_pool_timeout_ms: int = 5000  # how long a call waits for a pooled connection
    log_level: str = "info"
    log_format: str = "text"  # "text" or "json" (one object a line), for Dragoman's and uvicorn's lines alike
    access_log: bool = False  # uvicorn's line per HTTP request
    max_message_bytes: int = 8 * 1024 * 1024  # larger frames get an error reply (the socket stays open)
    # Memory bounds: every buffer that input can fill has a byte limit
    max_http_body_bytes: int = 16 * 1024 * 1024  # a POST /api/v1/jobs body (a max-size job is ~8 MiB of base64)
    max_held_bytes_per_session: int = 32 * 1024 * 1024  # out-of-order utterances held by one session
    max_held_bytes: int = 256 * 1024 * 1024  # out-of-order utterances held by all sessions of the instance
    max_unsent_bytes: int = 32 * 1024 * 1024  # frames queued for one socket; a slower reader is disconnected
    handshake_timeout_ms: int = 10_000  # a socket that sends no session_init / node_register is closed; 0: never
    # WebSocket ping/pong (both sockets): a peer that answers no ping within the timeout is disconnected
    ws_ping_interval_ms: int = 5000  # 0: no pings
    ws_ping_timeout_ms: int = 10_000
    # Segmentation (PROTOCOL.md §10)
    pause_ms: int = 3000
    max_duration_ms: int = 10_000
    max_length_bytes: int = 512_000
    min_utterance_ms: int = 500
    silence_packet_max_bytes: int = 10
    tts_playing_max_ms: int = 60_000
    # Endpointing: "voice" cuts at pauses found in the Opus bitstream; "lingua" keeps lingua's rules exactly
    endpointing: str = "voice"
    endpoint_silence_ms: int = 800  # non-voice after voice that ends a short utterance
    endpoint_min_silence_ms: int = 380  # ... and a long one (in between: linearly less as it grows)
    endpoint_short_utterance_ms: int = 1000  # speech (first voice to end of speech) up to this is short
    endpoint_long_utterance_ms: int = 2500  # and from this on long
    min_voice_ms: int = 100  # a cut with less voice than this makes no job
    voice_lead_in_ms: int = 200  # non-voice kept before the first voice
    voice_tail_ms: int = 300  # non-voice kept after the last voice
    # Jobs (§11)
    default_node_capacity: int = 4
    pending_timeout_ms: int = 10_000
    job_timeout_ms: int = 60_000
    failover_max_attempts: int = 3
    model_exclusion_ms: int = 60_000
    utterance_reorder_ms: int = 5000
    tick_interval_ms: int = 250
    reconcile_interval_ms: int = 30_000  # in-flight counts checked against the jobs themselves
    node_liveness_ms: int = 45_000
    reconnect_grace_ms: int = 5000  # a re-registered node has this long to answer the attempts it held
    # Delivery (§12, §5.6)
    gap_timeout_ms: int = 30_000
    close_grace_ms: int = 5000
    group_window_ms: int = 2000
    ui_events: bool = True  # ui_events to sessions whose session_init does not say (its `ui_events` extension)
    # Rooms (§13)
    room_idle_ms: int = 1_800_000  # a room where nobody spoke for this long gets room_expired and is deleted
    room_check_interval_ms: int = 60_000  # how often idle rooms are looked for
    room_max_members: int = 16  # a join past this gets room_error ROOM_FULL
    room_join_failures: int = 5  # failed joins a socket may make per room_join_window_ms (codes are guessable)
    room_join_key_failures: int = 20  # ... and all the sockets of one client key together, on every instance
    room_join_window_ms: int = 60_000
    # Store retention
    session_result_ttl_ms: int = 60_000  # a session job's record (and outcome) once resolved
    api_result_ttl_ms: int = 600_000  # an HTTP API job's record (and result) once resolved
    binding_ttl_ms: int = 3_600_000  # slot bindings (request id -> job) and live job records
    instance_ttl_ms: int = 10_000  # an instance that stops announcing itself is dead after this
    resume_grace_ms: int = 60_000  # a session whose socket closed can be resumed this long (§18.2)
    store_retry_ms: int = 30_000  # how long a node's result waits for an unreachable store before it is given up
    # Security (README "Security"): secrets are `name:secret` (or a bare secret), lists or one per line in a file
    node_tokens: tuple[str, ...] = ()  # a node must present one (?token= or Authorization: Bearer)
    node_tokens_file: str = ""  # re-read on SIGHUP
    client_keys: tuple[str, ...] = ()  # a client must present one (?key= on /ws/session, a header on the API)
    client_keys_file: str = ""
    allowed_origins: tuple[str, ...] = ()  # browser Origins admitted on /ws/session without a key ('*': any)
    admin_keys: tuple[str, ...] = ()  # for /api/v1/cluster, /api/v1/stats and /metrics when auth is on
    admin_keys_file: str = ""
    open_operator_endpoints: bool = False  # true: those endpoints need no admin key even when auth is on
    insecure: bool = False  # serve on a non-loopback host without authentication
    ssl_certfile: str = ""  # with ssl_keyfile: serve wss:// and https://
    ssl_keyfile: str = ""
    # Limits against abuse (0: no limit)
    max_messages_per_s: int = 500  # frames a socket may send per second (a burst of twice that is allowed)
    max_audio_speed: int = 20  # audio a session may send, as a factor of real time (pcm16 16 kHz mono bytes)
    max_connections_per_peer: int = 256  # open sockets (both paths) from one peer address
    max_sessions: int = 10_000  # client sessions held by this instance

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = type(getattr(Settings(), name))
    if kind is tuple:  # a TOML list, or a comma-separated string (the environment)
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(item, str) for item in items):
            return tuple(item.strip() for item in items if item.strip())
        raise ConfigError(f"{name}: expected a list of strings")  # the value may hold secrets: not shown
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        if kind is int:
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
        if kind is bool:
            return value.strip().lower() in {"1", "true", "yes", "on"}
    raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}")


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < environment < ``overrides`` (flags; ``None`` = unset)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("DRAGOMAN_CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as exc:
            raise ConfigError(f"config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from None
        for name, value in data.items():
            if name not in _FIELDS:
                raise ConfigError(f"config file {config_file}: unknown setting {name!r}")
            values[name] = _coerce(name, value)
    for name in _FIELDS:
        env = environ.get(f"DRAGOMAN_{name.upper()}")
        if env is not None:
            values[name] = _coerce(name, env)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    settings = Settings(**values)
    if not 1 <= settings.port <= 65535:
        raise ConfigError(f"port: must be 1-65535, got {settings.port}")
    if settings.endpointing not in ENDPOINTING_MODES:
        raise ConfigError(f"endpointing: expected one of {', '.join(ENDPOINTING_MODES)}, got {settings.endpointing!r}")
    check_endpoint_rule(settings)
    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, int) and value < 0:
            raise ConfigError(f"{name}: must not be negative, got {value}")
    if settings.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: must be one of {', '.join(LOG_FORMATS)}, got {settings.log_format!r}")
    for name in ("workers", "cells", "store_max_connections"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(settings, name)}")
    if bool(settings.ssl_certfile) != bool(settings.ssl_keyfile):
        raise ConfigError("ssl_certfile and ssl_keyfile: give both (TLS) or neither")
    check_silent_node_detection(settings)
    return settings


def check_endpoint_rule(settings: Settings) -> None:
    """The pause that ends an utterance shrinks as its voice grows: the bounds must be in order."""
    if settings.endpoint_min_silence_ms > settings.endpoint_silence_ms:
        raise ConfigError(
            f"endpoint_min_silence_ms: must be at most endpoint_silence_ms ({settings.endpoint_silence_ms}), "
            f"got {settings.endpoint_min_silence_ms}"
        )
    if settings.endpoint_short_utterance_ms > settings.endpoint_long_utterance_ms:
        raise ConfigError(
            "endpoint_short_utterance_ms: must be at most endpoint_long_utterance_ms "
            f"({settings.endpoint_long_utterance_ms}), got {settings.endpoint_short_utterance_ms}"
        )


def silent_node_detection_ms(settings: Settings) -> tuple[int, str]:
    """The worst case from a node going silent (frozen process, socket open) to its attempts failing over,
    and the settings that make it: the ping timeout closes its socket, else its liveness runs out."""
    if settings.ws_ping_interval_ms > 0 and settings.ws_ping_timeout_ms > 0:
        # silent just after a pong: the next ping goes out one interval later and times out
        return settings.ws_ping_interval_ms + settings.ws_ping_timeout_ms, "ws_ping_interval_ms + ws_ping_timeout_ms"
    by_liveness = settings.node_liveness_ms + settings.tick_interval_ms
    by_timeout = settings.job_timeout_ms + settings.tick_interval_ms
    if by_liveness <= by_timeout:
        return by_liveness, "node_liveness_ms + tick_interval_ms (no pings)"
    return by_timeout, "job_timeout_ms + tick_interval_ms (no pings)"


def check_silent_node_detection(settings: Settings) -> None:
    """A silent node's attempts must fail over before a client's gap timeout gives them up (else every
    utterance it held ends in missing_result)."""
    detection, source = silent_node_detection_ms(settings)
    if detection >= settings.gap_timeout_ms:
        raise ConfigError(
            f"a silent node is detected after {source} = {detection} ms, not before gap_timeout_ms "
            f"({settings.gap_timeout_ms} ms): its utterances would be lost; shorten the pings or lengthen "
            "gap_timeout_ms"
        )
