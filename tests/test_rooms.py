"""Rooms (PROTOCOL.md §13, §11.1, §12.3, §15.5): lingua-style clients on real sockets, a real store, members
on several instances."""

from __future__ import annotations

import asyncio
import re
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from dragoman.scheduler.store.embedded import EmbeddedStore
from test_resume import serve, wait_healthy

from conftest import CELLS, Running, StartDragoman, free_port, start_dragoman
from peers import Frame, LinguaNode, LinguaWebClient, pcm16, voiced_chunk

LANGS = ("zh", "en", "ja")
JOINED_AT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z$")


@pytest.fixture
async def pair(any_store_url: str) -> AsyncIterator[tuple[Running, Running]]:
    """Two instances sharing one store (one deployment): a single server, then a Redis Cluster."""
    prefix = f"rooms-{uuid.uuid4().hex[:8]}"
    a = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50, cells=max(2, CELLS))
    b = await start_dragoman(any_store_url, prefix=prefix, tick_interval_ms=50, cells=max(2, CELLS))
    yield a, b
    for instance in (a, b):
        await instance.stop()


async def _client(url: str, lang: str) -> LinguaWebClient:
    client = LinguaWebClient(url)
    await client.open()
    await client.init(two_way=False, src_lang=lang, tgt_lang="en")
    return client


async def _room_error(client: LinguaWebClient) -> Frame:
    return await client.expect("room_error")


async def test_create_join_leave_and_lingua_errors(dragoman: StartDragoman) -> None:
    d = await dragoman()
    a, b, c = [await _client(d.session_url, lang) for lang in LANGS]
    try:
        ack, members = await a.room_create(preferred_lang="zh", display_name="Ann")
        code = ack["room_code"]
        assert re.fullmatch(r"[1-9]\d{5}", code) and uuid.UUID(ack["room_id"]).version == 4
        [first] = members
        assert first["participant_id"] == first["session_id"] == a.session_id
        assert first["display_name"] == "Ann" and first["preferred_lang"] == "zh"
        assert JOINED_AT.match(first["joined_at"]) and "raw_voice_preferences" not in first

        await b.room_join(code, preferred_lang="en")
        # the joiner gets the room's code in a room_create_ack first: lingua's web client takes it from nowhere
        # else, and ignores room_members (and WebRTC offers) of a room whose code it does not know
        assert await b.recv() == {"type": "room_create_ack", "room_code": code, "room_id": ack["room_id"]}
        joined = await b.recv()
        assert joined["type"] == "room_members" and joined["room_code"] == code
        for members in (joined["members"], await a.members(count=2)):
            assert [m["session_id"] for m in members] == [a.session_id, b.session_id]  # in joining order

        await b.room_join(code, preferred_lang="en")
        assert await _room_error(b) == {"type": "room_error", "code": "ALREADY_IN_ROOM", "message": "已在房间中"}
        await a.send({"type": "room_create", "client_ts": 1})  # already in one
        assert (await _room_error(a))["code"] == "ALREADY_IN_ROOM"
        wrong = "100000" if code != "100000" else "100001"
        await c.room_join(wrong, preferred_lang="ja")
        assert await _room_error(c) == {"type": "room_error", "code": "ROOM_NOT_FOUND", "message": "房间不存在"}
        await c.room_join(code, preferred_lang="ja", display_name="x" * 129)
        assert (await _room_error(c))["message"] == "display_name is longer than 128 characters"
        await c.room_join(code, preferred_lang="j" * 33)
        assert (await _room_error(c))["message"] == "preferred_lang is longer than 32 characters"
        await a.expect_nothing(0.2, types={"room_members"})

        await b.room_leave(code)
        assert [m["session_id"] for m in await a.members()] == [a.session_id]
        await b.room_leave(code)
        assert (await _room_error(b))["code"] == "ROOM_NOT_FOUND"
        await b.expect_nothing(0.3, types={"room_members"})

        await a.room_leave(code)  # the last member: the room is deleted, its code free
        await a.expect_nothing(0.3, types={"room_members", "room_error"})
        await c.room_join(code)
        assert (await _room_error(c))["code"] == "ROOM_NOT_FOUND"
        assert await d.store.room_counts() == (0, 0)
    finally:
        for client in (a, b, c):
            await client.close()


async def test_room_message_before_session_init_and_malformed(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.send({"type": "room_create", "client_ts": 1})
        error = await client.expect("error")
        assert error["code"] == "INTERNAL_ERROR"
        assert error["message"] == "Failed to process message: Session not initialized"
        await client.init()
        await client.send({"type": "room_join"})  # no room_code
        assert (await client.expect("error"))["code"] == "INVALID_MESSAGE"
        ack, _ = await client.room_create()  # the socket is still usable
        assert ack["room_code"]


async def _answer_all(nodes: list[LinguaNode], count: int) -> list[Frame]:
    """Collect ``count`` jobs from the nodes and answer them in reverse order of arrival."""
    jobs: list[tuple[LinguaNode, Frame]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while len(jobs) < count and loop.time() < deadline:
        for node in nodes:
            jobs += [(node, job) for job in await node.jobs_within(0.2)]
    assert len(jobs) == count, f"{len(jobs)} of {count} jobs"
    for node, job in reversed(jobs):
        await node.result(job, text_translated=f"{job['tgt_lang']}:{job['session_id']}:{job['utterance_index']}")
    return [job for _, job in jobs]


async def test_three_members_three_languages_on_two_instances(pair: tuple[Running, Running]) -> None:
    a, b = pair
    nodes = [LinguaNode(x.node_url, langs=LANGS, max_concurrent_jobs=8) for x in (a, b)]
    for node in nodes:
        await node.start()
    # zh and ja speakers on instance a, the en speaker on instance b
    zh, en, ja = (
        await _client(a.session_url, "zh"),
        await _client(b.session_url, "en"),
        await _client(a.session_url, "ja"),
    )
    members = {"zh": zh, "en": en, "ja": ja}
    try:
        ack, _ = await zh.room_create(preferred_lang="zh")
        await en.room_join(ack["room_code"], preferred_lang="en")
        await en.members(count=2)
        await ja.room_join(ack["room_code"], preferred_lang="ja")
        for client in members.values():
            await client.members(count=3)

        for index in range(2):  # everybody speaks twice
            for lang, client in members.items():
                await client.utterance(index, pcm16(300), src_lang=lang, tgt_lang="en")
        jobs = await _answer_all(nodes, 3 * 2 * 2)  # each utterance: one job per other member's language

        by_utterance: dict[tuple[str, int], list[Frame]] = {}
        for job in jobs:
            by_utterance.setdefault((job["session_id"], job["utterance_index"]), []).append(job)
        for (session, _), group in by_utterance.items():
            speaker = next(lang for lang, c in members.items() if c.session_id == session)
            assert sorted(j["tgt_lang"] for j in group) == sorted(set(LANGS) - {speaker})
            assert len({j["turn_id"] for j in group}) == 1  # one turn for the utterance's jobs
        for node in nodes:  # lingua's node rejects a repeated (session_id, utterance_index) (N5)
            seen = [(j["session_id"], j["utterance_index"]) for j in node.jobs]
            assert len(seen) == len(set(seen))

        for lang, listener in members.items():
            got = await listener.outcomes(4)
            results = [(r["session_id"], r["utterance_index"], r["text_translated"]) for r in got]
            others = [c.session_id for other, c in members.items() if other != lang]
            for speaker in others:  # each other member's results, in that speaker's order, exactly once
                assert [(i, t) for s, i, t in results if s == speaker] == [
                    (0, f"{lang}:{speaker}:0"),
                    (1, f"{lang}:{speaker}:1"),
                ]
            assert listener.session_id not in {s for s, _, _ in results}  # not its own
            await listener.expect_nothing(0.4, types={"translation_result", "missing_result", "error"})
    finally:
        for client in members.values():
            await client.close()
        for node in nodes:
            await node.close()


async def test_utterance_jobs_never_share_a_node(dragoman: StartDragoman) -> None:
    """With one node and two target languages, the second job of an utterance waits for another node
    instead of reaching the same node (N5); a second node then gets it."""
    d = await dragoman(tick_interval_ms=50)
    first = LinguaNode(d.node_url, langs=LANGS)
    await first.start()
    zh, en, ja = [await _client(d.session_url, lang) for lang in LANGS]
    second = LinguaNode(d.node_url, langs=LANGS)
    try:
        ack, _ = await zh.room_create(preferred_lang="zh")
        await en.room_join(ack["room_code"], preferred_lang="en")
        await ja.room_join(ack["room_code"], preferred_lang="ja")
        await zh.members(count=3)
        await zh.utterance(0, pcm16(300), src_lang="zh", tgt_lang="en")
        job = await first.next_job()
        await first.expect_nothing(0.5, types={"job_assign"})
        await second.start()
        other = await second.next_job()
        assert {job["tgt_lang"], other["tgt_lang"]} == {"en", "ja"}
        assert (job["session_id"], job["utterance_index"]) == (other["session_id"], other["utterance_index"])
        await first.result(job)
        await second.result(other)
        assert (await en.outcomes(1))[0]["text_translated"] == "en: asr 0"
        assert (await ja.outcomes(1))[0]["text_translated"] == "ja: asr 0"
    finally:
        for peer in (zh, en, ja, first, second):
            await peer.close()


async def test_webrtc_relay_across_instances_mute_and_refusal(pair: tuple[Running, Running]) -> None:
    a, b = pair
    alice, bob, carol = (
        await _client(a.session_url, "zh"),
        await _client(b.session_url, "en"),
        await _client(b.session_url, "ja"),
    )
    try:
        ack, _ = await alice.room_create(preferred_lang="zh")
        code = ack["room_code"]
        await bob.room_join(code, preferred_lang="en")
        await alice.members(count=2)
        await bob.members(count=2)
        sdp = {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}
        await alice.webrtc("webrtc_offer", code, bob.session_id, sdp)
        assert await bob.expect("webrtc_offer") == {
            "type": "webrtc_offer",
            "room_code": code,
            "to": alice.session_id,
            "sdp": sdp,
        }
        await bob.webrtc("webrtc_answer", code, alice.session_id, {"type": "answer", "sdp": "v=0"})
        answer = await alice.expect("webrtc_answer")
        assert answer["to"] == bob.session_id and answer["sdp"] == {"type": "answer", "sdp": "v=0"}
        candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0"}
        await alice.webrtc("webrtc_ice", code, bob.session_id, candidate)
        ice = await bob.expect("webrtc_ice")
        assert ice["to"] == alice.session_id and ice["candidate"] == candidate

        await bob.raw_voice(code, alice.session_id, False)  # bob mutes alice
        for client in (alice, bob):
            members = await client.members()
            assert next(m for m in members if m["session_id"] == bob.session_id)["raw_voice_preferences"] == {
                alice.session_id: False
            }
        await alice.webrtc("webrtc_offer", code, bob.session_id, sdp)
        await bob.expect_nothing(0.4, types={"webrtc_offer"})
        await bob.webrtc("webrtc_ice", code, alice.session_id, candidate)  # alice did not mute bob
        assert (await alice.expect("webrtc_ice"))["to"] == bob.session_id

        await alice.webrtc("webrtc_offer", code, carol.session_id, sdp)  # carol is in no room
        assert (await _room_error(alice))["code"] == "INTERNAL_ERROR"
        await carol.webrtc("webrtc_offer", code, alice.session_id, sdp)  # not a member of that room
        assert (await _room_error(carol))["code"] == "ROOM_NOT_FOUND"
        await alice.expect_nothing(0.3, types={"webrtc_offer"})
        await carol.expect_nothing(0.1, types={"webrtc_offer"})
    finally:
        for client in (alice, bob, carol):
            await client.close()


async def test_socket_close_leaves_and_resume_rejoins(pair: tuple[Running, Running]) -> None:
    a, b = pair
    alice, bob = await _client(a.session_url, "zh"), await _client(b.session_url, "en")
    try:
        ack, _ = await alice.room_create(preferred_lang="zh")
        await bob.room_join(ack["room_code"], preferred_lang="en", display_name="Bob")
        await alice.members(count=2)
        bob_id, bob_token = bob.session_id, bob.ack["resume_token"]
        await bob.close()  # no session_close: the web client just closes its socket
        assert [m["session_id"] for m in await alice.members()] == [alice.session_id]

        bob = LinguaWebClient(a.session_url)  # back, on the other instance
        await bob.open()
        await bob.init(two_way=False, src_lang="en", resume_session_id=bob_id, resume_token=bob_token)
        assert bob.session_id == bob_id
        back = await bob.members(count=2)
        assert next(m for m in back if m["session_id"] == bob_id)["display_name"] == "Bob"
        await alice.members(count=2)

        await alice.close_session()  # session_close leaves the room too
        await alice.expect("session_close_ack")
        assert [m["session_id"] for m in await bob.members()] == [bob_id]
    finally:
        await alice.close()
        await bob.close()


async def test_idle_room_expires(dragoman: StartDragoman) -> None:
    d = await dragoman(room_idle_ms=600, room_check_interval_ms=100)
    alice, bob = [await _client(d.session_url, lang) for lang in ("zh", "en")]
    try:
        ack, _ = await alice.room_create(preferred_lang="zh")
        await bob.room_join(ack["room_code"], preferred_lang="en")
        for client in (alice, bob):
            expired = await client.expect("room_expired", timeout=5)
            assert expired == {
                "type": "room_expired",
                "room_code": ack["room_code"],
                "message": "30分钟无人发言，房间已过期",
            }
        await bob.room_join(ack["room_code"], preferred_lang="en")
        assert (await _room_error(bob))["code"] == "ROOM_NOT_FOUND"
        ack2, _ = await alice.room_create(preferred_lang="zh")  # no longer in a room: may create another
        assert ack2["room_id"] != ack["room_id"]
        assert await d.store.room_counts() == (1, 1)
    finally:
        await alice.close()
        await bob.close()


async def test_room_full_and_failed_joins_are_limited(dragoman: StartDragoman) -> None:
    d = await dragoman(room_max_members=2, room_join_failures=3)
    alice, bob, carol = [await _client(d.session_url, lang) for lang in LANGS]
    try:
        ack, _ = await alice.room_create(preferred_lang="zh")
        await bob.room_join(ack["room_code"], preferred_lang="en")
        await bob.members(count=2)
        await carol.room_join(ack["room_code"], preferred_lang="ja")
        assert (await _room_error(carol))["code"] == "ROOM_FULL"

        for guess in ("12345", "abcdef", "999999" if ack["room_code"] != "999999" else "999998"):
            await carol.room_join(guess)
            assert (await _room_error(carol))["code"] == "ROOM_NOT_FOUND"
        await bob.room_leave(ack["room_code"])  # room now; but carol's socket has used up its failures
        await alice.members(count=1)
        await carol.room_join(ack["room_code"], preferred_lang="ja")
        limited = await _room_error(carol)
        assert limited["code"] == "INTERNAL_ERROR" and "too many failed room joins" in limited["message"]
        await bob.room_join(ack["room_code"], preferred_lang="en")  # another socket is not limited
        await bob.members(count=2)
        assert not await d.store.client.keys("*roomjoin*")  # without client keys, no budget in the store
    finally:
        for client in (alice, bob, carol):
            await client.close()


async def test_failed_joins_are_limited_per_client_key_across_sockets_and_instances(any_store_url: str) -> None:
    """The sockets of one client key share a budget of failed joins, on every instance (in the store); a
    right code does not use it up; another key, and browsers admitted by their Origin, keep their own."""
    prefix, origin = f"roomkeys-{uuid.uuid4().hex[:8]}", "https://talk.example.org"
    auth = {"client_keys": ("app:app-key", "other:other-key"), "allowed_origins": (origin,)}
    limits = {"room_join_failures": 5, "room_join_key_failures": 3, "room_join_window_ms": 3000}
    a, b = [await start_dragoman(any_store_url, prefix=prefix, cells=max(2, CELLS), **auth, **limits) for _ in "ab"]

    async def opened(instance: Running, key: str = "", lang: str = "en") -> LinguaWebClient:
        client = LinguaWebClient(instance.session_url + (f"?key={key}" if key else ""))
        if not key:
            client.headers = {"Origin": origin}
        await client.open()
        await client.init(two_way=False, src_lang=lang, tgt_lang="en")
        return client

    host = await opened(a, "other-key", "zh")
    app_a, app_b, other, page_1, page_2 = [
        await opened(*where) for where in ((a, "app-key"), (b, "app-key"), (b, "other-key"), (a,), (b,))
    ]
    clients = (host, app_a, app_b, other, page_1, page_2)
    try:
        ack, _ = await host.room_create(preferred_lang="zh")
        code = ack["room_code"]
        wrong = "100000" if code != "100000" else "100001"
        await app_a.room_join(code, preferred_lang="en")  # a right code gives its attempt back
        await app_a.members(count=2)
        await app_a.room_leave(code)
        await host.members(count=1)
        for client in (app_a, app_b, app_a):  # the key's 3 failures, from two sockets on two instances
            await client.room_join(wrong)
            assert (await _room_error(client))["code"] == "ROOM_NOT_FOUND"
        for client in (app_b, app_a):  # either socket, even with the right code
            await client.room_join(code, preferred_lang="en")
            limited = await _room_error(client)
            assert limited["code"] == "INTERNAL_ERROR"
            assert "too many failed room joins with this client key; retry in" in limited["message"]
        retry_ms = int(re.findall(r"retry in (\d+) ms", limited["message"])[0])
        assert 0 < retry_ms <= 3000

        await other.room_join(wrong)  # another key is not limited
        assert (await _room_error(other))["code"] == "ROOM_NOT_FOUND"
        for _ in range(5):  # a browser page has the per-socket budget only: more failures than the key's
            await page_1.room_join(wrong)
            assert (await _room_error(page_1))["code"] == "ROOM_NOT_FOUND"
        await page_1.room_join(wrong)
        assert "from this connection" in (await _room_error(page_1))["message"]
        await page_2.room_join(code, preferred_lang="ja")  # another page (same Origin) is not limited
        await page_2.members(count=2)

        await asyncio.sleep(retry_ms / 1000 + 0.2)  # the key's window is over: it may try again
        await app_b.room_join(code, preferred_lang="en")
        assert len(await app_b.members(count=3)) == 3
    finally:
        for client in clients:
            await client.close()
        for instance in (a, b):
            await instance.stop()


async def test_web_client_streams_into_a_room_and_views_count_rooms(pair: tuple[Running, Running]) -> None:
    a, b = pair
    bilingual = LinguaNode(a.node_url, langs=("zh", "en"))  # cannot produce ja
    await bilingual.start()
    node = LinguaNode(a.node_url, langs=LANGS)
    await node.start()
    speaker = LinguaWebClient(a.session_url)  # the web client's two-way session, streaming Opus
    await speaker.open()
    await speaker.init(lang_a="zh", lang_b="en")
    listener = await _client(b.session_url, "ja")
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        await listener.room_join(ack["room_code"], preferred_lang="ja")
        await speaker.members(count=2)
        await speaker.chunk(voiced_chunk())
        await speaker.chunk(voiced_chunk())
        await speaker.chunk(b"", is_final=True)
        job = await node.next_job()
        assert job["tgt_lang"] == "ja" and job["session_id"] == speaker.session_id and job["is_manual_cut"]
        assert (job["src_lang"], job["lang_a"], job["lang_b"]) == ("auto", "zh", "en")
        await bilingual.expect_nothing(0.3, types={"job_assign"})  # zh or en speech into ja: not for it
        await node.result(job, text_translated="hello")
        [result] = await listener.outcomes(1)
        assert result["session_id"] == speaker.session_id and result["text_translated"] == "hello"
        await speaker.expect_nothing(0.4, types={"translation_result"})
        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{b.http}/api/v1/stats")).json()
            assert stats["rooms"] == {"active_rooms": 1, "room_members": 2}
            cluster = (await http.get(f"{a.http}/api/v1/cluster")).json()
            assert (cluster["total_rooms"], cluster["total_room_members"]) == (1, 2)
            metrics = (await http.get(f"{a.http}/metrics")).text
            assert 'dragoman_room_events_total{event="created"}' in metrics
    finally:
        for peer in (speaker, listener, node, bilingual):
            await peer.close()


async def test_members_of_a_killed_instance_leave_their_rooms(store_url: str) -> None:
    """SIGKILL: no socket close is seen; the instance that takes the dead one over takes its members out."""
    prefix = f"roomkill-{uuid.uuid4().hex[:8]}"
    port_a, port_b = free_port(), free_port()
    a, b = serve(store_url, prefix, port_a), serve(store_url, prefix, port_b)
    alice = LinguaWebClient(f"ws://127.0.0.1:{port_a}/ws/session")
    bob = LinguaWebClient(f"ws://127.0.0.1:{port_b}/ws/session")
    try:
        await asyncio.gather(wait_healthy(port_a), wait_healthy(port_b))
        for client, lang in ((alice, "zh"), (bob, "en")):
            await client.open()
            await client.init(two_way=False, src_lang=lang)
        ack, _ = await alice.room_create(preferred_lang="zh")
        await bob.room_join(ack["room_code"], preferred_lang="en")
        await bob.members(count=2)
        a.send_signal(signal.SIGKILL)
        a.wait()
        assert [m["session_id"] for m in await bob.members(timeout=15)] == [bob.session_id]
    finally:
        await alice.close()
        await bob.close()
        for process in (a, b):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)


async def test_store_outage_gets_room_error_and_the_socket_stays_usable(tmp_path: Path) -> None:
    server = EmbeddedStore(tmp_path / "store")
    d = await start_dragoman(await server.start(), tick_interval_ms=50)
    alice, bob = [await _client(d.session_url, lang) for lang in ("zh", "en")]
    try:
        ack, _ = await alice.room_create(preferred_lang="zh")
        await server.stop()
        await bob.room_join(ack["room_code"], preferred_lang="en")
        error = await _room_error(bob)
        assert error["code"] == "INTERNAL_ERROR" and error["message"].startswith("room operation failed")
        await alice.raw_voice(ack["room_code"], bob.session_id or "", False)
        assert (await _room_error(alice))["code"] == "INTERNAL_ERROR"
        assert (await bob.heartbeat())["type"] == "server_heartbeat"
        await alice.close_session()  # its room cannot be told; the session closes anyway
        await alice.expect("session_close_ack", timeout=10)
    finally:
        await alice.close()
        await bob.close()
        await d.stop()
        await server.stop()


async def test_listeners_of_one_language_on_another_instance_each_get_the_result(
    pair: tuple[Running, Running],
) -> None:
    a, b = pair
    node = LinguaNode(a.node_url, langs=LANGS)
    await node.start()
    speaker = await _client(a.session_url, "zh")
    listeners = [await _client(b.session_url, "en") for _ in range(2)]  # one post to b carries both copies
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        for listener in listeners:
            await listener.room_join(ack["room_code"], preferred_lang="en")
        await speaker.members(count=3)
        for index in range(3):
            await speaker.utterance(index, pcm16(200), src_lang="zh", tgt_lang="en")
        for job in [await node.next_job() for _ in range(3)][::-1]:
            await node.result(job)
        for listener in listeners:
            assert [o["utterance_index"] for o in await listener.outcomes(3)] == [0, 1, 2]
            await listener.expect_nothing(0.3, types={"translation_result"})
    finally:
        for peer in (speaker, *listeners, node):
            await peer.close()


async def test_joining_and_leaving_mid_utterance(dragoman: StartDragoman) -> None:
    """Recipients are the members of the language at release time: a member who joined while the job ran gets
    it, one who left does not, and nobody else loses or doubles a result."""
    d = await dragoman()
    nodes = [LinguaNode(d.node_url, langs=LANGS, max_concurrent_jobs=8) for _ in range(2)]
    for node in nodes:
        await node.start()
    speaker, early, late, ja = [await _client(d.session_url, lang) for lang in ("zh", "en", "en", "ja")]
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        code = ack["room_code"]
        for member, lang in ((early, "en"), (ja, "ja")):
            await member.room_join(code, preferred_lang=lang)
        await speaker.members(count=3)
        await speaker.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        first = [(n, await n.next_job()) for n in nodes]  # two languages: one job on each node
        assert {j["tgt_lang"] for _, j in first} == {"en", "ja"}
        await late.room_join(code, preferred_lang="en")  # joins while utterance 0 is in flight
        await ja.room_leave(code)  # leaves while its language's job is in flight
        await speaker.members(count=3)
        for node, job in first:
            await node.result(job)
        for member in (early, late):
            [result] = await member.outcomes(1)
            assert (result["utterance_index"], result["text_translated"]) == (0, "en: asr 0")
        await ja.expect_nothing(0.3, types={"translation_result"})

        await speaker.utterance(1, pcm16(200), src_lang="zh", tgt_lang="en")
        [(node, job)] = [(n, j) for n in nodes for j in await n.jobs_within(0.3)]  # only en is left
        assert job["tgt_lang"] == "en" and job["utterance_index"] == 1
        await early.room_leave(code)
        await node.result(job)
        assert [r["utterance_index"] for r in await late.outcomes(1)] == [1]
        await early.expect_nothing(0.3, types={"translation_result"})
    finally:
        for peer in (speaker, early, late, ja, *nodes):
            await peer.close()


async def test_gap_timeout_in_a_room_stream(dragoman: StartDragoman) -> None:
    d = await dragoman(gap_timeout_ms=800)
    node = LinguaNode(d.node_url, langs=LANGS)
    await node.start()
    speaker, listener = await _client(d.session_url, "zh"), await _client(d.session_url, "en")
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        await listener.room_join(ack["room_code"], preferred_lang="en")
        await speaker.members(count=2)
        for index in range(2):
            await speaker.utterance(index, pcm16(200), src_lang="zh", tgt_lang="en")
        stuck, answered = await node.next_job(), await node.next_job()
        await node.result(answered)
        gap, result = await listener.outcomes(2, timeout=5)
        assert (gap["type"], gap["utterance_index"], gap["reason"]) == ("missing_result", 0, "gap_timeout")
        assert (result["type"], result["utterance_index"]) == ("translation_result", 1)
        cancel = await node.expect("job_cancel")
        assert cancel["job_id"] == stuck["job_id"]
        await node.result(stuck)  # too late: dropped
        await listener.expect_nothing(0.3, types={"translation_result", "missing_result"})
    finally:
        for peer in (speaker, listener, node):
            await peer.close()


async def test_failover_of_a_room_job_avoids_the_node_of_its_sibling(dragoman: StartDragoman) -> None:
    d = await dragoman(tick_interval_ms=50)
    nodes = [LinguaNode(d.node_url, langs=LANGS) for _ in range(2)]
    for node in nodes:
        await node.start()
    zh, en, ja = [await _client(d.session_url, lang) for lang in LANGS]
    spare = LinguaNode(d.node_url, langs=LANGS)
    try:
        ack, _ = await zh.room_create(preferred_lang="zh")
        await en.room_join(ack["room_code"], preferred_lang="en")
        await ja.room_join(ack["room_code"], preferred_lang="ja")
        await zh.members(count=3)
        await zh.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        held = {(j := await n.next_job())["tgt_lang"]: (n, j) for n in nodes}
        lost_node, lost_job = held["en"]
        await lost_node.close()  # the en job fails over; the ja node must not get it (N5)
        keeper, ja_job = held["ja"]
        await keeper.expect_nothing(0.5, types={"job_assign"})
        await spare.start()
        moved = await spare.next_job()
        assert (moved["job_id"], moved["attempt_id"]) == (lost_job["job_id"], 2)
        await spare.result(moved)
        await keeper.result(ja_job)
        assert (await en.outcomes(1))[0]["text_translated"] == "en: asr 0"
        assert (await ja.outcomes(1))[0]["text_translated"] == "ja: asr 0"
    finally:
        for peer in (zh, en, ja, *nodes, spare):
            await peer.close()


async def test_speaker_close_delivers_room_results_in_flight_then_acks(dragoman: StartDragoman) -> None:
    d = await dragoman()
    node = LinguaNode(d.node_url, langs=LANGS)
    await node.start()
    speaker, listener = await _client(d.session_url, "zh"), await _client(d.session_url, "en")
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        await listener.room_join(ack["room_code"], preferred_lang="en")
        await speaker.members(count=2)
        await speaker.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        job = await node.next_job()
        await speaker.close_session()  # §5.6: leave the room, then deliver what is outstanding, then ack
        assert [m["session_id"] for m in await listener.members(count=1)] == [listener.session_id]
        await speaker.expect_nothing(0.2, types={"session_close_ack"})
        await node.result(job)
        assert (await listener.outcomes(1))[0]["utterance_index"] == 0  # the speaker's last words still arrive
        await speaker.expect("session_close_ack")
    finally:
        for peer in (speaker, listener, node):
            await peer.close()


async def test_speaker_socket_closed_cancels_its_room_jobs(dragoman: StartDragoman) -> None:
    d = await dragoman()
    node = LinguaNode(d.node_url, langs=LANGS)
    await node.start()
    speaker, listener = await _client(d.session_url, "zh"), await _client(d.session_url, "en")
    try:
        ack, _ = await speaker.room_create(preferred_lang="zh")
        await listener.room_join(ack["room_code"], preferred_lang="en")
        await speaker.members(count=2)
        await speaker.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        job = await node.next_job()
        await speaker.close()
        assert (await node.expect("job_cancel"))["job_id"] == job["job_id"]
        assert [m["session_id"] for m in await listener.members(count=1)] == [listener.session_id]
    finally:
        for peer in (speaker, listener, node):
            await peer.close()


async def test_members_without_a_language_receive_nothing_and_a_speaker_nobody_hears_gets_its_own(
    dragoman: StartDragoman,
) -> None:
    """lingua's web client joins and creates rooms without ``preferred_lang``: as in lingua, a speaker whose
    fellow members have none gets its own job and result, as outside rooms; once one has a language, the job is
    for that member only, and the member without one still receives nothing."""
    d = await dragoman()
    node = LinguaNode(d.node_url, langs=LANGS)
    await node.start()
    speaker, silent, listener = [await _client(d.session_url, lang) for lang in LANGS]
    try:
        ack, _ = await speaker.room_create()
        await silent.room_join(ack["room_code"])  # no preferred_lang: receives nothing (§11.1)
        await speaker.members(count=2)
        await speaker.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        job = await node.next_job()  # nobody else would hear it: the speaker's own job, as in lingua
        assert (job["utterance_index"], job["tgt_lang"]) == (0, "en")
        await node.result(job)
        assert [o["utterance_index"] for o in await speaker.outcomes(1)] == [0]

        await listener.room_join(ack["room_code"], preferred_lang="ja")
        await speaker.members(count=3)
        await speaker.utterance(1, pcm16(200), src_lang="zh", tgt_lang="en")
        job = await node.next_job()
        assert (job["utterance_index"], job["tgt_lang"]) == (1, "ja")  # one job, for the member with a language
        await node.expect_nothing(0.3, types={"job_assign"})
        await node.result(job)
        [heard] = await listener.outcomes(1)
        assert (heard["session_id"], heard["utterance_index"]) == (speaker.session_id, 1)
        await speaker.expect_nothing(0.3, types={"translation_result", "missing_result"})
        await silent.expect_nothing(0.3, types={"translation_result", "missing_result"})
    finally:
        for peer in (speaker, silent, listener, node):
            await peer.close()


async def test_members_of_a_paused_instance_are_back_in_their_room_when_it_rejoins(store_url: str) -> None:
    """SIGSTOP past its presence: the taker takes its members out of their rooms; when it runs again and
    rejoins, they join again and the conversation goes on."""
    prefix = f"roompause-{uuid.uuid4().hex[:8]}"
    port_a, port_b = free_port(), free_port()
    a, b = serve(store_url, prefix, port_a), serve(store_url, prefix, port_b)
    alice = LinguaWebClient(f"ws://127.0.0.1:{port_a}/ws/session")
    bob = LinguaWebClient(f"ws://127.0.0.1:{port_b}/ws/session")
    node = LinguaNode(f"ws://127.0.0.1:{port_b}/ws/node", langs=LANGS)
    try:
        await asyncio.gather(wait_healthy(port_a), wait_healthy(port_b))
        await node.start()
        for client, lang in ((alice, "zh"), (bob, "en")):
            await client.open()
            await client.init(two_way=False, src_lang=lang)
        ack, _ = await alice.room_create(preferred_lang="zh")
        await bob.room_join(ack["room_code"], preferred_lang="en")
        await bob.members(count=2)
        a.send_signal(signal.SIGSTOP)
        assert [m["session_id"] for m in await bob.members(timeout=15)] == [bob.session_id]  # taken over
        a.send_signal(signal.SIGCONT)
        back = [m["session_id"] for m in await bob.members(timeout=15)]
        assert back == [alice.session_id, bob.session_id]  # alice joined again, in her place
        await alice.utterance(0, pcm16(200), src_lang="zh", tgt_lang="en")
        await node.result(await node.next_job(timeout=10))
        assert (await bob.outcomes(1))[0]["session_id"] == alice.session_id
    finally:
        for peer in (alice, bob, node):
            await peer.close()
        for process in (a, b):
            process.send_signal(signal.SIGCONT)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(20)
