"""An instance that stops cleanly leaves the store with nothing for another instance to take over; one that
leaves while it still holds nodes is taken over by the next tick, as a dead one is."""

from __future__ import annotations

import time

import redis.asyncio as redis

from conftest import start_dragoman
from peers import LinguaNode


async def test_a_clean_stop_removes_the_instance_and_its_inbox(store_url: str) -> None:
    d = await start_dragoman(store_url)
    instance, keys = d.scheduler.instance_id, d.store.keys
    inbox = keys.inbox(instance)
    admin = redis.Redis.from_url(store_url)
    try:
        async with LinguaNode(d.node_url) as node:
            await node.start()
            assert await admin.exists(inbox) and await admin.zscore(keys.instances, instance) is not None
            await d.stop()  # as `dragoman serve` stops: the server closes the node's socket, then the instance leaves
        assert await admin.zscore(keys.instances, instance) is None
        assert not await admin.exists(inbox, keys.instance(instance), keys.instance_nodes(instance))
    finally:
        await admin.aclose()


async def test_leaving_while_holding_a_node_leaves_it_to_the_next_tick(store_url: str) -> None:
    d = await start_dragoman(store_url, tick_interval_ms=60_000)  # no tick of its own in the meantime
    instance, keys = d.scheduler.instance_id, d.store.keys
    admin = redis.Redis.from_url(store_url)
    try:
        async with LinguaNode(d.node_url) as node:
            await node.start()
            await d.store.leave(instance)
            presence = await admin.zscore(keys.instances, instance)
            assert presence is not None and presence <= time.time() * 1000  # due now: the next tick takes it over
            assert await admin.exists(keys.inbox(instance))  # for that takeover to re-route
            taken = await d.store.take_instances()
            assert [(t.instance, t.nodes) for t in taken] == [(instance, [node.node_id])]
    finally:
        await admin.aclose()
        await d.stop()
