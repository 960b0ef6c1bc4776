"""Sequential HTTP long-polls: ``POST /api/v1/jobs`` then ``GET /api/v1/jobs/{id}?wait=10``, one at a time,
against a real instance and a scripted node that answers each job as soon as it gets it.

A long-poll should return as soon as the outcome lands. One that waited for the 1 s re-read instead (the
lost wake-up of issue 9, item 13) shows up as a poll of about a second. Prints the latency percentiles and
how many polls took over 500 ms.

    python benchmarks/longpoll.py --polls 1000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dragoman.scheduler.store.embedded import EmbeddedStore

from conftest import start_dragoman
from peers import LinguaNode, pcm16

SLOW_S = 0.5


async def answer_every_job(node: LinguaNode) -> None:
    while True:
        await node.result(await node.next_job(timeout=3600), text_translated="ok")


async def keep_alive(node: LinguaNode) -> None:
    while True:
        await asyncio.sleep(5)
        await node.heartbeat()


async def main(polls: int) -> None:
    body = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(200)).decode()}
    with tempfile.TemporaryDirectory() as tmp:
        store = EmbeddedStore(Path(tmp) / "store")
        await store.start()
        d = await start_dragoman(store.url)
        try:
            async with LinguaNode(d.node_url) as node, httpx.AsyncClient(base_url=d.http, timeout=30) as http:
                await node.start()
                helpers = [asyncio.create_task(answer_every_job(node)), asyncio.create_task(keep_alive(node))]
                latencies = []
                for _ in range(polls):
                    job_id = (await http.post("/api/v1/jobs", json=body)).json()["job_id"]
                    started = time.perf_counter()
                    status = (await http.get(f"/api/v1/jobs/{job_id}", params={"wait": 10})).json()
                    latencies.append(time.perf_counter() - started)
                    assert status["status"] == "completed", status
                for task in helpers:
                    task.cancel()
        finally:
            await d.stop()
            await store.stop()
    latencies.sort()

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    slow = sum(1 for x in latencies if x > SLOW_S)
    print(f"{polls} sequential long-polls: p50 {pct(0.5):.1f} ms, p99 {pct(0.99):.1f} ms, max {pct(1.0):.1f} ms")
    print(f"over {SLOW_S * 1000:.0f} ms: {slow} ({100 * slow / polls:.1f} %)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=1000)
    asyncio.run(main(parser.parse_args().polls))
