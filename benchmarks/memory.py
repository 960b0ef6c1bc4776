"""Memory bounds of ``dragoman serve`` (issue 9, item 12): the resident memory that one client can make it take.

Each case runs against a fresh ``dragoman serve`` (embedded store, 127.0.0.1) and prints the RSS of that process
before the case, its peak during the case (VmHWM) and its RSS once the case is over, with what the server answered:

- ``body``: one 300 MB ``POST /api/v1/jobs`` body (refused with 413 by ``max_http_body_bytes``);
- ``held``: 256 out-of-order 2 MB utterances on one session (``max_held_bytes_per_session``, ``max_held_bytes``);
- ``sessions``: 20,000 ``session_init`` on one socket (one session per socket);
- ``slow``: a client that stops reading while a node streams 16 KB ``asr_partial`` frames at it (``max_unsent_bytes``);
- ``idle``: 2,000 sockets that never send ``session_init`` (``handshake_timeout_ms``).

    python benchmarks/memory.py                          # every case, against this checkout
    python benchmarks/memory.py --pythonpath OLD/src     # the same against another version's sources
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def session_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/session"

    @property
    def node_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/node"

    def memory_mb(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak) of the serve process, in MiB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1)) / 1024

    def sessions(self) -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10).read().decode()
        match = re.search(r"^dragoman_sessions (\S+)", text, re.M)
        return int(float(match.group(1))) if match else -1


def start_server(data_dir: Path, pythonpath: str | None) -> Server:
    port = free_port()
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    process = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--data-dir", str(data_dir),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
            return Server(process, port)
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"dragoman serve exited with {process.returncode}") from None
            time.sleep(0.1)
    raise SystemExit("dragoman serve did not answer /health")


def stop_server(server: Server) -> None:
    server.process.send_signal(signal.SIGTERM)
    try:
        server.process.wait(30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def session_init() -> str:
    return json.dumps({"type": "session_init", "client_version": "v", "platform": "web", "src_lang": "zh",
                       "tgt_lang": "en"})  # fmt: skip


def utterance(session_id: str, index: int, audio_b64: str) -> str:
    return json.dumps({"type": "utterance", "session_id": session_id, "utterance_index": index, "manual_cut": True,
                       "src_lang": "zh", "tgt_lang": "en", "audio": audio_b64, "audio_format": "pcm16",
                       "sample_rate": 16000})  # fmt: skip


async def open_session(url: str, **options: Any) -> tuple[ClientConnection, str]:
    ws = await connect(url, max_size=None, ping_interval=None, **options)
    await ws.send(session_init())
    return ws, json.loads(await ws.recv())["session_id"]


async def count_frames(ws: ClientConnection, counts: dict[str, int]) -> None:
    """Count received frames by type (and error messages by their start) until the socket closes."""
    try:
        async for raw in ws:
            frame = json.loads(raw)
            key = frame["type"] if frame["type"] != "error" else f"error: {frame['message'][:60]}"
            counts[key] = counts.get(key, 0) + 1
    except ConnectionClosed:
        pass


# -- the cases --------------------------------------------------------------------------------------------


async def case_body(server: Server) -> str:
    """One 300 MB POST /api/v1/jobs body, sent as fast as the server reads it."""
    size = 300 * MB
    head = b'{"src_lang":"zh","tgt_lang":"en","audio":"'
    tail = b'"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"POST /api/v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {size}\r\n\r\n".encode()
        + head
    )
    answer = asyncio.create_task(reader.readline())
    block = b"A" * MB
    sent = len(head)
    answered_at: float | None = None
    while sent < size - len(tail):
        part = block[: min(MB, size - len(tail) - sent)]
        writer.write(part)
        await writer.drain()
        sent += len(part)
        if answered_at is None and answer.done():
            answered_at = sent / MB
    writer.write(tail)
    await writer.drain()
    status = (await asyncio.wait_for(answer, 120)).decode().strip()
    writer.close()
    when = f"{answered_at:.0f} of 300 MB" if answered_at is not None else "all 300 MB"
    return f"answered {status!r} after {when} sent"


async def case_held(server: Server) -> str:
    """256 utterances of 2 MB (base64) at indexes 1..256 on one session: index 0 never comes."""
    audio = base64.b64encode(os.urandom(3 * MB // 2)).decode()
    ws, session_id = await open_session(server.session_url)
    counts: dict[str, int] = {}
    reader = asyncio.create_task(count_frames(ws, counts))
    for index in range(1, 257):
        await ws.send(utterance(session_id, index, audio))
    await asyncio.sleep(1.0)
    await ws.close()
    await reader
    return f"{sum(counts.values())} replies: {counts or 'none'}"


async def case_sessions(server: Server) -> str:
    """20,000 session_init on one socket."""
    ws = await connect(server.session_url, max_size=None, ping_interval=None)
    counts: dict[str, int] = {}
    reader = asyncio.create_task(count_frames(ws, counts))
    frame = session_init()
    for _ in range(20_000):
        await ws.send(frame)
    for _ in range(600):
        if sum(counts.values()) >= 20_000:
            break
        await asyncio.sleep(0.05)
    sessions = server.sessions()
    await ws.close()
    await reader
    return f"sessions held by the server: {sessions}; replies {counts}"


async def case_slow(server: Server) -> str:
    """A client stops reading; a node streams 6,000 asr_partial frames of 16 KB (12,000 client frames) at it."""
    node = await connect(server.node_url, max_size=None)
    await node.send(json.dumps({"type": "node_register", "node_id": None, "version": "2.0.0", "platform": "linux",
                                "hardware": {}, "installed_models": [], "capability_by_type": [],
                                "features_supported": {}, "accept_public_jobs": True, "max_concurrent_jobs": 8,
                                "language_capabilities": {"asr_languages": ["zh", "en"],
                                                          "semantic_languages": ["zh", "en"]}}))  # fmt: skip
    node_id = json.loads(await node.recv())["node_id"]
    usage = {"cpu_percent": 0, "mem_percent": 0, "running_jobs": 0}
    await node.send(json.dumps({"type": "node_heartbeat", "node_id": node_id, "timestamp": 0, "resource_usage": usage,
                                "installed_services": [], "capability_by_type": []}))  # fmt: skip
    slow, session_id = await open_session(server.session_url, max_queue=1)
    await slow.send(utterance(session_id, 0, base64.b64encode(b"\1" * 3200).decode()))
    while (job := json.loads(await node.recv()))["type"] != "job_assign":
        pass
    slow.transport.pause_reading()
    text = "x" * 16_384
    for i in range(6000):
        await node.send(json.dumps({"type": "asr_partial", "node_id": node_id, "session_id": session_id,
                                    "utterance_index": 0, "job_id": job["job_id"], "text": f"{i} {text}",
                                    "is_final": False, "trace_id": job["trace_id"]}))  # fmt: skip
        if i % 100 == 0:
            await asyncio.sleep(0.01)  # let the server keep up, as a real node's pace would
    await asyncio.sleep(2.0)
    still_held = server.sessions()  # 0 once the slow socket was dropped (its session detached)
    slow.transport.resume_reading()
    counts: dict[str, int] = {}
    try:
        await asyncio.wait_for(count_frames(slow, counts), 20)
        outcome = f"socket closed by the server (close code {slow.close_code}) after {sum(counts.values())} frames"
    except TimeoutError:
        outcome = f"socket still open ({sum(counts.values())} frames read in 20 s)"
    await node.close()
    return f"session still held after the flood: {'yes' if still_held else 'no'}; {outcome}"


async def case_idle(server: Server) -> str:
    """2,000 sockets that never send session_init, left open 12 s, then closed by the client; then once more (the
    second round shows whether the memory of the first was leaked or is reused)."""
    still_open, after_first = 0, 0.0
    for _ in range(2):
        sockets = [await connect(server.session_url, ping_interval=None) for _ in range(2000)]
        await asyncio.sleep(12.0)  # past handshake_timeout_ms (10 s)
        still_open = 0
        for ws in sockets:
            try:
                await asyncio.wait_for(ws.recv(), 0.001)
            except TimeoutError:
                still_open += 1
            except ConnectionClosed:
                pass
        for ws in sockets:
            await ws.close()
        await asyncio.sleep(2.0)
        after_first = after_first or server.memory_mb("VmRSS")
    return f"{still_open} of 2,000 still open after 12 s; RSS after the first round {after_first:.0f} MiB"


CASES: dict[str, Callable[[Server], Awaitable[str]]] = {
    "body": case_body,
    "held": case_held,
    "sessions": case_sessions,
    "slow": case_slow,
    "idle": case_idle,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", help=f"cases to run: {', '.join(CASES)} (default: all)")
    parser.add_argument("--pythonpath", help="run dragoman serve from these sources (PYTHONPATH)")
    args = parser.parse_args()
    if unknown := set(args.cases) - set(CASES):
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    print("| case | RSS before (MiB) | peak RSS (MiB) | RSS after (MiB) | what the server did |")
    print("|---|---|---|---|---|")
    for name in args.cases or list(CASES):
        with tempfile.TemporaryDirectory(prefix="dragoman-memory-") as tmp:
            server = start_server(Path(tmp) / "data", args.pythonpath)
            try:
                time.sleep(1.0)
                before = server.memory_mb("VmRSS")
                what = asyncio.run(CASES[name](server))
                peak, after = server.memory_mb("VmHWM"), server.memory_mb("VmRSS")
            finally:
                stop_server(server)
        print(f"| {name} | {before:.0f} | {peak:.0f} | {after:.0f} | {what} |", flush=True)


if __name__ == "__main__":
    main()
