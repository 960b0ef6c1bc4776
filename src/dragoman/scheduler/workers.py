"""``dragoman serve --workers N``: N instances on one machine, sharing one port and one store.

The parent checks the port, starts the embedded store (unless ``redis_url`` names one) and supervises it, then
forks N children. Each child is a whole instance of its own (presence, inbox, takeover: the same as an instance
on another machine) listening on the same port with ``SO_REUSEPORT``, so the kernel spreads new connections
over them. Ctrl-C or SIGTERM stops the children gracefully, then the store. A child that dies is not replaced:
its sockets' peers reconnect to the others, which take over its work as they would a dead instance's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable

from dragoman.config import Settings
from dragoman.scheduler.auth import has_secret_files
from dragoman.scheduler.store.embedded import EmbeddedStore

log = logging.getLogger("dragoman")


def _check_port(host: str, port: int) -> None:
    """Fail at once, in the parent, if the port is taken by a socket that does not share it."""
    from dragoman.scheduler.server import StartupError

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(f"port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def run_workers(settings: Settings, run_instance: Callable[[Settings], int]) -> int:
    """Run ``settings.workers`` instances; ``run_instance`` runs one (in a child) and returns its exit code."""
    _check_port(settings.host, settings.port)
    embedded: EmbeddedStore | None = None
    url = settings.redis_url
    if not url:
        embedded = EmbeddedStore(settings.data_dir)
        url = asyncio.run(embedded.start())
        log.info(
            "embedded valkey-server started: %s (data in %s), for %d workers", url, embedded.data_dir, settings.workers
        )
    child_settings = settings.replace(redis_url=url, workers=1)
    children: list[int] = []
    try:
        for _ in range(settings.workers):
            pid = os.fork()
            if pid == 0:  # the child: one instance, then out (never back into the parent's code)
                code = 1
                try:
                    code = run_instance(child_settings)
                finally:
                    os._exit(code)
            children.append(pid)
        return asyncio.run(_supervise(children, embedded, forward_hup=has_secret_files(settings)))
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if embedded is not None:
            asyncio.run(embedded.stop())  # does nothing if the supervisor stopped it


async def _supervise(children: list[int], embedded: EmbeddedStore | None, forward_hup: bool) -> int:
    """Keep the store up while the children run; on SIGINT/SIGTERM/SIGHUP stop them; return when all ended.
    With ``forward_hup`` (secret files configured) SIGHUP goes to the children instead: each re-reads them."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    running = set(children)

    def forward_hup_to_children() -> None:
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, forward_hup_to_children if forward_hup else stopping.set)
    supervisor = asyncio.create_task(embedded.supervise()) if embedded is not None else None
    worst = 0
    try:
        while running:
            if stopping.is_set():
                for pid in running:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)  # a child already got SIGINT from the terminal: no harm
                stopping.clear()
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
                if done:
                    running.discard(pid)
                    code = os.waitstatus_to_exitcode(status)
                    if code not in (0, -signal.SIGTERM, -signal.SIGINT):
                        log.warning("worker %d ended with %d; the other workers take over its work", pid, code)
                        worst = worst or (code if code > 0 else 1)
            await asyncio.sleep(0.1)
    finally:
        if supervisor is not None:
            supervisor.cancel()
        if embedded is not None:  # in this loop: its supervisor waits for the server in this loop's executor
            await embedded.stop()
            log.info("embedded valkey-server stopped")
    return worst
