"""A real Valkey Cluster of three masters on 127.0.0.1, started and stopped by the tests themselves.

``async with ValkeyCluster() as cluster:`` starts three ``valkey-server --cluster-enabled yes`` processes,
gives each a third of the 16384 hash slots, joins them with ``CLUSTER MEET`` and waits until every node
reports ``cluster_state:ok`` and knows every slot. ``cluster.url`` names the three nodes for
``dragoman.scheduler.store.store.connect``. Leaving the block stops every process (SIGTERM, then SIGKILL); on Linux
the servers also die with the test process if it is killed outright.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

import redis.asyncio as redis

from dragoman.scheduler.store.embedded import find_server_binary

SLOT_RANGES = ((0, 5460), (5461, 10922), (10923, 16383))
HOST = "127.0.0.1"

_alive: set[subprocess.Popen[bytes]] = set()  # every server not yet reaped, for the atexit safety net


class ClusterStartError(RuntimeError):
    pass


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open together, so none is picked twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: SIGKILL the server when the process that started it dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill_leftovers(processes: Iterable[subprocess.Popen[bytes]] | None = None) -> None:
    for process in list(_alive if processes is None else processes):
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(Exception):
            process.wait(5)
        _alive.discard(process)


atexit.register(_kill_leftovers)


class ValkeyNode:
    """One cluster-enabled valkey-server."""

    def __init__(self, binary: str, directory: Path, port: int, bus_port: int) -> None:
        self.directory = directory
        self.port = port
        self.bus_port = bus_port
        self.log = directory / "valkey.log"
        self.args = [
            binary,
            "--port", str(port),
            "--bind", HOST,
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-port", str(bus_port),  # not port + 10000, which may be taken or above 65535
            "--cluster-node-timeout", "2000",
            "--appendonly", "no",
            "--save", "",
            "--dir", str(directory),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.client = redis.Redis(host=HOST, port=port, decode_responses=True, socket_timeout=5)

    def launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.args,
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        _alive.add(self.process)

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    async def info(self) -> dict[str, str]:
        text: str = await self.client.execute_command("CLUSTER", "INFO")
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(OSError):
                self.process.terminate()

    async def stop(self, deadline: float) -> None:
        """Wait for the server to exit until ``deadline`` (monotonic), then kill it; never returns early."""
        process, self.process = self.process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(process.wait, max(0.0, deadline - time.monotonic()))
        finally:
            if process is not None:
                if process.poll() is None:
                    with contextlib.suppress(OSError):
                        process.kill()
                    process.wait()  # prompt after SIGKILL
                _alive.discard(process)
            with contextlib.suppress(Exception):
                await self.client.aclose()


class ValkeyCluster:
    """Three cluster-enabled valkey-servers on free loopback ports, one slot range each."""

    def __init__(self, binary: str | None = None, start_timeout: float = 20.0, stop_timeout: float = 5.0) -> None:
        self.binary = binary or find_server_binary()
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodes: list[ValkeyNode] = []
        self.startup_seconds = 0.0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._url = ""

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`` (empty until started)."""
        return self._url

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> str:
        began = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="dragoman-cluster-")
        root = Path(self._tmp.name)
        try:
            for attempt in range(3):  # a free port can be taken between picking and binding: pick again
                ports = _free_ports(2 * len(SLOT_RANGES))
                self.nodes = [
                    ValkeyNode(self.binary, root / f"try{attempt}-node{i}", ports[2 * i], ports[2 * i + 1])
                    for i in range(len(SLOT_RANGES))
                ]
                for node in self.nodes:
                    node.launch()
                if await self._wait_answering(deadline=began + self.start_timeout):
                    break
                await self._stop_nodes()
            else:
                raise ClusterStartError("valkey-server would not start on a free port (3 tries)")
            for node, (first, last) in zip(self.nodes, SLOT_RANGES, strict=True):
                await node.client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            seed = self.nodes[0]
            for node in self.nodes[1:]:
                await seed.client.execute_command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
            await self._wait_converged(deadline=began + self.start_timeout)
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        self._url = "redis+cluster://" + ",".join(f"{HOST}:{n.port}" for n in self.nodes)
        return self._url

    async def _wait_answering(self, deadline: float) -> bool:
        """True once every node answers PING; False if one exited (its port was taken, most likely)."""
        pending = list(self.nodes)
        while pending:
            for node in list(pending):
                if node.exited():
                    tail = node.log_tail()
                    if "Address already in use" in tail:
                        return False
                    raise ClusterStartError(f"valkey-server on port {node.port} exited at startup:\n{tail}")
                with contextlib.suppress(OSError, redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if await node.client.ping():
                        pending.remove(node)
            if pending and time.monotonic() > deadline:
                ports = [n.port for n in pending]
                raise ClusterStartError(f"valkey-server on ports {ports} did not answer within {self.start_timeout} s")
            if pending:
                await asyncio.sleep(0.02)
        return True

    async def _wait_converged(self, deadline: float) -> None:
        """Every node: cluster_state ok, every slot assigned and ok, every node known."""
        want = {
            "cluster_state": "ok",
            "cluster_slots_assigned": "16384",
            "cluster_slots_ok": "16384",
            "cluster_known_nodes": str(len(self.nodes)),
            "cluster_size": str(len(self.nodes)),
        }
        last: dict[int, dict[str, str]] = {}
        while True:
            for node in self.nodes:
                if node.exited():
                    raise ClusterStartError(f"valkey-server on port {node.port} exited:\n{node.log_tail()}")
                with contextlib.suppress(OSError, redis.ConnectionError, redis.TimeoutError):
                    info = await node.info()
                    last[node.port] = {k: info.get(k, "?") for k in want}
            converged = len(last) == len(self.nodes) and all(seen == want for seen in last.values())
            if converged and await self._slot_maps_agree():
                return
            if time.monotonic() > deadline:
                raise ClusterStartError(
                    f"cluster not ready within {self.start_timeout} s: want {want} on every node, got {last}"
                )
            await asyncio.sleep(0.05)

    async def _slot_maps_agree(self) -> bool:
        """Every node maps every slot range to the same owner (the port the range was given to)."""
        expected = sorted((first, last, node.port) for node, (first, last) in zip(self.nodes, SLOT_RANGES, strict=True))
        for node in self.nodes:
            rows = await node.client.execute_command("CLUSTER", "SLOTS")
            seen = sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in rows)
            if seen != expected:
                return False
        return True

    async def _stop_nodes(self) -> None:
        nodes, self.nodes = self.nodes, []
        processes = [n.process for n in nodes if n.process is not None]
        for node in nodes:
            node.terminate()  # all at once: they shut down in parallel
        deadline = time.monotonic() + self.stop_timeout
        try:
            for node in nodes:
                await node.stop(deadline)
        finally:
            # Only if a wait above was interrupted (cancelled): never leave a server behind.
            _kill_leftovers(p for p in processes if p in _alive)

    async def stop(self) -> None:
        try:
            await self._stop_nodes()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
