"""Malformed and unexpected input against a real instance: a clear answer (or silence), never a closed socket.

PROTOCOL.md §2.3: on /ws/session a bad frame gets ``error INVALID_MESSAGE`` / ``INTERNAL_ERROR``, a wrong-direction
type and a binary frame get nothing; on /ws/node nothing is ever sent back. The socket always stays usable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from dragoman import protocol as p
from dragoman.agent.engines import EngineError, decode_audio
from dragoman.client.http import JobOutput
from dragoman.client.output import TtsWriter, outcome_json
from dragoman.client.tracker import TrackedOutcome

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, now_ms, pcm16, voiced_chunk

INVALID = "Invalid message format: "
FAILED = "Failed to process message: "
OUTCOMES = {"translation_result", "missing_result", "error"}


async def _ready(node: LinguaNode) -> str:
    """Register and send the first heartbeat, like the Electron node (the socket is already open)."""
    node_id = await node.register()
    await node.heartbeat()
    return node_id


async def _heartbeat_is_next(client: LinguaWebClient) -> None:
    """The socket still works, and nothing was sent back before the heartbeat's reply (F10: arrival order)."""
    await client.send({"type": "client_heartbeat", "session_id": client.session_id, "timestamp": now_ms()})
    frame = await client.recv(timeout=3)
    assert frame["type"] == "server_heartbeat", frame
    assert frame["session_id"] == client.session_id and isinstance(frame["timestamp"], int)


async def _error(client: LinguaWebClient) -> dict[str, Any]:
    frame = await client.recv(timeout=3)
    assert frame["type"] == "error", frame
    assert set(frame) == {"type", "code", "message"}, frame
    return frame


async def _round_trip(client: LinguaWebClient, node: LinguaNode, index: int) -> None:
    """A whole streamed utterance still reaches the node and its result comes back."""
    audio = voiced_chunk(packets=26)
    await client.chunk(audio)
    await client.chunk(b"", is_final=True)
    job = await node.next_job(timeout=5)
    assert job["utterance_index"] == index and base64.b64decode(job["audio"]) == audio
    await node.result(job, text_asr=f"ok {index}")
    [outcome] = await client.outcomes(1, timeout=5)
    assert outcome["type"] == "translation_result" and outcome["text_asr"] == f"ok {index}"


# ---------------------------------------------------------------------------------------------------------
# /ws/session: INVALID_MESSAGE


@pytest.mark.parametrize(
    ("raw", "detail_has"),
    [
        pytest.param('{"type": "client_heartbeat", "session_id": ', "", id="invalid-json"),
        pytest.param("not json at all", "", id="not-json"),
        pytest.param('[{"type": "client_heartbeat"}]', "array", id="json-array"),
        pytest.param('"client_heartbeat"', "", id="json-string"),
        pytest.param('{"type": "no_such_type", "session_id": "s-1"}', "no_such_type", id="unknown-type"),
        pytest.param('{"session_id": "s-1", "timestamp": 1}', "type", id="no-type"),
        pytest.param('{"type": "client_heartbeat", "timestamp": 1}', "session_id", id="missing-key"),
        pytest.param(
            '{"type": "audio_chunk", "session_id": "{sid}", "seq": "x", "is_final": false}', "seq", id="seq-string"
        ),
        pytest.param(
            '{"type": "audio_chunk", "session_id": "{sid}", "seq": 1, "is_final": "true"}', "is_final", id="bool-string"
        ),
        pytest.param(
            '{"type": "session_init", "client_version": "v", "src_lang": "zh", "tgt_lang": "en"}',
            "platform",
            id="init-missing-key",
        ),
        pytest.param(
            '{"type": "utterance", "session_id": "{sid}", "utterance_index": 0, "manual_cut": true,'
            ' "src_lang": "zh", "tgt_lang": "en", "audio": "AAAA", "audio_format": "pcm16", "sample_rate": "16000"}',
            "sample_rate",
            id="utterance-wrong-type",
        ),
    ],
)
async def test_malformed_client_frame_gets_invalid_message(dragoman: StartDragoman, raw: str, detail_has: str) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        assert client.session_id is not None
        await client.send_raw(raw.replace("{sid}", client.session_id))
        error = await _error(client)
        assert error["code"] == "INVALID_MESSAGE"
        assert error["message"].startswith(INVALID) and len(error["message"]) > len(INVALID)
        assert detail_has in error["message"][len(INVALID) :]
        await _heartbeat_is_next(client)


async def test_malformed_frames_before_session_init(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.send_raw("{{{")
        assert (await _error(client))["code"] == "INVALID_MESSAGE"
        await client.send_raw(b'{"type": "session_init"}')  # binary: ignored
        await client.send_raw(json.dumps({"type": "ui_event", "event": "DISPATCHED"}))  # wrong direction: ignored
        ack = await client.init()  # the next frame is the ack: nothing was sent for the two frames above
        assert client.received[-1] is ack and len(client.received) == 2
        await _heartbeat_is_next(client)


# ---------------------------------------------------------------------------------------------------------
# /ws/session: no reply at all


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param({"type": "session_init_ack", "session_id": "s-1", "message": "session created"}, id="init-ack"),
        pytest.param({"type": "ui_event", "event": "DISPATCHED", "status": "ok"}, id="ui_event"),
        pytest.param({"type": "translation_result", "utterance_index": 0}, id="translation_result"),
        pytest.param({"type": "server_heartbeat", "timestamp": 1}, id="server_heartbeat"),
        pytest.param({"type": "error", "code": "INTERNAL_ERROR", "message": "x"}, id="error"),
        pytest.param({"type": "room_members", "room_code": "123456", "members": []}, id="room_members"),
        pytest.param({"type": "job_assign", "job_id": "job-1", "attempt_id": 1}, id="job_assign"),
        pytest.param({"type": "job_cancel", "job_id": "job-1"}, id="job_cancel"),
        pytest.param({"type": "node_register", "version": "2.0.0"}, id="node_register"),
        pytest.param({"type": "node_heartbeat", "node_id": "node-1"}, id="node_heartbeat"),
        pytest.param({"type": "job_result", "job_id": "job-1", "success": True}, id="job_result"),
        pytest.param({"type": "asr_partial", "job_id": "j", "text": "x", "is_final": False}, id="asr_partial"),
        pytest.param({"type": "job_ack", "job_id": "j", "attempt_id": 1, "node_id": "n"}, id="job_ack"),
        pytest.param({"type": "job_started", "job_id": "j", "attempt_id": 1, "node_id": "n"}, id="job_started"),
        pytest.param({"type": "node_error", "node_id": "n", "code": "X", "message": "m"}, id="node_error"),
    ],
)
async def test_wrong_direction_type_gets_no_reply(dragoman: StartDragoman, frame: dict[str, Any]) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        await client.send({**frame, "session_id": client.session_id})
        await _heartbeat_is_next(client)


async def test_binary_frames_are_ignored(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        await client.send_raw(b"\x00\x01\x02\xff")
        beat = {"type": "client_heartbeat", "session_id": client.session_id, "timestamp": 1}
        await client.send_raw(json.dumps(beat).encode())  # valid JSON, but binary (F3): not processed
        await client.send_raw(b"")
        await _heartbeat_is_next(client)
        await client.expect_nothing(0.2)


async def test_frame_larger_than_max_message_bytes_gets_invalid_message(dragoman: StartDragoman) -> None:
    d = await dragoman(max_message_bytes=4096)
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        beat = {"type": "client_heartbeat", "session_id": client.session_id, "timestamp": 1, "pad": ""}
        overhead = len(json.dumps(beat))
        await client.send({**beat, "pad": "x" * (4096 - overhead)})  # exactly the limit: a valid heartbeat
        assert (await client.recv(timeout=3))["type"] == "server_heartbeat"
        await client.send({**beat, "pad": "x" * (5000 - overhead)})  # a valid heartbeat, but too large
        error = await _error(client)
        assert error["code"] == "INVALID_MESSAGE"
        assert error["message"].startswith(INVALID) and "4096" in error["message"]
        await _heartbeat_is_next(client)
        await client.send({**beat, "pad": "x" * 7000})
        assert (await _error(client))["code"] == "INVALID_MESSAGE"
        await _heartbeat_is_next(client)


async def test_size_limit_counts_utf8_bytes_not_characters(dragoman: StartDragoman) -> None:
    d = await dragoman(max_message_bytes=4096)
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        beat = {"type": "client_heartbeat", "session_id": client.session_id, "timestamp": 1, "pad": "你" * 1800}
        assert 4096 < len(json.dumps(beat, ensure_ascii=False).encode()) < 8192
        await client.send(beat)
        assert (await _error(client))["code"] == "INVALID_MESSAGE"
        await _heartbeat_is_next(client)


# ---------------------------------------------------------------------------------------------------------
# /ws/session: INTERNAL_ERROR, INVALID_SESSION, and bad audio


async def test_unknown_session_on_audio_chunk_and_utterance(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        await client.chunk(voiced_chunk(), session_id="s-DEADBEEF")
        error = await _error(client)
        assert error == {
            "type": "error",
            "code": "INTERNAL_ERROR",
            "message": f"{FAILED}Session does not exist: s-DEADBEEF",
        }
        await client.utterance(0, pcm16(100), session_id="s-0000BEEF")
        error = await _error(client)
        assert error["code"] == "INTERNAL_ERROR"
        assert error["message"].startswith(FAILED) and "s-0000BEEF" in error["message"]
        await _heartbeat_is_next(client)


async def test_client_heartbeat_for_unknown_session(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        await client.send({"type": "client_heartbeat", "session_id": "s-NOPE0000", "timestamp": now_ms()})
        assert await _error(client) == {
            "type": "error",
            "code": "INVALID_SESSION",
            "message": "Session does not exist",
        }
        await _heartbeat_is_next(client)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "room_create", "client_ts": 1767000000000, "display_name": "A", "preferred_lang": "en"},
        {"type": "room_join", "room_code": "482913", "display_name": None, "preferred_lang": "zh"},
        {"type": "room_leave", "room_code": "482913"},
        {
            "type": "room_raw_voice_preference",
            "room_code": "482913",
            "target_session_id": "s-1",
            "receive_raw_voice": False,
        },
        {"type": "webrtc_offer", "room_code": "482913", "to": "s-1", "sdp": {"type": "offer", "sdp": "v=0"}},
        {"type": "webrtc_ice", "room_code": "482913", "to": "s-1", "candidate": {"candidate": "a"}},
    ],
    ids=lambda f: f["type"],
)
async def test_room_messages_before_and_after_session_init(dragoman: StartDragoman, frame: dict[str, Any]) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.send(frame)
        assert await _error(client) == {
            "type": "error",
            "code": "INTERNAL_ERROR",
            "message": f"{FAILED}Session not initialized",
        }
        await client.init()
        await client.send(frame)  # now a room answer: the new room, or room_error (no such room here)
        if frame["type"] == "room_create":
            await client.expect("room_create_ack")
            await client.expect("room_members")
        else:
            wrong = "INTERNAL_ERROR" if frame["type"] == "room_raw_voice_preference" else "ROOM_NOT_FOUND"
            assert (await client.expect("room_error"))["code"] == wrong
        await _heartbeat_is_next(client)


async def test_undecodable_audio_chunk_payload_is_treated_as_empty(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        first, last = voiced_chunk(size=40), voiced_chunk(size=50)
        await client.chunk(first)
        await client.chunk("%%% not base64 %%%")
        await client.chunk("QUJ")  # bad padding
        await client.chunk("AAAé")  # non-ASCII (issue 9: this once got INTERNAL_ERROR)
        await client.chunk(last, is_final=True)
        job = await node.next_job()
        assert base64.b64decode(job["audio"]) == first + last  # the bad payloads added nothing
        assert not [f for f in client.received if f["type"] == "error"]
        await node.result(job)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["utterance_index"] == 0


async def test_undecodable_final_payload_still_cuts(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        audio = voiced_chunk(packets=26)
        await client.chunk(audio)
        await client.chunk("!!", is_final=True)
        job = await node.next_job()
        assert base64.b64decode(job["audio"]) == audio and job["is_manual_cut"] is True
        await client.expect_nothing(0.2, types={"error"})


@pytest.mark.parametrize(
    "audio",
    ["%%%not-base64%%%", "QUJ", "", "AAAé", "ＡＡＡＡ"],
    ids=["garbage", "bad-padding", "empty", "non-ascii", "wide"],
)
async def test_utterance_with_bad_audio_gets_audio_decode_failed(dragoman: StartDragoman, audio: str) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        await client.utterance(0, audio)
        assert await _error(client) == {
            "type": "error",
            "code": "INTERNAL_ERROR",
            "message": f"{FAILED}Audio decode failed",
        }
        await node.expect_nothing(0.2, types={"job_assign"})
        good = pcm16(200)
        await client.utterance(0, good)  # the failed message used no index
        job = await node.next_job()
        assert job["utterance_index"] == 0 and base64.b64decode(job["audio"]) == good
        await node.result(job)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["utterance_index"] == 0


async def test_reused_utterance_index_gets_invalid_message(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100))
        job = await node.next_job()
        await client.utterance(0, pcm16(120))
        error = await client.expect("error")
        assert error == {"type": "error", "code": "INVALID_MESSAGE", "message": "utterance_index 0 already used"}
        await node.expect_nothing(0.2, types={"job_assign"})  # no second job for the index (N5)
        await node.result(job)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["job_id"] == job["job_id"]
        await client.utterance(1, pcm16(100))
        assert (await node.next_job())["utterance_index"] == 1


async def test_one_socket_survives_every_kind_of_bad_frame(dragoman: StartDragoman) -> None:
    d = await dragoman(max_message_bytes=4096)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        sid = client.session_id
        bad: list[str | bytes] = [
            "{",
            "[]",
            "42",
            '{"type": "bogus"}',
            json.dumps({"type": "audio_chunk", "session_id": sid, "is_final": True}),
            json.dumps({"type": "audio_chunk", "session_id": sid, "seq": "x", "is_final": True}),
            '{"type": "client_heartbeat", "session_id": "s-NOPE0000", "timestamp": 1}',
            '{"type": "audio_chunk", "session_id": "s-NOPE0000", "seq": 1, "is_final": true}',
            '{"type": "room_join"}',
            json.dumps({"type": "x", "pad": "y" * 5000}),
        ]
        silent: list[str | bytes] = [
            b"\x00binary",
            '{"type": "job_assign", "job_id": "job-1"}',
            '{"type": "session_init_ack", "session_id": "s-1"}',
        ]
        index = 0
        for raw in bad:
            await client.send_raw(raw)
            assert (await _error(client))["code"] in {"INVALID_MESSAGE", "INVALID_SESSION", "INTERNAL_ERROR"}
            await _heartbeat_is_next(client)
        for raw in silent:
            await client.send_raw(raw)
            await _heartbeat_is_next(client)
        await _round_trip(client, node, index)


# ---------------------------------------------------------------------------------------------------------
# /ws/node: nothing is ever sent back, and the node keeps working


def _node_garbage(node_id: str) -> list[str | bytes]:
    return [
        "{",
        "[1, 2, 3]",
        "null",
        '{"type": "no_such_type"}',
        '{"type": "node_register", "platform": "linux"}',  # missing keys
        json.dumps({"type": "node_heartbeat", "node_id": node_id, "timestamp": "now"}),
        json.dumps({"type": "job_assign", "job_id": "job-1", "attempt_id": 1}),  # wrong direction
        json.dumps({"type": "session_init", "client_version": "v", "platform": "web"}),
        json.dumps({"type": "client_heartbeat", "session_id": "s-1", "timestamp": 1}),
        json.dumps({"type": "node_error", "node_id": node_id, "code": "X", "message": "m"}),
        b"\x00\x01binary",
        json.dumps({"type": "node_heartbeat", "node_id": node_id, "pad": "z" * 9000}),  # too large
        json.dumps(
            {
                "type": "job_result",
                "job_id": "job-00000000-0000-4000-8000-000000000000",
                "attempt_id": 1,
                "node_id": node_id,
                "session_id": "s-1",
                "utterance_index": 0,
                "success": True,
                "text_asr": "x",
                "trace_id": "t",
            }
        ),
        json.dumps(
            {
                "type": "asr_partial",
                "job_id": "job-unknown",
                "node_id": node_id,
                "session_id": "s-NOPE0000",
                "utterance_index": 0,
                "text": "x",
                "is_final": False,
                "trace_id": "t",
            }
        ),
    ]


async def test_node_garbage_gets_no_reply_and_the_node_still_gets_jobs(dragoman: StartDragoman) -> None:
    d = await dragoman(max_message_bytes=8192)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        for raw in _node_garbage("node-NOTYET00"):  # before registering
            await node.send_raw(raw)
        await node.send({**node.heartbeat_frame(), "node_id": "node-NOTYET00"})  # a heartbeat before registering
        await node.register()
        assert node.received == [node.ack]  # the ack is the first and only frame so far
        await node.heartbeat()
        for raw in _node_garbage(str(node.node_id)):  # after registering
            await node.send_raw(raw)
        await node.expect_nothing(0.3)
        await _round_trip(client, node, 0)
        await client.utterance(1, pcm16(100))  # under 8192 bytes once in base64
        job = await node.next_job()
        assert job["utterance_index"] == 1


async def test_oversized_node_frame_is_ignored_counting_utf8_bytes(dragoman: StartDragoman) -> None:
    d = await dragoman(max_message_bytes=4096)
    async with LinguaNode(d.node_url) as node:
        frame = {**node.register_frame(), "pad": "节" * 1500}  # 1 500 characters, over 4 500 bytes
        assert 4096 < len(json.dumps(frame, ensure_ascii=False).encode()) < 8192
        await node.send(frame)
        await node.send({**node.register_frame(), "pad": "x" * 4096})
        await node.expect_nothing(0.3)  # neither was taken as a registration
        await node.register()
        assert node.received == [node.ack]


async def test_heartbeat_before_registering_does_not_make_a_node_eligible(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=400)
    async with (
        LinguaNode(d.node_url, node_id="node-EARLY000") as node,
        LinguaWebClient(d.session_url) as client,
    ):
        await client.init(two_way=False)
        await node.heartbeat()  # never registered on this socket
        await client.utterance(0, pcm16(200))
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "error" and outcome["code"] == "INTERNAL_ERROR"  # no node (§11.4)
        await node.expect_nothing(0.1)
        await node.register()
        await node.heartbeat()
        await client.utterance(1, pcm16(200))
        job = await node.next_job()
        assert job["utterance_index"] == 1


async def test_heartbeat_naming_another_node_is_ignored(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=400)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        own = await node.register()
        # B16: attributed to the socket's node, or ignored; never makes this socket's node eligible.
        await node.heartbeat(node_id="node-SOMEONE0")
        await client.utterance(0, pcm16(200))
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "error"
        await node.expect_nothing(0.1)
        await node.heartbeat(node_id=own)
        await client.utterance(1, pcm16(200))
        job = await node.next_job()
        assert job["utterance_index"] == 1


async def test_job_results_from_the_wrong_node_or_for_unknown_jobs_are_dropped(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with (
        LinguaNode(d.node_url) as holder,
        LinguaNode(d.node_url) as other,
        LinguaWebClient(d.session_url) as client,
    ):
        await client.init(two_way=False)
        await _ready(holder)
        audio = voiced_chunk(packets=26)
        await client.chunk(audio)
        await client.chunk(b"", is_final=True)
        job = await holder.next_job()
        await _ready(other)

        other.node_id, own = holder.node_id, other.node_id
        await other.result(job, text_asr="FORGED name")  # names the holder from another socket
        other.node_id = own
        await other.result(job, text_asr="FORGED other")  # a node that holds no attempt of the job
        await holder.result({**job, "attempt_id": 2}, text_asr="FORGED attempt")  # an attempt never sent
        await holder.result({**job, "job_id": "job-00000000-0000-4000-8000-000000000001"}, text_asr="FORGED id")
        await client.expect_nothing(0.4, types=OUTCOMES)
        await holder.expect_nothing(0.05)
        await other.expect_nothing(0.05)

        await holder.result(job, text_asr="real")
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["text_asr"] == "real"
        assert outcome["job_id"] == job["job_id"]

        await holder.close()  # the other node still gets jobs
        await client.utterance(1, pcm16(200))
        job2 = await other.next_job()
        assert job2["utterance_index"] == 1
        await other.result(job2, text_asr="from other")
        [outcome2] = await client.outcomes(1)
        assert outcome2["text_asr"] == "from other"


# ---------------------------------------------------------------------------------------------------------
# HTTP job API


def _job(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "src_lang": "zh",
        "tgt_lang": "en",
        "audio": base64.b64encode(pcm16(100)).decode(),
        "audio_format": "pcm16",
        "sample_rate": 16000,
    }
    body.update(fields)
    return body


def _problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("message"), str) and body["message"]
    if field is not None:
        assert body.get("field") == field, body
    return body


async def test_http_post_invalid_json_is_400(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        for content in (b"{not json", b"", b'{"src_lang": "zh",'):
            resp = await http.post("/api/v1/jobs", content=content, headers={"content-type": "application/json"})
            assert _problem(resp, 400)["error"] == "invalid_json"
        resp = await http.post("/api/v1/jobs", json=_job())  # the API still works
        assert resp.status_code == 202 and resp.json()["job_id"].startswith("job-")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(_job(sample_rate="16000"), "sample_rate", id="sample_rate-string"),
        pytest.param(_job(src_lang=5), "src_lang", id="src_lang-int"),
        pytest.param(_job(audio=None), "audio", id="audio-null"),
        pytest.param(
            _job(pipeline={"use_asr": "yes", "use_nmt": True, "use_tts": True}), "pipeline.use_asr", id="nested"
        ),
        pytest.param(_job(audio="%%%"), "audio", id="bad-base64"),
        pytest.param(_job(audio="QUJ"), "audio", id="bad-padding"),
        pytest.param(_job(audio="AAAé"), "audio", id="non-ascii-base64"),
        pytest.param(_job(sample_rate=-16000), "sample_rate", id="negative-rate"),
        pytest.param(_job(sample_rate=2**32), "sample_rate", id="rate-beyond-u32"),
        pytest.param(_job(audio=""), "audio", id="empty-audio"),
        pytest.param(_job(audio_format="wav"), "audio_format", id="unknown-format"),
        pytest.param(_job(audio_format="OPUS"), "audio_format", id="wrongly-cased-format"),
        pytest.param(_job(sample_rate=0), "sample_rate", id="zero-rate"),
        pytest.param([_job()], None, id="array"),
    ],
)
async def test_http_post_invalid_request_is_422(dragoman: StartDragoman, body: Any, field: str | None) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        resp = await http.post("/api/v1/jobs", json=body)
        assert _problem(resp, 422, field)["error"] == "invalid_request"


async def test_http_post_missing_field_is_422_naming_it(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        fields: dict[str, Any] = {}
        for missing in ("src_lang", "tgt_lang", "audio"):
            body = _job()
            del body[missing]
            fields[missing] = _problem(await http.post("/api/v1/jobs", json=body), 422).get("field")
        assert fields == {"src_lang": "src_lang", "tgt_lang": "tgt_lang", "audio": "audio"}
        nested = _job(pipeline={"use_asr": True, "use_tts": True})
        assert _problem(await http.post("/api/v1/jobs", json=nested), 422)["field"] == "pipeline.use_nmt"


async def test_http_post_too_long_idempotency_key_is_400(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        resp = await http.post("/api/v1/jobs", json=_job(), headers={"Idempotency-Key": "k" * 256})
        _problem(resp, 400, "Idempotency-Key")
        resp = await http.post("/api/v1/jobs", json=_job(), headers={"Idempotency-Key": "k" * 255})
        assert resp.status_code == 202


async def test_http_get_unknown_job_is_404_json(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        resp = await http.get("/api/v1/jobs/job-00000000-0000-4000-8000-000000000000")
        assert _problem(resp, 404)["error"] == "not_found"
        resp = await http.get("/api/v1/jobs/job-00000000-0000-4000-8000-000000000000", params={"wait": "2"})
        _problem(resp, 404)  # at once, not after the wait


@pytest.mark.parametrize("wait", ["abc", "", "1s", "0x10", "nan", "inf", "-inf"])
async def test_http_get_with_bad_wait_is_422(dragoman: StartDragoman, wait: str) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=2) as http:  # a NaN wait once held the request
        created = await http.post("/api/v1/jobs", json=_job())
        job_id = created.json()["job_id"]
        resp = await http.get(f"/api/v1/jobs/{job_id}", params={"wait": wait})
        _problem(resp, 422, "wait")
        resp = await http.get(f"/api/v1/jobs/{job_id}")
        assert resp.status_code == 200 and resp.json()["job_id"] == job_id


async def _pending_job(http: httpx.AsyncClient) -> str:
    created = await http.post("/api/v1/jobs", json=_job())  # no node: it stays pending
    assert created.status_code == 202
    job_id: str = created.json()["job_id"]
    return job_id


@pytest.mark.parametrize("wait", ["-5", "0", "0.05"])
async def test_http_get_with_short_wait_answers_promptly(dragoman: StartDragoman, wait: str) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=2) as http:
        job_id = await _pending_job(http)
        resp = await http.get(f"/api/v1/jobs/{job_id}", params={"wait": wait})
        assert resp.status_code == 200 and resp.json()["status"] == "pending"


# ---------------------------------------------------------------------------------------------------------
# Input that once broke an instance (issue 9, items 7-11)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]


async def _close_of(peer: LinguaNode) -> tuple[int, str]:
    """Read until the server closes the socket; its close code and reason."""
    assert peer.ws is not None
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(10):
            await asyncio.wait_for(peer.ws.recv(), 5)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


@pytest.mark.parametrize(
    "node_id",
    ["node 1", "node\t1", "node-1\n", "x" * 129, "nöde", "a/b"],
    ids=["space", "tab", "newline", "long", "non-ascii", "slash"],
)
async def test_invalid_node_id_is_refused_with_a_close_that_says_why(
    dragoman: StartDragoman, node_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, node_id=node_id) as bad:
        await bad.send(bad.register_frame())
        code, reason = await _close_of(bad)  # no ack: node sockets get no error frames (§2.3)
    assert code == 1008 and reason.startswith("invalid node_id: ") and "128" in reason
    [refusal] = [r.getMessage() for r in caplog.records if "node_register refused" in r.getMessage()]
    assert repr(node_id[:200]) in refusal and len(refusal) < 400
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)  # other nodes are not affected
        await client.init(two_way=False)
        await _round_trip(client, node, 0)


async def test_frames_after_a_refused_registration_count_for_nothing(
    dragoman: StartDragoman, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dragoman")
    d = await dragoman()
    async with LinguaNode(d.node_url, node_id="node-A") as first:
        await _ready(first)
        await first.send({**first.register_frame(), "node_id": "node A"})  # refused: the socket closes
        for _ in range(5):  # already on their way: they must not register node-A again
            await first.send(first.register_frame())
            await first.heartbeat()
        code, _ = await _close_of(first)
        assert code == 1008
    registered = [r.getMessage() for r in caplog.records if r.getMessage().startswith("node node-A registered")]
    assert registered == ["node node-A registered (capacity 4)"], registered
    async with LinguaNode(d.node_url, node_id="node-A") as second, LinguaWebClient(d.session_url) as client:
        await _ready(second)
        await client.init(two_way=False)
        await _round_trip(client, second, 0)


async def test_node_id_with_every_allowed_character_gets_its_results_accepted(dragoman: StartDragoman) -> None:
    d = await dragoman()
    node_id = "Az09._:-" + "n" * 120  # 128 characters
    async with LinguaNode(d.node_url, node_id=node_id) as node, LinguaWebClient(d.session_url) as client:
        assert await _ready(node) == node_id
        await client.init(two_way=False)
        await _round_trip(client, node, 0)  # the result is not dropped as stale


@pytest.mark.parametrize("depth", [1_000, 50_000])
async def test_deeply_nested_client_frames_get_invalid_message(dragoman: StartDragoman, depth: int) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        sid = client.session_id
        frames = [
            f'{{"type":"client_heartbeat","session_id":"{sid}","timestamp":1,"x":{_nested(depth)}}}',  # skipped key
            f'{{"type":"audio_chunk","session_id":"{sid}","seq":0,"is_final":false,"payload":{_nested(depth)}}}',
            f'{{"type":"session_init","client_version":"v","platform":"p","src_lang":"zh","tgt_lang":"en",'
            f'"features":{_nested(depth)}}}',
        ]
        for raw in frames:
            await client.send_raw(raw)
            error = await _error(client)  # the socket is not closed (§2.3)
            assert error["code"] == "INVALID_MESSAGE" and error["message"].startswith(INVALID)
            await _heartbeat_is_next(client)
        await _round_trip(client, node, 0)


async def test_deeply_nested_node_frames_are_logged_once_without_a_traceback(
    dragoman: StartDragoman, caplog: pytest.LogCaptureFixture
) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        node_id = await _ready(node)
        await client.init(two_way=False)
        deep = _nested(1_000)
        frames = [
            f'{{"type":"node_error","node_id":"{node_id}","code":"X","message":"m","details":{deep}}}',
            json.dumps(node.register_frame())[:-1] + f',"hardware":{deep}}}',
            json.dumps(node.heartbeat_frame())[:-1] + f',"resource_usage":{deep}}}',
            f'{{"type":"job_ack","x":{deep}}}',
        ]
        caplog.clear()
        for raw in frames:
            await node.send_raw(raw)
        await node.expect_nothing(0.3)
        assert not _tracebacks(caplog)
        ignored = [r.getMessage() for r in caplog.records if "invalid message ignored" in r.getMessage()]
        assert len(ignored) == len(frames)
        await _round_trip(client, node, 0)


@pytest.mark.parametrize(
    "body",
    [
        '{"src_lang":"zh","tgt_lang":"en","audio":"AAAA","x":$}',
        '{"src_lang":"zh","tgt_lang":"en","audio":"AAAA","pipeline":$}',
        "$",
    ],
    ids=["unknown-key", "struct-field", "top-level"],
)
async def test_deeply_nested_http_body_is_a_client_error(dragoman: StartDragoman, body: str) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http, timeout=5) as http:
        content = body.replace("$", _nested(1_000)).encode()
        resp = await http.post("/api/v1/jobs", content=content, headers={"content-type": "application/json"})
        assert resp.status_code in (400, 422), resp.text
        _problem(resp, resp.status_code)
        assert (await http.post("/api/v1/jobs", json=_job())).status_code == 202


@pytest.mark.parametrize(
    ("fields", "detail_has"),
    [
        pytest.param({"utterance_index": -1}, "utterance_index", id="negative-index"),
        pytest.param({"utterance_index": 2**64}, "utterance_index", id="index-beyond-u64"),
        pytest.param({"utterance_index": 10**30}, "utterance_index", id="huge-index"),
        pytest.param({"sample_rate": -1}, "sample_rate", id="negative-rate"),
        pytest.param({"sample_rate": 2**32}, "sample_rate", id="rate-beyond-u32"),
    ],
)
async def test_out_of_range_utterance_ints_get_invalid_message(
    dragoman: StartDragoman, fields: dict[str, Any], detail_has: str
) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        await client.utterance(0, pcm16(100), **fields)
        error = await _error(client)
        assert error["code"] == "INVALID_MESSAGE" and detail_has in error["message"]
        await node.expect_nothing(0.2, types={"job_assign"})
        await client.utterance(0, pcm16(100))  # the index was not used
        job = await node.next_job()
        assert job["utterance_index"] == 0


async def test_out_of_range_ints_on_both_sockets_are_refused(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await _ready(node)
        await client.init(two_way=False)
        for bad in ({"seq": -1}, {"seq": 2**64}, {"client_timestamp_ms": 2**63}):
            await client.chunk(voiced_chunk(), **bad)
            assert (await _error(client))["code"] == "INVALID_MESSAGE"
        beat = {"type": "client_heartbeat", "session_id": client.session_id, "timestamp": -(2**63) - 1}
        await client.send(beat)
        assert (await _error(client))["code"] == "INVALID_MESSAGE"
        await client.utterance(0, pcm16(100))
        job = await node.next_job()
        for bad in ({"attempt_id": 2**32 + job["attempt_id"]}, {"attempt_id": -1}, {"utterance_index": -1}):
            await node.result({**job, **bad}, text_asr="FORGED")  # dropped at decoding: no outcome
        await client.expect_nothing(0.3, types=OUTCOMES)
        await node.result(job, text_asr="real")
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["text_asr"] == "real"


async def test_huge_input_is_logged_and_answered_as_an_excerpt(
    dragoman: StartDragoman, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dragoman")
    d = await dragoman()
    huge = "H" * 2_000_000
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        node_id = await _ready(node)
        await client.init(two_way=False)
        await client.send({"type": huge, "session_id": client.session_id})  # unknown type: quoted in the reply
        error = await _error(client)
        assert error["code"] == "INVALID_MESSAGE" and "HHHH" in error["message"] and len(error["message"]) < 500
        await client.send({"type": "ui_event", "pad": huge})  # wrong direction: logged
        await _heartbeat_is_next(client)
        caplog.clear()
        await node.send({"type": huge})
        await node.send({"type": "node_error", "node_id": node_id, "code": huge, "message": huge, "details": [huge]})
        await node.heartbeat(node_id=huge)
        await node.send({**node.heartbeat_frame(), "timestamp": huge})
        await client.utterance(0, pcm16(100))
        job = await node.next_job()
        await node.result({**job, "job_id": huge})  # an unknown job: "dropped" is logged
        await node.result(job)
        await client.outcomes(1)
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("dragoman")]
        assert len(lines) >= 5, lines
        assert max(len(line) for line in lines) < 1_000, [line[:300] for line in lines]


@pytest.mark.parametrize("tts_audio", ["AAAé", "ＡＡＡＡ", "QUJ", "%%%%"])
def test_tools_take_non_ascii_base64_from_the_wire_as_invalid(tmp_path: Path, tts_audio: str) -> None:
    """The client saves a result's undecodable ``tts_audio`` as sent, its JSON output counts 0 bytes, and the HTTP
    client's result has no audio; the node agent fails the job with PROCESSING_ERROR (non-ASCII once raised)."""
    result = p.TranslationResult(
        session_id="s-1",
        utterance_index=0,
        job_id="job-1",
        text_asr="a",
        text_translated="b",
        tts_audio=tts_audio,
        tts_format="opus",
        trace_id="t",
        scheduler_sent_at_ms=1,
    )
    saved = TtsWriter(tmp_path).save(0, result)
    assert saved is not None and saved.note and saved.path.read_bytes() == tts_audio.encode()
    tracked = TrackedOutcome(index=0, message=result)
    assert outcome_json(tracked, None)["tts_bytes"] == 0
    assert JobOutput(text_asr="a", text_translated="b", tts_audio=tts_audio).tts_bytes() == b""
    job = p.JobAssign(
        attempt_id=1,
        job_id="job-1",
        session_id="s-1",
        utterance_index=0,
        src_lang="zh",
        tgt_lang="en",
        pipeline=p.DEFAULT_PIPELINE,
        audio=tts_audio,
        audio_format="pcm16",
        sample_rate=16000,
        trace_id="t",
    )
    with pytest.raises(EngineError) as info:
        decode_audio(job)
    assert info.value.code == "PROCESSING_ERROR"
