"""Settings: defaults, overridden by a TOML file, then ``DRAGOMAN_*`` environment variables, then flags.

Every field of ``Settings`` is a setting. Its environment variable is ``DRAGOMAN_`` plus the upper-cased
name (``DRAGOMAN_JOB_TIMEOUT_MS``); in the TOML file it is the name itself, at the top level.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def configure_logging(level: str) -> None:
    """One log format for every dragoman command, on stderr."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


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
    log_level: str = "info"
    max_message_bytes: int = 8 * 1024 * 1024  # larger frames get an error reply (the socket stays open)
    # Segmentation (PROTOCOL.md §10)
    pause_ms: int = 3000
    max_duration_ms: int = 10_000
    max_length_bytes: int = 512_000
    min_utterance_ms: int = 500
    silence_packet_max_bytes: int = 10
    tts_playing_max_ms: int = 60_000
    # Endpointing: "voice" cuts at pauses found in the Opus bitstream; "lingua" keeps lingua's rules exactly
    endpointing: str = "voice"
    endpoint_silence_ms: int = 800  # non-voice after voice that ends an utterance
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
    # Store retention
    session_result_ttl_ms: int = 60_000  # a session job's record (and outcome) once resolved
    api_result_ttl_ms: int = 600_000  # an HTTP API job's record (and result) once resolved
    binding_ttl_ms: int = 3_600_000  # slot bindings (request id -> job) and live job records
    affinity_ttl_ms: int = 600_000  # turn and session affinity to a node
    instance_ttl_ms: int = 10_000  # an instance that stops announcing itself is dead after this
    resume_grace_ms: int = 60_000  # a session whose socket closed can be resumed this long (§18.2)
    store_retry_ms: int = 30_000  # how long a node's result waits for an unreachable store before it is given up

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    kind = type(getattr(Settings(), name))
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
    if settings.endpointing not in ENDPOINTING_MODES:
        raise ConfigError(f"endpointing: expected one of {', '.join(ENDPOINTING_MODES)}, got {settings.endpointing!r}")
    for name, value in dataclasses.asdict(settings).items():
        if isinstance(value, int) and value < 0:
            raise ConfigError(f"{name}: must not be negative, got {value}")
    return settings
