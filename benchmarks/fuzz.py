"""Long fuzz runs against a real ``dragoman serve``: mutated lingua frames on both sockets and the HTTP API.

Starts ``dragoman serve`` (embedded valkey-server) on a free loopback port, then sends ``--frames`` mutants on
one /ws/session socket and as many on one /ws/node socket, and ``--requests`` mutated job bodies to the HTTP
API, with the mutator and drivers that the CI fuzz test uses (tests/fuzzing.py). Afterwards a normal round trip
must work through both fuzzed sockets. Prints frames per second, the errors answered, the tracebacks in the
server's log (must be 0) and the peak RSS of the server and its store; exits 1 if any check failed.

    python benchmarks/fuzz.py [--frames 100000] [--requests 10000] [--seed 1] [--max-string 64000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import Mutator, Tally, fuzz_client, fuzz_http, fuzz_node, reading, round_trip, rss_bytes

from conftest import free_port
from peers import LinguaWebClient

# Jobs that mutants create find no node: let them fail fast instead of piling up for the default 10 s.
SERVER_ENV = {"DRAGOMAN_PENDING_TIMEOUT_MS": "300", "DRAGOMAN_UTTERANCE_REORDER_MS": "500"}


OWN_LINE = re.compile(r"\S+ \S+ [A-Z]+ dragoman[.:]")  # configure_logging's format, a dragoman logger


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


async def _healthy(base: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(400):
            try:
                if (await http.get("/health")).text == "OK":
                    return
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise SystemExit("dragoman serve exited; see its log")
            await asyncio.sleep(0.05)
    raise SystemExit("dragoman serve did not become healthy in 20 s")


def _report(name: str, tally: Tally, seconds: float) -> None:
    print(
        f"{name:<11} {tally.frames:>8} frames in {seconds:6.1f} s = {tally.frames / seconds:8.0f}/s; "
        f"certainly invalid {tally.certainly_invalid}"
        + (f", errors answered {tally.errors_answered}" if name != "/ws/node" else "")  # nodes get no replies
        + (f", refused registrations {tally.refused_registrations}" if tally.refused_registrations else "")
    )


async def main(frames: int, requests: int, seed: int, max_string: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="dragoman-fuzz-"))
    log_path = work / "serve.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "dragoman", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(work / "data"), "--log-level", "info"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ | SERVER_ENV)
    try:
        await _healthy(base, process)
        store_pids = _children(process.pid)
        rss_start, _ = rss_bytes(process.pid)
        mutator = Mutator(seed, max_string=max_string)
        print(f"seed {seed}, {frames} frames per socket, {requests} HTTP requests, strings up to {max_string} chars")
        async with (
            LinguaWebClient(f"ws://127.0.0.1:{port}/ws/session") as client,
            httpx.AsyncClient(base_url=base, timeout=30) as http,
        ):
            await client.init(two_way=False)
            start = time.perf_counter()
            _report("/ws/session", await fuzz_client(client, mutator, frames), time.perf_counter() - start)
            async with reading(client):
                start = time.perf_counter()
                _report("HTTP API", await fuzz_http(http, mutator, requests), time.perf_counter() - start)
                start = time.perf_counter()
                node, fed = await fuzz_node(f"ws://127.0.0.1:{port}/ws/node", "node-FUZZ0000", mutator, frames)
                _report("/ws/node", fed, time.perf_counter() - start)
            try:
                await round_trip(client, node)
            finally:
                await node.close()
            print("round trip through both fuzzed sockets afterwards: ok")
        rss_end, rss_peak = rss_bytes(process.pid)
        store_peak = sum(rss_bytes(pid)[1] for pid in store_pids)
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
        shutil.rmtree(work / "data", ignore_errors=True)  # the store's files; the log is kept
    text = log_path.read_text(errors="replace")
    tracebacks = text.count("Traceback (most recent call last)")
    ignored = text.count("invalid message ignored")
    # Dragoman's own lines (uvicorn's access log quotes request paths, bounded by its request-line limit).
    longest = max((len(line) for line in text.splitlines() if OWN_LINE.match(line)), default=0)
    mib = 1024 * 1024
    print(f"/ws/node frames logged as invalid: {ignored} (certainly invalid: {fed.certainly_invalid})")
    lines = len(text.splitlines())
    print(f"server log: {lines} lines, longest of Dragoman's {longest} characters, tracebacks {tracebacks}")
    print(
        f"dragoman serve RSS: {rss_start / mib:.0f} MiB at start, {rss_end / mib:.0f} MiB at the end, "
        f"peak {rss_peak / mib:.0f} MiB; embedded valkey-server peak {store_peak / mib:.0f} MiB"
    )
    print(f"server log kept in {log_path}")
    ok = tracebacks == 0 and ignored >= fed.certainly_invalid and longest < 1_000
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000, help="mutants per socket")
    parser.add_argument("--requests", type=int, default=10_000, help="mutated HTTP requests")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-string", type=int, default=64_000, help="longest huge string in a mutant")
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.frames, args.requests, args.seed, args.max_string)))
