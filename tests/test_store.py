"""The store's scripts, called directly against a real valkey-server and a real 3-master Valkey Cluster:
atomicity, selection, capacity, waiting jobs, cells. Every test runs on both (ids ``single`` and
``cluster``), with one cell and with four."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from itertools import count

import pytest

from dragoman.config import Settings
from dragoman.langs import node_pairs
from dragoman.scheduler.store import Assign, Cancel, JobSpec, Outcome, Store, StoreConfigError
from dragoman.scheduler.store.records import TakeReply


@pytest.fixture(params=[1, 4], ids=["1cell", "4cells"])
async def store(any_store_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    settings = Settings(key_prefix=f"st-{uuid.uuid4().hex[:8]}", pending_timeout_ms=100_000, cells=request.param)
    s = Store(settings, any_store_url)
    await s.open()
    yield s
    await s.close()


_names = count()


def node_in(store: Store, cell: int, name: str = "n") -> str:
    """A node id that the store puts in the given cell."""
    while True:
        node = f"{name}-{next(_names)}"
        if store.keys.node_cell(node) == cell:
            return node


def session_in(store: Store, cell: int) -> str:
    while True:
        session = f"s-{next(_names)}"
        if store.keys.home_cell(session) == cell:
            return session


async def add_node(store: Store, node: str, cap: int = 4, pairs: tuple[str, ...] = ("zh:en", "en:zh")) -> None:
    await store.register_node(node, f"conn-{node}", "inst", cap, b"{}")
    reply = await store.heartbeat_node(node, f"conn-{node}", list(pairs), cap, b"{}", drain=8)
    assert reply.ok


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
        prefer=tuple(kw["prefer"].split()) if "prefer" in kw else (),
    )


def assigns(actions: list[object]) -> list[Assign]:
    return [a for a in actions if isinstance(a, Assign)]


async def inflight(store: Store, node: str) -> int:
    return next(n.inflight for n in await store.nodes() if n.node_id == node)


async def test_concurrent_create_or_get_makes_one_job(store: Store) -> None:
    # The node sits in another cell than the session's home whenever there are several: the job spills.
    home = store.keys.home_cell("s-1")
    await add_node(store, node_in(store, (home + 1) % store.cells), cap=100)
    results = await asyncio.gather(*(store.create_job(spec(index=7)) for _ in range(100)))
    assert len({r.job_id for r in results}) == 1
    assert Counter(r.status for r in results) == Counter({"created": 1, "existing": 99})
    assert sum(len(assigns(r.actions)) for r in results) == 1  # exactly one job_assign


async def test_least_loaded_node_wins_and_capacity_is_respected(store: Store) -> None:
    a, b = node_in(store, 0, "a"), node_in(store, 0, "b")
    await add_node(store, a, cap=2)
    await add_node(store, b, cap=4)
    placed: Counter[str] = Counter()
    for i in range(6):
        created = await store.create_job(spec(session=f"s-{i}"))
        placed.update(x.node for x in assigns(created.actions))
    assert placed == Counter({a: 2, b: 4})
    full = await store.create_job(spec(session="s-full"))
    assert full.state == "pending" and not full.actions


async def test_freed_capacity_takes_the_oldest_waiting_job(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a, cap=1)
    home = session_in(store, 0)
    first = await store.create_job(spec(session=home))
    waiting = [await store.create_job(spec(session=home, index=i)) for i in (1, 2)]
    assert [w.state for w in waiting] == ["pending", "pending"]
    reply = await store.complete_job(first.job_id, a, 1, "completed", "{}", 0, drain=8)
    assert reply.verdict == "accepted"
    assert [x.state for x in reply.actions if isinstance(x, Outcome)] == ["completed"]
    assert [x.job_id for x in assigns(reply.actions)] == [waiting[0].job_id]


async def test_waiting_jobs_of_an_unserved_pair_never_block_a_served_one(store: Store) -> None:
    node = node_in(store, 0)
    await add_node(store, node, cap=1)
    home = session_in(store, 0)
    running = await store.create_job(spec(session=home))
    blockers = [await store.create_job(spec(session=home, index=i, tgt="de", pair="ja:de")) for i in range(1, 9)]
    assert all(b.state == "pending" for b in blockers)
    served = await store.create_job(spec(session=home, index=9))
    assert served.state == "pending"  # the node is full
    reply = await store.complete_job(running.job_id, node, 1, "completed", "{}", 0, drain=8)
    assert [x.job_id for x in assigns(reply.actions)] == [served.job_id]  # not stuck behind eight ja:de jobs
    # A heartbeat with room places what it can take too, whatever waits for other pairs.
    other = await store.create_job(spec(session=home, index=10))
    await store.complete_job(served.job_id, node, 1, "completed", "{}", 0, drain=8)
    assert (await store.get_job(other.job_id)) is not None


async def test_a_fourteen_language_node_has_one_place_for_its_load(store: Store) -> None:
    langs = ["zh", "en", "ja", "ko", "de", "fr", "es", "it", "pt", "ru", "ar", "hi", "vi", "th"]
    node = node_in(store, 0)
    await add_node(store, node, cap=4, pairs=tuple(node_pairs(langs, langs)))
    home = session_in(store, 0)
    jobs = []
    for i, (src, tgt) in enumerate([("zh", "en"), ("th", "vi"), ("ar", "ko")]):
        created = await store.create_job(spec(session=home, index=i, tgt=tgt, pair=f"{src}:{tgt}"))
        assert [x.node for x in assigns(created.actions)] == [node]
        jobs.append(created.job_id)
    assert await inflight(store, node) == 3
    for job_id in jobs:
        assert (await store.complete_job(job_id, node, 1, "completed", "{}", 0, 8)).verdict == "accepted"
    assert await inflight(store, node) == 0
    assert await store.reconcile() == []  # the load score agrees with the job set


async def test_result_only_from_the_node_and_attempt_that_hold_the_job(store: Store) -> None:
    a, b = node_in(store, 0, "a"), node_in(store, 0, "b")
    await add_node(store, a)
    await add_node(store, b)
    created = await store.create_job(spec(session=session_in(store, 0)))
    [assign] = assigns(created.actions)
    other = b if assign.node == a else a
    assert (await store.complete_job(created.job_id, other, 1, "completed", "{}", 0, 8)).verdict == "stale"
    assert (await store.complete_job(created.job_id, assign.node, 2, "completed", "{}", 0, 8)).verdict == "stale"
    assert (await store.complete_job("job-nope", assign.node, 1, "completed", "{}", 0, 8)).verdict == "unknown"
    first = await store.complete_job(created.job_id, assign.node, 1, "completed", "{}", 0, 8)
    assert first.verdict == "accepted"
    # The same result again (a retry after a lost reply): the same outcome, nothing released twice.
    again = await store.complete_job(created.job_id, assign.node, 1, "completed", "{}", 0, 8)
    assert again.verdict == "accepted" and again.actions == first.actions
    assert await inflight(store, assign.node) == 0


async def test_a_retried_retryable_failure_yields_the_same_next_attempt(store: Store) -> None:
    a, b = node_in(store, 0, "a"), node_in(store, 0, "b")
    await add_node(store, a)
    created = await store.create_job(spec(session=session_in(store, 0), prefer=a))
    await add_node(store, b)
    first = await store.complete_job(created.job_id, a, 1, "retry", '{"x":1}', 60_000, 8)
    [moved] = assigns(first.actions)
    assert (moved.node, moved.attempt) == (b, 2)
    again = await store.complete_job(created.job_id, a, 1, "retry", '{"x":1}', 60_000, 8)
    assert again.verdict == "accepted" and assigns(again.actions) == [moved]


async def test_node_loss_fails_over_with_next_attempt_to_another_node(store: Store) -> None:
    a, b = node_in(store, 0, "a"), node_in(store, 0, "b")
    await add_node(store, a)
    created = await store.create_job(spec(session=session_in(store, 0)))
    await add_node(store, b)
    actions = await store.node_gone(a, f"conn-{a}")
    [moved] = assigns(actions)
    assert (moved.node, moved.attempt, moved.job_id) == (b, 2, created.job_id)
    assert moved.frame == ',"x":1}'  # a failover reads the stored job_assign
    # The old node's late answer is an earlier attempt: stale, even though the job is still unresolved.
    assert (await store.complete_job(created.job_id, a, 1, "completed", "{}", 0, 8)).verdict == "stale"
    assert (await store.complete_job(created.job_id, b, 2, "completed", "{}", 0, 8)).verdict == "accepted"
    assert await inflight(store, b) == 0


async def test_node_that_saw_the_utterance_never_gets_it_again(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a)
    created = await store.create_job(spec(session=session_in(store, 0)))
    await store.register_node(a, "conn-a2", "inst", 4, b"{}")  # reconnects with the same id
    actions = await store.node_gone(a, "conn-a2")
    assert not assigns(actions)
    reply = await store.heartbeat_node(a, "conn-a2", ["zh:en"], 4, b"{}", 8)
    assert not reply.ok  # that socket no longer holds the node
    await store.register_node(a, "conn-a3", "inst", 4, b"{}")
    reply = await store.heartbeat_node(a, "conn-a3", ["zh:en"], 4, b"{}", 8)
    assert created.job_id not in [x.job_id for x in assigns(reply.actions)]


async def test_preferred_node_and_two_way_pairs(store: Store) -> None:
    both, one_way = node_in(store, 0, "both"), node_in(store, 0, "one-way")
    await add_node(store, both, pairs=("zh:en", "en:zh"))
    await add_node(store, one_way, pairs=("zh:en",))
    for i in range(4):
        created = await store.create_job(spec(session=f"s-{i}", pair="zh:en", pair2="en:zh"))
        assert [x.node for x in assigns(created.actions)] == [both]
    # A turn's parts go to the turn's node while it has room, although another node is less loaded.
    turn = await store.create_job(spec(session="t", prefer=one_way))
    assert [x.node for x in assigns(turn.actions)] == [one_way]
    again = await store.create_job(spec(session="t", index=1, prefer=one_way))
    assert [x.node for x in assigns(again.actions)] == [one_way]


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
        outcomes = {x.job_id: (x.state, x.detail) for x in actions if isinstance(x, Outcome)}
        assert outcomes[waiting.job_id] == ("failed", "NO_AVAILABLE_NODE")
        assert outcomes[running.job_id] == ("timed_out", "JOB_TIMEOUT")  # no other node to fail over to
        assert [c.job_id for c in actions if isinstance(c, Cancel)] == [running.job_id]
        assert await inflight(s, "a") == 0
    finally:
        await s.close()


async def test_every_job_key_has_a_ttl(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a, cap=1)
    home = session_in(store, 0)
    done = await store.create_job(spec(session=home))
    await store.create_job(spec(session=home, index=1))  # waits
    await store.complete_job(done.job_id, a, 1, "completed", "{}", 0, 8)
    # On the cluster, scan_iter scans every master (redis-py's RedisCluster.scan_iter), not just one.
    prefix = store.settings.key_prefix + ":"
    keys = [k.decode() async for k in store.client.scan_iter(match=prefix + "*")]
    assert store.keys.job(done.cell, done.job_id) in keys
    unbounded = []
    for key in keys:
        if await store.client.pttl(key) == -1 and key != store.keys.instance_nodes("inst"):  # owned by "inst"
            unbounded.append(key.split("}:", 1)[-1])
    # Only indexes that the scripts empty themselves, capability groups (left by their last node) and the
    # cell's counters live without a TTL.
    owned = {"deadlines", "waiting", "wait", "live", "grp", "pair", "node", "seq", "cells"}
    assert {k.split(":")[0] for k in unbounded} <= owned, unbounded
    assert not [k for k in unbounded if k.startswith(("job:", "slot:", "sjobs:"))]


async def test_reconcile_repairs_a_drifted_load(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a, cap=4)
    home = session_in(store, 0)
    await store.create_job(spec(session=home))
    await store.create_job(spec(session=home, index=1))
    assert await store.reconcile() == []  # the scripts keep it exact
    [record] = [n for n in await store.nodes() if n.node_id == a]
    groups = [k async for k in store.client.scan_iter(match=store.keys.cell_prefix(0) + "grp:*")]
    [group] = [k for k in groups if not k.endswith(b":pairs")]
    await store.client.zadd(group, {a: 0})  # corrupt it from outside
    [repair] = await store.reconcile()
    assert (repair.node, repair.counted, repair.actual) == (a, 0, 2)
    assert record.inflight == 2


async def test_a_job_spills_to_another_cell_when_its_home_has_no_room(store: Store) -> None:
    if store.cells == 1:
        pytest.skip("one cell: nowhere to spill to")
    near, far = node_in(store, 0, "near"), node_in(store, 2, "far")
    await add_node(store, near, cap=1)
    await add_node(store, far, cap=1)
    home = session_in(store, 0)
    first = await store.create_job(spec(session=home))
    second = await store.create_job(spec(session=home, index=1))
    assert [x.node for x in assigns(first.actions)] == [near]
    assert [x.node for x in assigns(second.actions)] == [far] and second.cell == 2
    # The slot binding names the cell that took it: the same slot again finds it there.
    again = await store.create_job(spec(session=home, index=1))
    assert (again.status, again.job_id, again.cell) == ("existing", second.job_id, 2)
    # Every cell full: the job waits at home, and the home node's freed capacity takes it.
    third = await store.create_job(spec(session=home, index=2))
    assert third.state == "pending" and third.cell == 0
    reply = await store.complete_job(first.job_id, near, 1, "completed", "{}", 0, 8)
    assert [x.job_id for x in assigns(reply.actions)] == [third.job_id]
    # A resumed session finds each job in its cell.
    await store.open_session(home, "inst", "actor", b"{}", "trace")
    snapshot = await store.session_snapshot(home)
    assert snapshot is not None
    assert [(i, r.cell if r else None) for i, _, r in snapshot.jobs] == [(0, 0), (1, 2), (2, 0)]


async def test_changing_the_number_of_cells_is_refused(any_store_url: str) -> None:
    prefix = f"st-{uuid.uuid4().hex[:8]}"
    first = Store(Settings(key_prefix=prefix, cells=2), any_store_url)
    await first.open()
    await first.close()
    other = Store(Settings(key_prefix=prefix, cells=3), any_store_url)
    with pytest.raises(StoreConfigError, match="runs with 2 cells, not 3"):
        await other.open()
    await other.close()


async def test_a_burst_of_calls_waits_for_pooled_connections(any_store_url: str) -> None:
    settings = Settings(key_prefix=f"st-{uuid.uuid4().hex[:8]}", store_max_connections=4)
    s = Store(settings, any_store_url)
    await s.open()
    try:
        await add_node(s, "a", cap=1000)
        results = await asyncio.gather(*(s.create_job(spec(session=f"s-{i}")) for i in range(300)))
        assert Counter(r.state for r in results) == Counter({"dispatched": 300})
    finally:
        await s.close()


async def test_a_waiting_job_moves_to_a_cell_that_gets_room(store: Store) -> None:
    if store.cells == 1:
        pytest.skip("one cell: nowhere to move to")
    a, b = node_in(store, 0, "a"), node_in(store, 1, "b")
    await add_node(store, a, cap=1)
    await add_node(store, b, cap=1)
    home = session_in(store, 0)
    first = await store.create_job(spec(session=home))
    second = await store.create_job(spec(session=home, index=1))
    third = await store.create_job(spec(session=home, index=2))
    assert (first.cell, second.cell, third.cell, third.state) == (0, 1, 0, "pending")
    reply = await store.complete_job(second.job_id, b, 1, "completed", "{}", 0, 8)
    assert not assigns(reply.actions)  # b's cell has nothing waiting: the tick moves the job
    [moved] = assigns(await store.tick())
    assert (moved.job_id, moved.node, moved.frame) == (third.job_id, b, ',"x":1}')
    record = await store.get_job(third.job_id)
    assert record is not None and (record.cell, record.state) == (1, "dispatched")
    again = await store.create_job(spec(session=home, index=2))
    assert (again.status, again.cell) == ("existing", 1)


async def test_a_lost_node_fails_over_to_another_cell(store: Store) -> None:
    if store.cells == 1:
        pytest.skip("one cell: nowhere to move to")
    a, b = node_in(store, 0, "a"), node_in(store, 3, "b")
    await add_node(store, a)
    home = session_in(store, 0)
    created = await store.create_job(spec(session=home))
    await add_node(store, b)
    assert not assigns(await store.node_gone(a, f"conn-{a}"))  # no other node in its cell: it waits
    [moved] = assigns(await store.tick())
    assert (moved.job_id, moved.node, moved.attempt) == (created.job_id, b, 2)
    assert (await store.complete_job(created.job_id, b, 2, "completed", "{}", 0, 8)).verdict == "accepted"


async def test_a_move_whose_mover_died_is_finished_by_the_tick(store: Store) -> None:
    if store.cells == 1:
        pytest.skip("one cell: nowhere to move to")
    b = node_in(store, 1, "b")
    home = session_in(store, 0)
    created = await store.create_job(spec(session=home))
    assert created.state == "pending"
    # A mover takes the job for cell 1 and dies before cell 1 adopts it: after the lease it waits again.
    taken = await store._cell("take_waiting", [store.keys.deadlines(0)], ["zh:en", 1, 50], TakeReply)
    assert taken.found
    await asyncio.sleep(0.1)
    assert not assigns(await store.tick())
    record = await store.get_job(created.job_id)
    assert record is not None and (record.cell, record.state) == (0, "pending")
    await add_node(store, b)
    [moved] = assigns(await store.tick())
    assert moved.job_id == created.job_id and moved.node == b


async def test_one_job_per_slot_across_instances_and_cells(store: Store) -> None:
    other = Store(store.settings, store.url)  # a second instance on the same deployment
    await other.open()
    try:
        home = store.keys.home_cell("s-9")
        await add_node(store, node_in(store, (home + store.cells - 1) % store.cells), cap=100)
        results = await asyncio.gather(*(s.create_job(spec(session="s-9")) for s in [store, other] * 50))
        assert len({r.job_id for r in results}) == 1
        assert sum(len(assigns(r.actions)) for r in results) == 1
    finally:
        await other.close()


async def test_a_timed_out_attempt_moves_to_a_node_of_another_cell(any_store_url: str) -> None:
    settings = Settings(key_prefix=f"st-{uuid.uuid4().hex[:8]}", job_timeout_ms=50, cells=4)
    s = Store(settings, any_store_url)
    await s.open()
    try:
        silent, b = node_in(s, 0, "silent"), node_in(s, 2, "b")
        await add_node(s, silent)
        created = await s.create_job(spec(session=session_in(s, 0)))
        assert [x.node for x in assigns(created.actions)] == [silent]
        await add_node(s, b)
        await asyncio.sleep(0.1)
        actions = await s.tick()  # the attempt times out; no other node in its cell: it waits, then moves
        assert [c.node for c in actions if isinstance(c, Cancel)] == [silent]
        moved = assigns(actions) or assigns(await s.tick())
        assert [(x.job_id, x.node, x.attempt) for x in moved] == [(created.job_id, b, 2)]
    finally:
        await s.close()


async def test_capacity_freed_by_a_cancel_places_a_waiting_job(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a, cap=1)
    home = session_in(store, 0)
    running = await store.create_job(spec(session=home))
    waiting = await store.create_job(spec(session=home, index=1))
    assert waiting.state == "pending"
    actions = await store.cancel_jobs([(running.job_id, running.cell)], "gap_timeout")
    assert [c.job_id for c in actions if isinstance(c, Cancel)] == [running.job_id]
    assert [(x.job_id, x.node) for x in assigns(actions)] == [(waiting.job_id, a)]


async def test_an_unreachable_stale_assign_never_ends_a_newer_registration(store: Store) -> None:
    a = node_in(store, 0, "a")
    await add_node(store, a)
    created = await store.create_job(spec(session=session_in(store, 0)))
    [assign] = assigns(created.actions)
    assert assign.conn == f"conn-{a}"  # the registration the store chose the node under
    await store.register_node(a, "conn-a-again", "inst", 4, b"{}")  # the node registered again meanwhile
    assert await store.node_gone(a, assign.conn) == []  # the instance that could not reach it: no effect
    assert (await store.heartbeat_node(a, "conn-a-again", ["zh:en"], 4, b"{}", 8)).ok
