"""The client commands of ``dragoman``: ``translate``, ``room`` and ``status``.

``add_parsers(subparsers)`` adds them to the main ``dragoman`` parser; each sets ``func``, which takes the
parsed arguments and returns the exit code. They also run on their own: ``python -m dragoman.client ...``.

This module imports only ``argparse`` at load time, so that ``dragoman serve`` does not pay for the client's
dependencies (websockets, rich, PyAV); the commands import them when they run.

Exit codes: 0 done; 1 some utterances failed (an ``error`` outcome, or no node took them); 2 bad arguments or an
unreadable audio file; 3 no scheduler reachable, the connection lost for good, or an HTTP API error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILED_UTTERANCES = 1
EXIT_USAGE = 2
EXIT_SCHEDULER = 3
EXIT_INTERRUPTED = 130
MAX_PCM16_UTTERANCE_S = 120
KEY_ENV = "DRAGOMAN_KEY"


def add_parsers(subparsers: Any) -> None:
    """Add ``translate`` and ``status`` to an ``argparse`` sub-parser collection (``add_subparsers()``)."""
    translate = subparsers.add_parser(
        "translate",
        help="translate a speech file through a scheduler",
        description="Stream a speech file (WAV, or raw s16le 16 kHz mono .pcm/.raw) through a scheduler and "
        "print each utterance's transcript and translation as it arrives.",
        epilog="Exit codes: 0 done, 1 some utterances failed, 2 bad arguments or audio file, "
        "3 scheduler unreachable or connection lost, 130 interrupted.",
    )
    translate.add_argument("file", type=Path, help="a WAV file (any rate, channels, 8-32 bit PCM) or .pcm/.raw")
    translate.add_argument("--src", metavar="LANG", help="source language (one-way; with --tgt)")
    translate.add_argument("--tgt", metavar="LANG", help="target language (one-way; with --src)")
    translate.add_argument(
        "--two-way", metavar="A,B", help="a two-way session between languages A and B (as the web client)"
    )
    _scheduler_argument(translate, many=True)
    translate.add_argument(
        "--realtime", action="store_true", help="send at the pace of speech (default: as fast as accepted)"
    )
    translate.add_argument(
        "--format",
        choices=("opus", "pcm16"),
        default="opus",
        help="opus: stream Plan A Opus chunks (default); pcm16: send whole utterances of raw PCM",
    )
    translate.add_argument(
        "--cut-every",
        type=float,
        metavar="SECONDS",
        help="end an utterance every SECONDS of audio (default: opus lets the scheduler cut; pcm16 uses 10)",
    )
    translate.add_argument("--out", type=Path, metavar="DIR", help="write each utterance's speech to DIR/utt-NNNN.wav")
    translate.add_argument("--json", action="store_true", help="print one JSON object per outcome instead of text")
    translate.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for outstanding results once the file is sent (default 60)",
    )
    translate.set_defaults(func=translate_command)

    room = subparsers.add_parser(
        "room",
        help="hold a translated conversation in a room",
        description="Create a room (its code is printed) or join one by code, speak a WAV file into it or only "
        "listen, and print the other members' speech translated into your language as it arrives.",
        epilog="Exit codes: 0 done, 1 the room was refused (no such room, full...), 2 bad arguments or audio file, "
        "3 scheduler unreachable or connection lost, 130 interrupted.",
    )
    actions = room.add_subparsers(dest="room_action", required=True, metavar="create|join")
    for action in ("create", "join"):
        sub = actions.add_parser(action, help=f"{action} a room")
        if action == "join":
            sub.add_argument("code", help="the room's 6-digit code")
        sub.add_argument("--lang", required=True, metavar="LANG", help="your language: you speak and hear it")
        sub.add_argument("--name", metavar="NAME", help="your display name in the room")
        sub.add_argument("--file", type=Path, metavar="WAV", help="speech to say (WAV or .pcm/.raw); default: listen")
        sub.add_argument("--realtime", action="store_true", help="speak at the pace of speech")
        sub.add_argument(
            "--listen",
            type=float,
            metavar="SECONDS",
            help="how long to stay once the file is said (default: until interrupted or the room expires)",
        )
        sub.add_argument("--json", action="store_true", help="print one JSON object per event")
        _scheduler_argument(sub, many=True)
        sub.set_defaults(func=room_command)

    status = subparsers.add_parser(
        "status",
        help="show a scheduler's instances, nodes and sessions",
        description="Show the instances, nodes (status, languages, load, last heartbeat) and sessions of a "
        "scheduler, from its GET /api/v1/cluster.",
    )
    _scheduler_argument(status, many=False)
    status.add_argument("--json", action="store_true", help="print the endpoint's JSON as it is")
    status.set_defaults(func=status_command)


def _scheduler_argument(parser: argparse.ArgumentParser, many: bool) -> None:
    """``--scheduler``, and what reaching a scheduler with authentication and TLS needs."""
    parser.add_argument(
        "--key", default=os.environ.get(KEY_ENV), help=f"the client key (admin key for status); default ${KEY_ENV}"
    )
    parser.add_argument("--ca-file", metavar="PEM", help="certificates to trust for wss:// and https:// URLs")
    parser.add_argument(
        "--scheduler",
        action="append" if many else "store",
        metavar="URL",
        help="the scheduler: ws://host:5010/ws/session or http://host:5010"
        + (" (repeat to give fallbacks, tried in turn)" if many else "")
        + "; default $DRAGOMAN_SCHEDULER, else ws://127.0.0.1:5010/ws/session",
    )


def translate_command(args: argparse.Namespace) -> int:
    """``dragoman translate``."""
    from dragoman.client.endpoints import default_schedulers, session_url
    from dragoman.client.session import SessionConfig
    from dragoman.client.translate import TranslateOptions

    name = "dragoman translate"
    if args.two_way:
        if args.src or args.tgt:
            return _fail(name, "give either --two-way A,B or --src and --tgt, not both", EXIT_USAGE)
        langs = [lang.strip() for lang in args.two_way.split(",")]
        if len(langs) != 2 or not all(langs) or langs[0] == langs[1]:
            return _fail(
                name, f"--two-way takes two different languages, e.g. zh,en (got {args.two_way!r})", EXIT_USAGE
            )
        config = SessionConfig.two_way(langs[0], langs[1])
    elif args.src and args.tgt:
        config = SessionConfig.one_way(args.src, args.tgt)
    else:
        return _fail(name, "give the languages: --src LANG --tgt LANG, or --two-way A,B", EXIT_USAGE)
    if args.cut_every is not None and args.cut_every <= 0:
        return _fail(name, "--cut-every must be a positive number of seconds", EXIT_USAGE)
    if args.format == "pcm16" and args.cut_every is not None and args.cut_every > MAX_PCM16_UTTERANCE_S:
        # One utterance is one frame: 120 s of pcm16 is 5 MB of base64, within the scheduler's 8 MiB limit.
        return _fail(name, f"--cut-every is at most {MAX_PCM16_UTTERANCE_S} s with --format pcm16", EXIT_USAGE)
    urls = args.scheduler or default_schedulers()
    try:
        urls = [session_url(u) for u in urls]
        _check_ca_file(args.ca_file)
    except ValueError as exc:
        return _fail(name, str(exc), EXIT_USAGE)
    options = TranslateOptions(
        file=args.file,
        urls=urls,
        config=config,
        audio_format=args.format,
        realtime=args.realtime,
        cut_every=args.cut_every,
        out_dir=args.out,
        timeout=args.timeout,
        key=args.key,
        ca_file=args.ca_file,
    )
    return _run(name, lambda: _translate(options, args.json))


async def _translate(options: Any, as_json: bool) -> int:
    from dragoman.client.output import JsonReporter, Reporter, RichReporter
    from dragoman.client.translate import translate

    reporter: Reporter = JsonReporter() if as_json else RichReporter()
    try:
        summary = await translate(options, reporter)
    finally:
        reporter.close()
    reporter.finished(summary)
    return EXIT_FAILED_UTTERANCES if summary.errors or summary.never_dispatched else EXIT_OK


def room_command(args: argparse.Namespace) -> int:
    """``dragoman room create|join``."""
    from dragoman.client.endpoints import default_schedulers, session_url
    from dragoman.client.room import RoomOptions

    name = f"dragoman room {args.room_action}"
    code = getattr(args, "code", None)
    if code is not None and not (code.isdigit() and len(code) == 6):
        return _fail(name, f"a room code is 6 digits (got {code!r})", EXIT_USAGE)
    if args.listen is not None and args.listen < 0:
        return _fail(name, "--listen must not be negative", EXIT_USAGE)
    try:
        urls = [session_url(u) for u in args.scheduler or default_schedulers()]
    except ValueError as exc:
        return _fail(name, str(exc), EXIT_USAGE)
    options = RoomOptions(
        urls=urls,
        lang=args.lang,
        code=code,
        name=args.name,
        file=args.file,
        realtime=args.realtime,
        listen=args.listen,
        as_json=args.json,
    )
    return _run(name, lambda: _room(options))


async def _room(options: Any) -> int:
    from dragoman.client.room import RoomRefused, run_room

    try:
        return await run_room(options)
    except RoomRefused as exc:
        return _fail(f"dragoman room {'join' if options.code else 'create'}", str(exc), EXIT_FAILED_UTTERANCES)


def status_command(args: argparse.Namespace) -> int:
    """``dragoman status``."""
    from dragoman.client.endpoints import default_schedulers, http_base

    name = "dragoman status"
    url = args.scheduler or default_schedulers()[0]
    try:
        http_base(url)
        _check_ca_file(args.ca_file)
    except ValueError as exc:
        return _fail(name, str(exc), EXIT_USAGE)
    return _run(name, lambda: _status(url, args.json, args.key, args.ca_file))


def _check_ca_file(ca_file: str | None) -> None:
    """A CA file that cannot be used is a usage error, found before connecting."""
    if ca_file:
        from dragoman.client.endpoints import tls_context

        tls_context(ca_file)


async def _status(url: str, as_json: bool, key: str | None, ca_file: str | None) -> int:
    from dragoman.client.status import fetch_status, print_json, render

    cluster, raw = await fetch_status(url, key=key, ca_file=ca_file)
    if as_json:
        print_json(raw)
    else:
        render(cluster)
    return EXIT_OK


def _run(name: str, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run a command; every expected failure becomes one line on stderr and an exit code, never a traceback
    (set DRAGOMAN_DEBUG=1 to get the traceback of an unexpected one)."""
    from dragoman.errors import AudioError, ClientError

    # The commands report problems themselves; library warnings (e.g. each reconnection attempt) stay quiet
    # unless the program configured logging.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return _fail(name, "interrupted", EXIT_INTERRUPTED)
    except AudioError as exc:
        return _fail(name, str(exc), EXIT_USAGE)
    except ClientError as exc:
        return _fail(name, str(exc), EXIT_SCHEDULER)
    except OSError as exc:  # e.g. the --out directory cannot be created
        return _fail(name, f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", EXIT_USAGE)
    except Exception as exc:
        if os.environ.get("DRAGOMAN_DEBUG"):
            raise
        return _fail(name, f"unexpected {type(exc).__name__}: {exc} (DRAGOMAN_DEBUG=1 shows the traceback)", 1)


def _fail(name: str, message: str, code: int) -> int:
    print(f"{name}: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    """The client commands alone, as ``python -m dragoman.client`` (the same as ``dragoman translate|status``)."""
    parser = argparse.ArgumentParser(prog="dragoman", description="Dragoman client commands.")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
