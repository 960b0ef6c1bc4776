"""Store cost per utterance of this version and an earlier one, measured the same simple way: one node (or
many), one session, each utterance created and completed in turn (the setting of the store issue's table).
Point ``--pythonpath`` at an earlier version's ``src`` (``git archive a574995 src | tar -x -C BEFORE``) to
measure it; without it, this version is measured. Figures: ``INFO commandstats`` deltas.

    python benchmarks/store_cost_compare.py [--pythonpath BEFORE/src] [--utterances 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from typing import Any

LANGS = ["zh", "en", "ja", "ko", "de", "fr", "es", "it", "pt", "ru", "ar", "hi", "vi", "th"]


async def run(utterances: int) -> list[dict[str, Any]]:
    import redis.asyncio as redis

    from dragoman.config import Settings
    from dragoman.langs import node_pairs
    from dragoman.scheduler.store import JobSpec, Store
    from dragoman.scheduler.store.embedded import EmbeddedStore

    embedded = EmbeddedStore(tempfile.mkdtemp(prefix="dragoman-cmp-"))
    url = await embedded.start()
    probe = redis.Redis.from_url(url)
    results = []
    try:
        for n_langs, nodes in ((2, 1), (6, 1), (14, 1), (2, 10), (2, 1000), (2, 10000)):
            store = Store(Settings(key_prefix=f"cmp-{uuid.uuid4().hex[:8]}"), url)
            await store.open()
            pairs = node_pairs(LANGS[:n_langs], LANGS[:n_langs])
            for start in range(0, nodes, 8):  # a few at once: an earlier store client fails on a burst
                ids = [f"n-{i}" for i in range(start, min(nodes, start + 8))]
                await asyncio.gather(*(store.register_node(n, "c-" + n, "i", 4, b"{}") for n in ids))
                await asyncio.gather(*(store.heartbeat_node(n, "c-" + n, pairs, 4, b"{}", drain=8) for n in ids))
            before = await probe.info("commandstats")
            for index in range(utterances):
                fields: dict[str, Any] = {
                    "session": "s-1",
                    "index": index,
                    "tgt": "en",
                    "job_id": f"job-{uuid.uuid4()}",
                    "pair": "zh:en",
                    "pair2": "",
                    "turn": str(uuid.uuid4()),
                    "trace": "t",
                    "owner": "i",
                    "body": b',"audio":"' + b"A" * 2000 + b'"}',
                    "result_ttl_ms": 60_000,
                }
                created = await store.create_job(JobSpec(**fields))
                node = created.actions[0].node
                await store.complete_job(created.job_id, node, 1, "completed", '{"type":"job_result"}', 0, drain=8)
            after = await probe.info("commandstats")
            await store.close()

            def calls(name: str, info: dict[str, Any] = after, base: dict[str, Any] = before) -> tuple[int, int]:
                a, b = info.get(name, {"calls": 0, "usec": 0}), base.get(name, {"calls": 0, "usec": 0})
                return int(a["calls"]) - int(b["calls"]), int(a["usec"]) - int(b["usec"])

            names = [n for n in after if n not in ("cmdstat_evalsha", "cmdstat_info")]
            results.append(
                {
                    "languages": n_langs,
                    "nodes": nodes,
                    "commands_per_utterance": sum(calls(n)[0] for n in names) / utterances,
                    "script_us_per_utterance": calls("cmdstat_evalsha")[1] / utterances,
                }
            )
    finally:
        await probe.aclose()
        await embedded.stop()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pythonpath", help="the src directory of the version to measure (default: this one)")
    parser.add_argument("--utterances", type=int, default=2000)
    args = parser.parse_args()
    if args.pythonpath:
        sys.path.insert(0, args.pythonpath)
        for name in [m for m in sys.modules if m.startswith("dragoman")]:
            del sys.modules[name]
    for row in asyncio.run(run(args.utterances)):
        print(json.dumps(row))
