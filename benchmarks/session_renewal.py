"""How long one instance's renewal of its sessions' records holds its event loop.

``Scheduler._announce`` calls ``Store.keep_sessions`` with every session of the instance every
``instance_ttl_ms / 3``; every cut that falls due meanwhile waits for it. This calls it alone on an embedded
valkey-server, on uvloop as ``dragoman serve`` runs, with a 1 ms ticker on the same loop, and prints the
call's time and the longest the ticker went without running (the stall), for each number of sessions.

    python benchmarks/session_renewal.py [--sessions 100,400,800,1600] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

import uvloop

from dragoman.config import Settings
from dragoman.scheduler.store.embedded import EmbeddedStore
from dragoman.scheduler.store.store import Store


async def main(counts: list[int], repeat: int) -> None:
    server = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-renewal-"))
    store = Store(Settings(), await server.start())
    await store.open()
    longest = 0.0

    async def ticker() -> None:
        nonlocal longest
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    ticking = asyncio.create_task(ticker())
    try:
        for count in counts:
            sessions = [(f"s-{i:06X}", 3) for i in range(count)]
            for _ in range(repeat):
                await asyncio.sleep(0.05)
                longest = 0.0
                started = time.perf_counter()
                await store.keep_sessions(sessions)
                took = time.perf_counter() - started
                await asyncio.sleep(0.005)  # the ticker's first turn after the call
                stalled = longest * 1000
                print(f"{count:6d} sessions: keep_sessions {took * 1000:6.1f} ms, loop stalled {stalled:6.1f} ms")
    finally:
        ticking.cancel()
        await store.close()
        await server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sessions", default="100,400,800,1600", help="numbers of sessions, comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="calls for each number (default 3)")
    args = parser.parse_args()
    uvloop.run(main([int(n) for n in args.sessions.split(",")], args.repeat))
