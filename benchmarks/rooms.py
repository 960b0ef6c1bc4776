"""Store round trips and delivery latency of room utterances, with members on two instances.

Runs a real embedded valkey-server, two Dragoman instances sharing it, two scripted lingua nodes (one on each
instance) and four scripted lingua clients in one room: the speaker (zh) and an en listener on instance A, a ja
and another en listener on instance B. Each of the speaker's N utterances makes two jobs (en, ja), answered at
once by the nodes; the figures are the commands that reach the store over the network (MONITOR, script-internal
calls excluded) per utterance, and the time from the speaker's final chunk to the last listener's result.
The periodic tick and presence announcements are slowed down so that they do not pollute the count.

    python benchmarks/rooms.py [--utterances 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from roundtrips import watch_network

from dragoman.scheduler.store.embedded import EmbeddedStore

from conftest import start_dragoman
from peers import LinguaNode, LinguaWebClient, voiced_chunk

LANGS = ("zh", "en", "ja")


async def answer(node: LinguaNode) -> None:
    while True:
        job = await node.next_job(timeout=3600)
        await node.result(job)


async def main(utterances: int) -> None:
    store = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-rooms-"))
    url = await store.start()
    quiet = {"tick_interval_ms": 3_600_000, "instance_ttl_ms": 3_600_000, "prefix": f"rb-{uuid.uuid4().hex[:6]}"}
    a, b = await start_dragoman(url, **quiet), await start_dragoman(url, **quiet)
    nodes = [LinguaNode(x.node_url, langs=LANGS, max_concurrent_jobs=64) for x in (a, b)]
    speaker = LinguaWebClient(a.session_url)
    listeners = [LinguaWebClient(x.session_url) for x in (a, b, b)]
    answering: list[asyncio.Task[None]] = []
    try:
        for node in nodes:
            await node.start()
            answering.append(asyncio.create_task(answer(node)))
        await speaker.open()
        await speaker.init(two_way=False, src_lang="zh", tgt_lang="en")
        ack, _ = await speaker.room_create(preferred_lang="zh")
        for listener, lang in zip(listeners, ("en", "ja", "en"), strict=True):
            await listener.open()
            await listener.init(two_way=False, src_lang=lang)
            await listener.room_join(ack["room_code"], preferred_lang=lang)
            await listener.members()
        await speaker.members(count=4)
        network: Counter[str] = Counter()
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch_network(url, network, ready))
        await ready.wait()
        latencies = []
        for _ in range(utterances):
            await speaker.chunk(voiced_chunk())
            started = time.perf_counter()
            await speaker.chunk(voiced_chunk(), is_final=True)
            for listener in listeners:
                await listener.outcomes(1)
            latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.2)
        watcher.cancel()
        network.pop("info", None)
        print(f"room utterances: {utterances} (2 target languages, 3 listeners, 2 of them on the other instance)")
        print("commands received over the network (MONITOR, script-internal calls excluded):")
        for name, calls in network.most_common():
            print(f"  {name:<12} {calls:>7}  ({calls / utterances:.2f} per utterance)")
        print(f"commands over the network per room utterance: {sum(network.values()) / utterances:.2f}")
        print(f"script calls per room utterance: {network['evalsha'] / utterances:.2f}")
        latencies.sort()
        p95 = latencies[int(len(latencies) * 0.95) - 1]
        print(f"final chunk -> last listener's result: median {statistics.median(latencies):.1f} ms, p95 {p95:.1f} ms")
    finally:
        for task in answering:
            task.cancel()
        for peer in (speaker, *listeners, *nodes):
            await peer.close()
        for instance in (a, b):
            await instance.stop()
        await store.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=200)
    asyncio.run(main(parser.parse_args().utterances))
