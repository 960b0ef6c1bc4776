"""A frozen node under the default timers (issue 9, item 6): how many of its in-flight utterances are lost.

Starts ``dragoman serve`` (embedded store, 127.0.0.1, default settings unless ``DRAGOMAN_*`` variables say
otherwise) and a ``dragoman node`` (echo engine) that holds every job it gets. Four sessions send two one-shot
utterances each, which that node takes; then it is stopped with SIGSTOP (socket open, nothing read or sent), a
healthy node starts, and each session sends two more utterances, which the healthy node answers. Prints, for the
16 utterances, the outcomes by type, how many were lost (not ``translation_result``) and when the frozen node's
utterances were delivered, counted from the SIGSTOP.

    python benchmarks/frozen_node.py                          # this checkout
    python benchmarks/frozen_node.py --pythonpath OLD/src     # another version's sources
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from memory import Server, open_session, start_server, stop_server, utterance
from websockets.asyncio.client import ClientConnection

SESSIONS = 4


def node(server: Server, pythonpath: str | None, *options: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    return subprocess.Popen(
        [sys.executable, "-m", "dragoman", "node", "--scheduler", server.node_url, "--engine", "echo",
         "--langs", "zh,en", "--log-level", "warning", *options],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def cluster(server: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/v1/cluster", timeout=10) as reply:
        nodes: list[dict[str, Any]] = json.loads(reply.read())["nodes"]
        return [n for n in nodes if n["online"]]


async def until(check: Any, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.1)):
        if check():
            return
        await asyncio.sleep(0.1)
    raise SystemExit("not reached in time")


async def outcomes(ws: ClientConnection, count: int, into: list[tuple[float, dict[str, Any]]]) -> None:
    while len(into) < count:
        frame = json.loads(await ws.recv())
        if frame["type"] in ("translation_result", "missing_result", "error"):
            into.append((time.monotonic(), frame))


async def run(server: Server, pythonpath: str | None) -> None:
    audio = base64.b64encode(b"\1\0" * 3200).decode()
    frozen = node(server, pythonpath, "--max-jobs", str(2 * SESSIONS), "--echo-delay-ms", "600000")
    healthy: subprocess.Popen[bytes] | None = None
    try:
        await until(lambda: len(cluster(server)) == 1)
        frozen_id = cluster(server)[0]["node_id"]
        sessions = [await open_session(server.session_url) for _ in range(SESSIONS)]
        for ws, session_id in sessions:
            for index in (0, 1):
                await ws.send(utterance(session_id, index, audio))
        await until(lambda: cluster(server)[0]["current_jobs"] == 2 * SESSIONS)
        os.kill(frozen.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        healthy = node(server, pythonpath, "--max-jobs", "16")
        await until(lambda: any(n["node_id"] != frozen_id for n in cluster(server)))
        for ws, session_id in sessions:
            for index in (2, 3):
                await ws.send(utterance(session_id, index, audio))
        got: list[list[tuple[float, dict[str, Any]]]] = [[] for _ in sessions]
        await asyncio.wait_for(
            asyncio.gather(*(outcomes(ws, 4, into) for (ws, _), into in zip(sessions, got, strict=True))), 300
        )
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        for process in (frozen, healthy):
            if process is not None:
                process.kill()
                process.wait()
    flat = [(at, frame) for into in got for at, frame in into]
    kinds = Counter(frame["type"] for _, frame in flat)
    lost = sum(n for kind, n in kinds.items() if kind != "translation_result")
    held = sorted(at - frozen_at for at, frame in flat if frame["utterance_index"] in (0, 1))
    print(f"utterances {len(flat)}; outcomes {dict(kinds)}; lost {lost}")
    print(
        f"the frozen node's {len(held)} utterances delivered {held[0]:.1f} s to {held[-1]:.1f} s after the SIGSTOP",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pythonpath", help="run dragoman serve and the nodes from these sources (PYTHONPATH)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dragoman-frozen-") as tmp:
        server = start_server(Path(tmp) / "data", args.pythonpath)
        try:
            asyncio.run(run(server, args.pythonpath))
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
