"""``dragoman serve``: the store (embedded unless a URL is given), the scheduler and the HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import signal
import socket
import ssl
from collections.abc import Generator
from typing import Any

import uvicorn
from redis.exceptions import RedisClusterException, RedisError

from dragoman.config import ConfigError, Settings
from dragoman.scheduler.app import create_app
from dragoman.scheduler.auth import Auth, SecretQueryFilter, exposure_problem, has_secret_files
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.store import Store, StoreConfigError
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store.store import CLUSTER_SCHEME
from dragoman.scheduler.transport import uvicorn_options

log = logging.getLogger("dragoman")


class StartupError(RuntimeError):
    """``dragoman serve`` cannot start; the message names the setting and the cause, in one line."""


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    """The listening socket, made before anything else starts, so a busy port fails at once and alone.
    ``reuse_port``: shared with the other workers of ``serve --workers`` (the kernel spreads connections)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(f"host {host!r}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise StartupError(f"port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


_PASSWORD = re.compile(r"(//[^:/@]*):[^@/]*@")
_SCHEMES = ("redis://", "rediss://", "unix://", CLUSTER_SCHEME)


def _without_password(url: str) -> str:
    return _PASSWORD.sub(r"\1:***@", url)


async def _open_store(settings: Settings, url: str) -> Store:
    """The store, connected and with its scripts loaded; a URL that cannot be used is a StartupError."""
    setting = "redis_url" if settings.redis_url else "embedded store"
    if not url.startswith(_SCHEMES):
        raise StartupError(f"{setting} {_without_password(url)!r}: unsupported; use one of {', '.join(_SCHEMES)}")
    try:
        store = Store(settings, url)
    except ValueError as exc:  # not a URL redis-py understands
        raise StartupError(f"{setting} {_without_password(url)!r}: {exc}") from None
    try:
        await store.open()
    except (RedisError, RedisClusterException, OSError) as exc:
        with contextlib.suppress(Exception):
            await store.close()
        raise StartupError(f"{setting} {_without_password(url)!r}: cannot use the store: {exc}") from None
    except StoreConfigError as exc:
        with contextlib.suppress(Exception):
            await store.close()
        raise StartupError(str(exc)) from None
    return store


class UvicornServer(uvicorn.Server):
    """uvicorn without its own signal handling: ours stops the server, then the scheduler and the store."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _auth(settings: Settings) -> Auth:
    """The authentication settings, checked before anything starts: a non-loopback host needs them."""
    try:
        auth = Auth(settings)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    if problem := exposure_problem(settings, auth):
        raise StartupError(problem)
    return auth


def _reload(auth: Auth) -> None:
    """SIGHUP: re-read the token and key files; a bad file is logged and the secrets in use stay."""
    try:
        auth.reload()
    except ConfigError as exc:
        log.error("SIGHUP: %s; the secrets in use are kept", exc)
        return
    log.info(
        "SIGHUP: secrets re-read (%d node tokens, %d client keys, %d admin keys)",
        len(auth.nodes),
        len(auth.clients),
        len(auth.admins),
    )


def _tls(settings: Settings) -> dict[str, Any]:
    if not settings.ssl_certfile:
        return {}
    for name in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(settings, name)
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise StartupError(f"{name} {path}: {exc.strerror or exc}") from None
    try:  # loaded here, as uvicorn will, so that a bad certificate or key stops serve before anything starts
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile)
    except ssl.SSLError as exc:
        raise StartupError(f"ssl_certfile/ssl_keyfile: cannot use them: {exc}") from None
    return {"ssl_certfile": settings.ssl_certfile, "ssl_keyfile": settings.ssl_keyfile}


def preflight(settings: Settings) -> tuple[Auth, dict[str, Any]]:
    """What must hold before anything starts (``serve``, or the parent of ``--workers``): the authentication
    settings (a non-loopback host needs them) and the TLS files."""
    return _auth(settings), _tls(settings)


def _tune_gc() -> None:
    """What exists once the instance has started (modules, settings, the app) lives as long as the process:
    frozen out of the cyclic garbage collector, whose full collections otherwise walk it all again and held
    the event loop up to 56 ms under load (`docs/BENCHMARKS.md`). A higher first threshold runs the
    collector about forty times less often: most of an utterance's objects are freed by reference counting."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(settings: Settings, reuse_port: bool = False) -> None:
    auth, tls = preflight(settings)
    listener = _listen(settings.host, settings.port, reuse_port)
    embedded: EmbeddedStore | None = None
    supervisor: asyncio.Task[None] | None = None
    store: Store | None = None
    url = settings.redis_url
    try:
        if not url:
            embedded = EmbeddedStore(settings.data_dir)
            url = await embedded.start()
            supervisor = asyncio.create_task(embedded.supervise(), name="embedded store supervisor")
            log.info("embedded valkey-server started: %s (data in %s)", url, embedded.data_dir)
        store = await _open_store(settings, url)
        scheduler = Scheduler(settings, store)
        await scheduler.start()
        app = create_app(scheduler, auth)
        _tune_gc()
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's lines go through Dragoman's handler (dragoman.logs): one format
            access_log=settings.access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,  # then open sockets are closed; their work stays in the store
            **uvicorn_options(settings),
            **tls,
        )
        server = UvicornServer(config)
        for name in ("uvicorn.error", "uvicorn.access"):  # after uvicorn configured its logging
            logging.getLogger(name).addFilter(SecretQueryFilter())

        def shut_down() -> None:
            server.should_exit = True
            app.state.shutting_down = True  # long-lived responses (the dashboard's events) end
            if supervisor is not None:
                supervisor.cancel()  # from now on the embedded store stops with us; it is not restarted

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shut_down)
        if has_secret_files(settings):  # SIGHUP re-reads the secret files; without any, the terminal went away
            loop.add_signal_handler(signal.SIGHUP, _reload, auth)
        else:
            loop.add_signal_handler(signal.SIGHUP, shut_down)
        base = f"{settings.host}:{settings.port}"
        ws, http = ("wss", "https") if tls else ("ws", "http")
        print(
            f"Dragoman {scheduler.instance_id} serving\n"
            f"  clients  {ws}://{base}/ws/session\n"
            f"  nodes    {ws}://{base}/ws/node\n"
            f"  health   {http}://{base}/health   metrics {http}://{base}/metrics   API {http}://{base}/openapi.json\n"
            f"  store    {_without_password(url)}",
            flush=True,
        )
        try:
            await server.serve(sockets=[listener])
        finally:
            await scheduler.stop()
    finally:
        listener.close()
        if store is not None:
            with contextlib.suppress(Exception):
                await store.close()
        if supervisor is not None:
            supervisor.cancel()
        if embedded is not None:
            await embedded.stop()
            log.info("embedded valkey-server stopped")
