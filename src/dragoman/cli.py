"""The ``dragoman`` command."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

from dragoman import __version__, bench
from dragoman.agent.cli import add_parser as add_node_parser
from dragoman.client.cli import add_parsers as add_client_parsers
from dragoman.config import ConfigError, Settings, configure_logging, load_settings
from dragoman.logs import LOG_FORMATS
from dragoman.scheduler.store.embedded import EmbeddedStoreError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragoman", description="Scheduler for real-time speech-translation networks."
    )
    parser.add_argument("--version", action="version", version=f"dragoman {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run one scheduler instance (with an embedded store by default)",
        description="Run one scheduler instance: the client and node WebSockets, the HTTP API, /metrics and the "
        "dashboard (/dashboard). Every setting can also come from a TOML file (--config) or an environment "
        "variable DRAGOMAN_<NAME>; a flag wins.",
    )
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default 5010)")
    serve.add_argument("--redis-url", help="an external Redis/Valkey (default: start an embedded valkey-server)")
    serve.add_argument("--data-dir", help="the embedded store's directory (default ./dragoman-data)")
    serve.add_argument("--config", help="a TOML file of settings (default: none; also DRAGOMAN_CONFIG)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="(default info)")
    serve.add_argument("--log-format", choices=LOG_FORMATS, help="text, or json: one object a line (default text)")
    serve.add_argument(
        "--access-log",
        action="store_true",
        default=None,
        help="log a line per HTTP request and per WebSocket opened or closed (default off)",
    )
    serve.add_argument(
        "--workers", type=int, help="instances on this machine sharing the port and the store (default 1)"
    )
    serve.add_argument("--ssl-certfile", help="TLS certificate (PEM): serve wss:// and https:// (with --ssl-keyfile)")
    serve.add_argument("--ssl-keyfile", help="the TLS certificate's private key (PEM)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve on a non-loopback host without node tokens or client keys (anyone reaching it is trusted)",
    )
    add_node_parser(commands)
    add_client_parsers(commands)
    bench.add_parser(commands)
    return parser


def _fast_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it comes with uvicorn[standard]), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "serve":
        return int(args.func(args))
    try:
        settings = load_settings(
            {
                "host": args.host,
                "port": args.port,
                "redis_url": args.redis_url,
                "data_dir": args.data_dir,
                "log_level": args.log_level,
                "log_format": args.log_format,
                "access_log": args.access_log,
                "workers": args.workers,
                "ssl_certfile": args.ssl_certfile,
                "ssl_keyfile": args.ssl_keyfile,
                "insecure": args.insecure,
            },
            config_file=args.config,
        )
    except ConfigError as exc:
        print(f"dragoman: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format, settings.access_log)
    from dragoman.scheduler.server import StartupError, preflight
    from dragoman.scheduler.workers import run_workers

    try:
        if settings.workers > 1:
            preflight(settings)  # once, in the parent, before the store and the children start
            return run_workers(settings, lambda one: _serve(one, reuse_port=True))
        return _serve(settings, reuse_port=False)
    except (StartupError, EmbeddedStoreError, OSError) as exc:
        print(f"dragoman: {exc}", file=sys.stderr)
        return 1


def _serve(settings: Settings, reuse_port: bool) -> int:
    """One instance, until it is stopped; its exit code."""
    from dragoman.scheduler.server import StartupError, serve

    try:
        with asyncio.Runner(loop_factory=_fast_loop()) as runner:
            runner.run(serve(settings, reuse_port))
    except (StartupError, EmbeddedStoreError, OSError) as exc:
        print(f"dragoman: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0
