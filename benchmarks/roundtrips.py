"""Store round trips per utterance on one instance, from finalize to delivered result.

Runs a real embedded valkey-server, one Dragoman instance, one scripted lingua node and one scripted
web client on loopback; streams N utterances through; reads ``INFO commandstats`` before and after.
The periodic tick and presence announcements are slowed down so that they do not pollute the count.

    python benchmarks/roundtrips.py [--utterances 200]

Needs Dragoman with its test extra (the scripted peers live in tests/): pip install -e '.[test]'.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections import Counter
from pathlib import Path

import redis.asyncio as redis
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dragoman.scheduler.store.embedded import EmbeddedStore

from conftest import start_dragoman
from peers import LinguaNode, LinguaWebClient, voiced_chunk


async def commandstats(client: redis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


async def watch_network(url: str, seen: Counter[str], ready: asyncio.Event) -> None:
    """MONITOR the store: count the commands that arrive over the network (not those run by scripts)."""
    client = redis.Redis.from_url(url)
    async with client.monitor() as monitor:
        ready.set()
        async for command in monitor.listen():
            if command.get("client_type") != "lua":
                seen[str(command["command"]).split()[0].lower()] += 1


async def main(utterances: int) -> None:
    store = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-rt-"))
    url = await store.start()
    d = await start_dragoman(url, tick_interval_ms=3_600_000, instance_ttl_ms=3_600_000)
    probe = redis.Redis.from_url(url)
    try:
        async with LinguaNode(d.node_url, max_concurrent_jobs=64) as node, LinguaWebClient(d.session_url) as client:
            await node.start()
            await client.init()
            network: Counter[str] = Counter()
            ready = asyncio.Event()
            watcher = asyncio.create_task(watch_network(url, network, ready))
            await ready.wait()
            before = await commandstats(probe)
            with Progress(transient=True) as progress:
                task = progress.add_task("utterances", total=utterances)
                for _ in range(utterances):
                    await client.chunk(voiced_chunk())
                    await client.chunk(voiced_chunk(), is_final=True)
                    job = await node.next_job()
                    await node.result(job)
                    await client.outcomes(1)
                    progress.advance(task)
            await asyncio.sleep(0.3)  # the trace steps written after delivery (every 100 ms) are counted too
            after = await commandstats(probe)
            await asyncio.sleep(0.2)
            watcher.cancel()
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta.pop("info", None)  # the probe's own
        network.pop("info", None)
        print(f"utterances: {utterances}")
        print("commands run in the store (inside scripts included):")
        for name, calls in sorted(delta.items(), key=lambda kv: -kv[1]):
            if calls:
                print(f"  {name:<12} {calls:>7}  ({calls / utterances:.2f} per utterance)")
        print("commands received over the network (MONITOR, script-internal calls excluded):")
        for name, calls in network.most_common():
            print(f"  {name:<12} {calls:>7}  ({calls / utterances:.2f} per utterance)")
        total = sum(network.values())
        print(f"commands over the network per utterance: {total / utterances:.2f}")
        print(f"script calls (one round trip each) per utterance: {network['evalsha'] / utterances:.2f}")
        flushes = d.scheduler.traces.flushes
        print(f"trace flushes (one pipelined round trip each): {flushes} ({flushes / utterances:.2f} per utterance)")
    finally:
        await probe.aclose()
        await d.stop()
        await store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200)
    asyncio.run(main(parser.parse_args().utterances))
