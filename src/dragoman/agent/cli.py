"""``dragoman node``: command-line options of the node agent.

Every option can also come from a ``DRAGOMAN_NODE_*`` environment variable (flags win), so that a node can be
configured in a container or a service unit without a command line. Options that may be repeated
(``--scheduler``, ``--tts-voice``, ``--engine-opt``) also accept comma-separated lists, in flags and variables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dragoman.agent.agent import DEFAULT_SCHEDULER, AgentConfig, NodeAgent
from dragoman.agent.engines import EngineConfig, UnknownEngine, load_engine
from dragoman.client.endpoints import tls_context
from dragoman.config import configure_logging


class ConfigError(ValueError):
    """An option that cannot be used; the message names it."""


@dataclass(frozen=True)
class _Option:
    flag: str
    env: str
    kind: Callable[[str], Any] = str
    default: Any = None
    many: bool = False  # repeatable flag / comma-separated list

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


def _env(name: str) -> str:
    return f"DRAGOMAN_NODE_{name}"


_OPTIONS: tuple[_Option, ...] = (
    _Option("--scheduler", _env("SCHEDULER"), many=True, default=(DEFAULT_SCHEDULER,)),
    _Option("--engine", _env("ENGINE")),
    _Option("--langs", _env("LANGS"), many=True),
    _Option("--max-jobs", _env("MAX_JOBS"), int, 4),
    _Option("--node-id", _env("ID")),
    _Option("--token", _env("TOKEN")),
    _Option("--ca-file", _env("CA_FILE")),
    _Option("--heartbeat-s", _env("HEARTBEAT_S"), float, 15.0),
    _Option("--log-level", _env("LOG_LEVEL"), str, "info"),
    _Option("--engine-opt", _env("ENGINE_OPT"), many=True, default=()),
    _Option("--echo-delay-ms", _env("ECHO_DELAY_MS"), int, 0),
    _Option("--echo-fail-rate", _env("ECHO_FAIL_RATE"), float, 0.0),
    _Option("--echo-empty-rate", _env("ECHO_EMPTY_RATE"), float, 0.0),
    _Option("--echo-seed", _env("ECHO_SEED"), int, 0),
    _Option("--asr-url", _env("ASR_URL")),
    _Option("--nmt-url", _env("NMT_URL")),
    _Option("--tts-url", _env("TTS_URL")),
    _Option("--tts-format", _env("TTS_FORMAT"), str, "pcm16"),
    _Option("--tts-voice", _env("TTS_VOICE"), many=True, default=()),
    _Option("--asr-timeout-s", _env("ASR_TIMEOUT_S"), float, 30.0),
    _Option("--nmt-timeout-s", _env("NMT_TIMEOUT_S"), float, 10.0),
    _Option("--tts-timeout-s", _env("TTS_TIMEOUT_S"), float, 20.0),
)
_BY_FLAG = {opt.flag: opt for opt in _OPTIONS}

DESCRIPTION = """\
Run a compute node: connect to a scheduler's /ws/node socket, register the languages of an engine,
and run the jobs the scheduler assigns (lingua's Electron-node protocol).

Engines: 'echo' is a TEST engine: it recognises, translates and synthesises nothing, and answers each job
with a deterministic description of its audio (for testing schedulers and deployments). 'http' drives
lingua's ASR, translation and TTS services (--asr-url, --nmt-url, --tts-url). More engines can be installed
as plugins (entry-point group 'dragoman.engines')."""


EPILOG = """\
Every option can also be set with the environment variable named after it (DRAGOMAN_NODE_<NAME>, shown with
each option); a flag wins over its variable. --scheduler, --tts-voice and --engine-opt take comma-separated
lists there."""


def _add(group: argparse._ArgumentGroup | argparse.ArgumentParser, flag: str, text: str, **kw: Any) -> None:
    opt = _BY_FLAG[flag]
    default = (
        f" (default {', '.join(opt.default) if opt.many else opt.default})" if opt.default not in (None, ()) else ""
    )
    group.add_argument(
        flag,
        dest=opt.dest,
        action="append" if opt.many else "store",
        default=None,
        help=f"{text}{default}; env {opt.env}",
        **kw,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The node options, shared by ``dragoman node`` and ``python -m dragoman.agent``."""
    _add(
        parser,
        "--scheduler",
        "scheduler node socket URL; repeat or comma-separate several for failover (tried in turn on disconnect)",
        metavar="URL",
    )
    required = parser.add_argument_group("required (the flag, or its environment variable)")
    _add(required, "--engine", "engine: echo (a TEST engine), http, or the name of an installed engine plugin")
    _add(required, "--langs", "languages the node serves, comma-separated (e.g. zh,en)", metavar="LANGS")
    _add(parser, "--max-jobs", "jobs run at once, announced as max_concurrent_jobs", metavar="N")
    _add(parser, "--node-id", "node id to register with (default: assigned by the scheduler)", metavar="ID")
    _add(parser, "--token", "node token, sent as ?token= in the URL (never logged)", metavar="T")
    _add(
        parser,
        "--ca-file",
        "CA certificates (PEM) trusted for a wss:// scheduler (default: the system's)",
        metavar="PEM",
    )
    _add(parser, "--heartbeat-s", "seconds between heartbeats", metavar="S")
    _add(parser, "--log-level", "debug, info, warning or error", metavar="LEVEL")
    _add(parser, "--engine-opt", "option for a plugin engine, KEY=VALUE; repeatable", metavar="KEY=VALUE")
    echo = parser.add_argument_group("echo engine (a TEST engine: deterministic fake results, no models)")
    _add(echo, "--echo-delay-ms", "artificial processing time per job", metavar="MS")
    _add(echo, "--echo-fail-rate", "share of jobs failed with PROCESSING_ERROR, 0..1", metavar="R")
    _add(echo, "--echo-empty-rate", "share of jobs answered as empty (ASR_EMPTY), 0..1", metavar="R")
    _add(echo, "--echo-seed", "seed of the failure/empty draws, for reproducible runs", metavar="N")
    http = parser.add_argument_group("http engine (lingua's ASR/NMT/TTS services)")
    _add(http, "--asr-url", "ASR service base URL, e.g. http://127.0.0.1:6007 (required)", metavar="URL")
    _add(http, "--nmt-url", "translation service base URL, e.g. http://127.0.0.1:5008 (required)", metavar="URL")
    _add(http, "--tts-url", "TTS service base URL, e.g. http://127.0.0.1:5009 (without it: no audio)", metavar="URL")
    _add(http, "--tts-format", "tts_audio format: pcm16, or opus (Plan A; needs PyAV: pip install av)", metavar="FMT")
    _add(http, "--tts-voice", "TTS voice of a language, LANG=VOICE; repeatable", metavar="LANG=VOICE")
    _add(http, "--asr-timeout-s", "ASR request deadline", metavar="S")
    _add(http, "--nmt-timeout-s", "translation request deadline", metavar="S")
    _add(http, "--tts-timeout-s", "TTS request deadline", metavar="S")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``node`` subcommand to the ``dragoman`` command; it runs :func:`run` via ``args.func``."""
    parser = subparsers.add_parser(
        "node",
        help="run a compute node agent (echo test engine, or lingua's HTTP services)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    """The stand-alone parser of ``python -m dragoman.agent``."""
    parser = argparse.ArgumentParser(
        prog="dragoman node",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _value(args: argparse.Namespace, opt: _Option, environ: Mapping[str, str]) -> Any:
    """The option's value: the flag, else its environment variable, else the default; lists are split on commas."""
    given = getattr(args, opt.dest, None)
    raw: list[str] | None
    if given is not None:
        raw = list(given) if opt.many else [given]
    elif environ.get(opt.env, "") != "":
        raw = [environ[opt.env]]
    else:
        return opt.default
    if opt.many:
        return tuple(item.strip() for value in raw for item in value.split(",") if item.strip())
    try:
        return opt.kind(raw[0])
    except ValueError:
        raise ConfigError(f"{opt.flag}: invalid value {raw[0]!r}") from None


def _pairs(flag: str, items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _check_ws_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--scheduler: not a ws:// or wss:// URL: {url!r}")
    return url


def _check_ca_file(ca_file: str | None) -> str | None:
    if ca_file:
        try:
            tls_context(ca_file)
        except ValueError as exc:
            raise ConfigError(f"--ca-file: {exc}") from None
    return ca_file or None


@dataclass(frozen=True)
class NodeOptions:
    engine: str
    agent: AgentConfig
    engine_config: EngineConfig
    log_level: str


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> NodeOptions:
    """Turn parsed flags plus ``DRAGOMAN_NODE_*`` variables into the agent's and the engine's configuration."""
    environ = os.environ if environ is None else environ
    v = {opt.dest: _value(args, opt, environ) for opt in _OPTIONS}
    if not v["engine"]:
        raise ConfigError(f"--engine is required (or {_BY_FLAG['--engine'].env}); one of: echo (TEST engine), http")
    langs = tuple(dict.fromkeys(v["langs"] or ()))
    if not langs:
        raise ConfigError(f"--langs is required (or {_BY_FLAG['--langs'].env}), e.g. --langs zh,en")
    level = str(v["log_level"]).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: expected debug, info, warning or error, got {level!r}")
    try:
        agent = AgentConfig(
            scheduler_urls=tuple(_check_ws_url(u) for u in v["scheduler"]),
            token=v["token"] or None,
            ca_file=_check_ca_file(v["ca_file"]),
            node_id=v["node_id"] or None,
            max_jobs=v["max_jobs"],
            heartbeat_interval_s=v["heartbeat_s"],
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    engine_config = EngineConfig(
        langs=langs,
        options=_pairs("--engine-opt", v["engine_opt"]),
        echo_delay_ms=v["echo_delay_ms"],
        echo_fail_rate=v["echo_fail_rate"],
        echo_empty_rate=v["echo_empty_rate"],
        echo_seed=v["echo_seed"],
        asr_url=v["asr_url"],
        nmt_url=v["nmt_url"],
        tts_url=v["tts_url"],
        tts_format=v["tts_format"],
        tts_voices=_pairs("--tts-voice", v["tts_voice"]),
        asr_timeout_s=v["asr_timeout_s"],
        nmt_timeout_s=v["nmt_timeout_s"],
        tts_timeout_s=v["tts_timeout_s"],
    )
    return NodeOptions(engine=v["engine"], agent=agent, engine_config=engine_config, log_level=level)


async def _serve(agent: NodeAgent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not available on Windows
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def run(args: argparse.Namespace) -> int:
    """Run the node until SIGINT/SIGTERM. Returns the process exit code (2 for a configuration error)."""
    try:
        options = resolve(args)
    except ConfigError as exc:
        print(f"dragoman node: {exc}", file=sys.stderr)
        return 2
    configure_logging(options.log_level)
    try:
        engine = load_engine(options.engine, options.engine_config)
    except (UnknownEngine, ValueError) as exc:
        print(f"dragoman node: {exc}", file=sys.stderr)
        return 2
    agent = NodeAgent(options.agent, engine)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(agent))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)
