"""The room scripts and the utterance guard, called through ``Store`` on a real server and a real Cluster."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from dragoman.config import Settings
from dragoman.scheduler.store import JobSpec, RoomMember, Store, assigned_node


@pytest.fixture
async def store(any_store_url: str) -> AsyncIterator[Store]:
    settings = Settings(key_prefix=f"rs-{uuid.uuid4().hex[:8]}", room_idle_ms=1500, room_max_members=2)
    s = Store(settings, any_store_url)
    await s.open()
    yield s
    await s.close()


def member(session: str, instance: str = "inst-a", lang: str = "en") -> RoomMember:
    return RoomMember(
        session_id=session, joined_at="2026-01-22T10:00:00.000000Z", instance=instance, preferred_lang=lang
    )


async def test_codes_are_unique_among_live_rooms_and_freed_with_the_room(store: Store) -> None:
    assert await store.claim_room_code("482913", "room-1")
    assert not await store.claim_room_code("482913", "room-2")
    assert await store.room_of_code("482913") == "room-1"
    created = await store.create_room("room-1", "482913", member("s-1"))
    assert (created.status, created.code, created.version) == ("created", "482913", 1)
    left = await store.leave_room("room-1", "s-1")  # the last member: the room and its code go
    assert left.status == "deleted"
    assert await store.room_of_code("482913") is None
    assert await store.room_counts() == (0, 0)
    assert (await store.join_room("room-1", member("s-2"))).status == "not_found"


async def test_join_full_already_rejoin_and_versions(store: Store) -> None:
    await store.claim_room_code("100001", "r")
    await store.create_room("r", "100001", member("s-1", lang="zh"))
    joined = await store.join_room("r", member("s-2"))
    assert joined.status == "joined" and joined.version == 2
    assert {m.session_id for m in joined.members} == {"s-1", "s-2"}
    assert (await store.join_room("r", member("s-3"))).status == "full"
    assert (await store.join_room("r", member("s-2"))).status == "already"
    back = await store.join_room("r", member("s-2", instance="inst-b"), rejoin=True)  # resumed elsewhere
    assert back.status == "joined" and back.version == 3
    assert next(m for m in back.members if m.session_id == "s-2").instance == "inst-b"
    muted = await store.set_raw_voice("r", "s-2", "s-1", False)
    assert muted.version == 4
    assert next(m for m in muted.members if m.session_id == "s-2").raw_voice_preferences == {"s-1": False}
    assert (await store.set_raw_voice("r", "s-9", "s-1", False)).status == "not_member"
    assert await store.room_counts() == (1, 2)


async def test_idle_rooms_expire_and_active_ones_are_looked_at_again(store: Store) -> None:
    for room, code in (("idle", "200001"), ("busy", "200002")):
        await store.claim_room_code(code, room)
        await store.create_room(room, code, member(f"s-{room}"))
    assert await store.expire_rooms() == []  # not idle yet
    for _ in range(8):  # "busy" delivers results (well within its idle time); "idle" does not
        await asyncio.sleep(0.25)
        assert (await store.touch_room("busy")).status == "touched"
    expired = await store.expire_rooms()
    assert [(s.room_id, s.code, [m.session_id for m in s.members]) for s in expired] == [("idle", "200001", ["s-idle"])]
    assert await store.room_of_code("200001") is None and await store.room_of_code("200002") == "busy"
    assert await store.room_counts() == (1, 1)
    await asyncio.sleep(1.6)
    assert [s.room_id for s in await store.expire_rooms()] == ["busy"]
    assert await store.room_counts() == (0, 0)


async def test_members_of_a_dead_instance_are_dropped(store: Store) -> None:
    await store.claim_room_code("300001", "r")
    await store.create_room("r", "300001", member("s-1", instance="dead"))
    await store.join_room("r", member("s-2", instance="alive"))
    await store.claim_room_code("300002", "solo")
    await store.create_room("solo", "300002", member("s-3", instance="dead"))
    [left] = await store.drop_instance_members("dead")
    assert left.room_id == "r" and [m.session_id for m in left.members] == ["s-2"]
    assert await store.room_counts() == (1, 1)  # "solo" had nobody else: deleted
    assert await store.room_of_code("300002") is None


def job(tgt: str, guard: bool, index: int = 0) -> JobSpec:
    return JobSpec(
        session="s-room",
        index=index,
        tgt=tgt,
        job_id=f"job-{uuid.uuid4()}",
        pair=f"zh:{tgt}",
        pair2="",
        turn="turn-1",
        trace="trace",
        owner="inst",
        body=b',"x":1}',
        result_ttl_ms=60_000,
        guard=guard,
        room=True,
    )


async def test_a_client_keys_join_budget_is_taken_and_given_back_atomically(store: Store) -> None:
    """Concurrent takes never overrun the budget; a given-back attempt can be taken again; giving back never
    goes below zero; the budget is renewed after its window; keys do not share one (names with any character)."""
    key = "gateway {x}"  # braces and a space: the key is built from the name's digest
    taken = await asyncio.gather(*(store.take_join_attempt(key, 3, 2000) for _ in range(8)))
    assert sorted(w == 0 for w in taken) == [False] * 5 + [True] * 3
    assert all(0 < w <= 2000 for w in taken if w)
    await store.give_back_join_attempt(key)
    assert await store.take_join_attempt(key, 3, 2000) == 0
    assert await store.take_join_attempt(key, 3, 2000) > 0
    assert await store.take_join_attempt("another key", 3, 2000) == 0
    for _ in range(3):
        await store.give_back_join_attempt("never taken")
    first, second = [await store.take_join_attempt("never taken", 1, 2000) for _ in range(2)]
    assert first == 0 and 0 < second <= 2000  # the gifts did not raise its budget
    await asyncio.sleep(2.1)
    assert await store.take_join_attempt(key, 3, 2000) == 0


async def test_the_utterance_guard_keeps_one_utterances_jobs_on_different_nodes(store: Store) -> None:
    await store.register_node("n1", "c1", "inst", 8, b"{}")
    assert (await store.heartbeat_node("n1", "c1", ["zh:en", "zh:ja"], 8, b"{}", drain=8)).ok
    first = await store.create_job(job("en", guard=True))
    assert assigned_node(first.actions, first.job_id) == "n1"
    second = await store.create_job(job("ja", guard=True))
    assert second.state == "pending" and not second.actions  # n1 has this (session, index) already
    # Without the flag (one job per utterance) nothing extra is looked at: another index goes to n1 at once.
    third = await store.create_job(job("en", guard=False, index=1))
    assert assigned_node(third.actions, third.job_id) == "n1"
    await store.register_node("n2", "c2", "inst", 8, b"{}")
    reply = await store.heartbeat_node("n2", "c2", ["zh:en", "zh:ja"], 8, b"{}", drain=8)
    assert [(a.job_id, a.node) for a in reply.actions] == [(second.job_id, "n2")]  # placed on the new node


async def test_room_jobs_are_not_kept_for_a_resume(store: Store) -> None:
    await store.open_session("s-room", "inst", "actor", msgspec.json.encode({"type": "session_init"}), "t")
    own = JobSpec(**{**msgspec.structs.asdict(job("en", guard=False)), "room": False})
    await store.create_job(own)
    await store.create_job(job("ja", guard=False, index=1))
    snapshot = await store.session_snapshot("s-room")
    assert snapshot is not None and [index for index, _, _ in snapshot.jobs] == [0]


async def test_a_guarded_job_waiting_in_one_cell_moves_to_a_node_of_another(any_store_url: str) -> None:
    settings = Settings(key_prefix=f"rs-{uuid.uuid4().hex[:8]}", cells=2)
    store = Store(settings, any_store_url)
    await store.open()
    try:
        home = store.keys.home_cell("s-room")
        first_node = next(n for n in (f"n-{i}" for i in range(1000)) if store.keys.node_cell(n) == home)
        other_node = next(n for n in (f"m-{i}" for i in range(1000)) if store.keys.node_cell(n) != home)
        await store.register_node(first_node, "c1", "inst", 8, b"{}")
        await store.heartbeat_node(first_node, "c1", ["zh:en", "zh:ja"], 8, b"{}", drain=8)
        first = await store.create_job(job("en", guard=True))
        second = await store.create_job(job("ja", guard=True))
        assert assigned_node(first.actions, first.job_id) == first_node and second.state == "pending"
        await store.register_node(other_node, "c2", "inst", 8, b"{}")
        await store.heartbeat_node(other_node, "c2", ["zh:en", "zh:ja"], 8, b"{}", drain=8)
        moved = [a for a in await store.tick() if getattr(a, "job_id", None) == second.job_id]
        assert [getattr(a, "node", None) for a in moved] == [other_node]
        record = await store.get_job(second.job_id)
        assert record is not None and record.node == other_node and record.cell != home
    finally:
        await store.close()
