"""The store's scripts, called directly against a real valkey-server and a real 3-master Valkey Cluster:
atomicity, selection, capacity. Every test runs on both (ids ``single`` and ``cluster``)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from dragoman.config import Settings
from dragoman.store import Assign, Cancel, JobSpec, Outcome, Store


@pytest.fixture
async def store(any_store_url: str) -> AsyncIterator[Store]:
    s = Store(Settings(key_prefix=f"st-{uuid.uuid4().hex[:8]}", pending_timeout_ms=100_000), any_store_url)
    await s.open()
    yield s
    await s.close()


async def add_node(store: Store, node: str, cap: int = 4, pairs: tuple[str, ...] = ("zh:en", "en:zh")) -> None:
    await store.register_node(node, f"conn-{node}", "inst", cap, b"{}")
    ok, _ = await store.heartbeat_node(node, f"conn-{node}", list(pairs), cap, b"{}", drain=8)
    assert ok


def spec(session: str = "s-1", index: int = 0, tgt: str = "en", pair: str = "zh:en", **kw: str) -> JobSpec:
    return JobSpec(
        session=session,
        index=index,
        tgt=tgt,
        job_id=f"job-{uuid.uuid4()}",
        pair=pair,
        pair2=kw.get("pair2", ""),
        turn=kw.get("turn", str(uuid.uuid4())),
        trace="trace",
        owner="inst",
        body=b',"x":1}',
        result_ttl_ms=60_000,
    )


def assigns(actions: list[object]) -> list[Assign]:
    return [a for a in actions if isinstance(a, Assign)]


async def test_concurrent_create_or_get_makes_one_job(store: Store) -> None:
    await add_node(store, "n1", cap=100)
    results = await asyncio.gather(*(store.create_job(spec(index=7)) for _ in range(100)))
    assert len({r.job_id for r in results}) == 1
    assert Counter(r.status for r in results) == Counter({"created": 1, "existing": 99})
    assert sum(len(assigns(r.actions)) for r in results) == 1  # exactly one job_assign


async def test_least_loaded_node_wins_and_capacity_is_respected(store: Store) -> None:
    await add_node(store, "a", cap=2)
    await add_node(store, "b", cap=4)
    placed: Counter[str] = Counter()
    for i in range(6):
        created = await store.create_job(spec(session=f"s-{i}"))
        placed.update(a.node for a in assigns(created.actions))
    assert placed == Counter({"a": 2, "b": 4})
    full = await store.create_job(spec(session="s-full"))
    assert full.state == "pending" and not full.actions


async def test_freed_capacity_takes_the_oldest_waiting_job(store: Store) -> None:
    await add_node(store, "a", cap=1)
    first = await store.create_job(spec(session="s-a"))
    waiting = [await store.create_job(spec(session=f"s-w{i}")) for i in range(2)]
    assert [w.state for w in waiting] == ["pending", "pending"]
    verdict, actions = await store.complete_job(first.job_id, "a", 1, "completed", b"{}", 0, drain=8)
    assert verdict == "accepted"
    assert [a.state for a in actions if isinstance(a, Outcome)] == ["completed"]
    assert [a.job_id for a in assigns(actions)] == [waiting[0].job_id]


async def test_result_only_from_the_node_and_attempt_that_hold_the_job(store: Store) -> None:
    await add_node(store, "a")
    await add_node(store, "b")
    created = await store.create_job(spec())
    [assign] = assigns(created.actions)
    other = "b" if assign.node == "a" else "a"
    assert (await store.complete_job(created.job_id, other, 1, "completed", b"{}", 0, 8))[0] == "stale"
    assert (await store.complete_job(created.job_id, assign.node, 2, "completed", b"{}", 0, 8))[0] == "stale"
    assert (await store.complete_job("job-nope", assign.node, 1, "completed", b"{}", 0, 8))[0] == "unknown"
    assert (await store.complete_job(created.job_id, assign.node, 1, "completed", b"{}", 0, 8))[0] == "accepted"
    assert (await store.complete_job(created.job_id, assign.node, 1, "completed", b"{}", 0, 8))[0] == "resolved"


async def test_node_loss_fails_over_with_next_attempt_to_another_node(store: Store) -> None:
    await add_node(store, "a")
    created = await store.create_job(spec())
    await add_node(store, "b")
    actions = await store.node_gone("a", "conn-a")
    [moved] = assigns(actions)
    assert (moved.node, moved.attempt, moved.job_id) == ("b", 2, created.job_id)
    # The old node's late answer is an earlier attempt: stale, even though the job is still unresolved.
    assert (await store.complete_job(created.job_id, "a", 1, "completed", b"{}", 0, 8))[0] == "stale"
    assert (await store.complete_job(created.job_id, "b", 2, "completed", b"{}", 0, 8))[0] == "accepted"
    assert int(await store.client.hget(store.prefix + "node:b", "inflight") or 0) == 0


async def test_node_that_saw_the_utterance_never_gets_it_again(store: Store) -> None:
    await add_node(store, "a")
    created = await store.create_job(spec())
    await store.register_node("a", "conn-a2", "inst", 4, b"{}")  # reconnects with the same id
    actions = await store.node_gone("a", "conn-a2")
    assert not assigns(actions)
    ok, actions = await store.heartbeat_node("a", "conn-a2", ["zh:en"], 4, b"{}", 8)
    assert not ok  # that socket no longer holds the node
    await store.register_node("a", "conn-a3", "inst", 4, b"{}")
    _, actions = await store.heartbeat_node("a", "conn-a3", ["zh:en"], 4, b"{}", 8)
    assert created.job_id not in [a.job_id for a in assigns(actions)]


async def test_turn_affinity_and_two_way_pairs(store: Store) -> None:
    await add_node(store, "both", pairs=("zh:en", "en:zh"))
    await add_node(store, "one-way", pairs=("zh:en",))
    for i in range(4):
        created = await store.create_job(spec(session=f"s-{i}", pair="zh:en", pair2="en:zh"))
        assert [a.node for a in assigns(created.actions)] == ["both"]
    turn = "turn-1"
    first = await store.create_job(spec(session="t", index=0, turn=turn))
    second = await store.create_job(spec(session="t2", index=0, turn=turn))
    assert assigns(first.actions)[0].node == assigns(second.actions)[0].node


async def test_tick_expires_pending_and_attempt_deadlines(any_store_url: str) -> None:
    settings = Settings(key_prefix=f"st-{uuid.uuid4().hex[:8]}", pending_timeout_ms=50, job_timeout_ms=50)
    s = Store(settings, any_store_url)
    await s.open()
    try:
        waiting = await s.create_job(spec(pair="xx:yy"))
        await add_node(s, "a")
        running = await s.create_job(spec(session="s-2"))
        await asyncio.sleep(0.1)
        actions = await s.tick()
        outcomes = {a.job_id: (a.state, a.detail) for a in actions if isinstance(a, Outcome)}
        assert outcomes[waiting.job_id] == ("failed", b"NO_AVAILABLE_NODE")
        assert outcomes[running.job_id] == ("timed_out", b"JOB_TIMEOUT")  # no other node to fail over to
        assert [c.job_id for c in actions if isinstance(c, Cancel)] == [running.job_id]
        assert int((await s.client.hget(s.prefix + "node:a", "inflight")) or 0) == 0
    finally:
        await s.close()


async def test_every_job_key_has_a_ttl(store: Store) -> None:
    await add_node(store, "a", cap=1)
    done = await store.create_job(spec(session="s-1"))
    await store.create_job(spec(session="s-2"))  # waits
    await store.complete_job(done.job_id, "a", 1, "completed", b"{}", 0, 8)
    # On the cluster, scan_iter scans every master (redis-py's RedisCluster.scan_iter), not just one.
    keys = [k.decode() async for k in store.client.scan_iter(match=store.prefix + "*")]
    assert f"{store.prefix}job:{done.job_id}" in keys  # the scan reached the master holding {sched}
    unbounded = []
    for key in keys:
        if await store.client.pttl(key) == -1:
            unbounded.append(key.removeprefix(store.prefix))
    # Only the indexes (each emptied by the scripts that own them) and the job counter live without a TTL.
    owned = {"deadlines", "pending", "live", "instances", "pool", "node", "instance", "seq"}
    assert {k.split(":")[0] for k in unbounded} <= owned
    assert not [k for k in unbounded if k.startswith(("job:", "slot:", "utt:", "turn:", "affinity:"))]


async def test_reconcile_repairs_a_drifted_in_flight_count(store: Store) -> None:
    await add_node(store, "a", cap=4)
    await store.create_job(spec(session="s-1"))
    await store.create_job(spec(session="s-2"))
    assert await store.reconcile() == []  # the scripts keep it exact
    await store.client.hset(store.prefix + "node:a", "inflight", 9)  # corrupt it from outside
    assert await store.reconcile() == [("a", 9, 2)]
    assert int(await store.client.hget(store.prefix + "node:a", "inflight") or 0) == 2
