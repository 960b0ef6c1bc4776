"""The streaming path end to end: lingua's web client and Electron node, scripted, through a real instance."""

from __future__ import annotations

import asyncio
import base64

from conftest import StartDragoman
from peers import LinguaNode, LinguaWebClient, plan_a, silence_chunk, voiced_chunk


async def test_web_client_utterance_reaches_node_and_result_comes_back(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        ack = await client.init()
        assert ack["use_binary_frame"] is False
        assert ack["session_id"].startswith("s-") and len(ack["session_id"]) == 10
        audio = [voiced_chunk(), voiced_chunk(), voiced_chunk()]
        for chunk in audio:
            await client.chunk(chunk)
        await client.chunk(b"", is_final=True)

        job = await node.next_job()
        assert job["session_id"] == client.session_id
        assert job["utterance_index"] == 0
        assert job["attempt_id"] == 1
        assert job["job_id"].startswith("job-")
        assert base64.b64decode(job["audio"]) == b"".join(audio)  # passed through byte for byte
        assert job["audio_format"] == "opus" and job["sample_rate"] == 16000
        assert job["src_lang"] == "auto" and job["tgt_lang"] == "en"
        assert (job["mode"], job["lang_a"], job["lang_b"]) == ("two_way_auto", "zh", "en")
        assert job["auto_langs"] == ["zh", "en"]
        assert job["pipeline"] == {
            "use_asr": True,
            "use_nmt": True,
            "use_tts": True,
            "use_semantic": False,
            "use_tone": False,
        }
        assert job["is_manual_cut"] is True and job["padding_ms"] == 280
        assert "is_timeout_triggered" not in job and "is_max_duration_triggered" not in job
        assert job["enable_streaming_asr"] is True and job["partial_update_interval_ms"] == 1000
        assert job["trace_id"] == ack["trace_id"]
        assert job["features"] == {}
        assert job["turn_id"]

        await node.result(job, text_asr="你好", text_translated="hello", tts_audio="AAAA")
        [result] = await client.outcomes(1)
        assert result["type"] == "translation_result"
        assert result["utterance_index"] == 0 and result["job_id"] == job["job_id"]
        assert (result["text_asr"], result["text_translated"], result["tts_audio"]) == ("你好", "hello", "AAAA")
        assert result["tts_format"] == "opus"
        assert result["group_id"].startswith(f"group_{client.session_id}_") and result["part_index"] == 0
        assert result["service_timings"] == {"total_ms": 120}
        events = [f["event"] for f in client.skipped_of("ui_event")]
        assert events == ["DISPATCHED", "ASR_FINAL", "NMT_DONE"]


async def test_pause_cuts_with_timeout_flag_and_next_chunk_starts_new_utterance(dragoman: StartDragoman) -> None:
    d = await dragoman(pause_ms=300)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        first = voiced_chunk(size=40)
        await client.chunk(first)
        await client.chunk(first)
        job = await node.next_job(timeout=3)  # the pause timer cut it: no is_final was sent
        assert job["is_timeout_triggered"] is True and job["padding_ms"] == 220
        assert "is_manual_cut" not in job
        assert base64.b64decode(job["audio"]) == first + first

        # Gap on arrival: the late chunk starts the next utterance instead of joining the closed one.
        second = voiced_chunk(size=50)
        await client.chunk(second)
        await client.chunk(second, is_final=True)
        job2 = await node.next_job()
        assert job2["utterance_index"] == 1
        assert base64.b64decode(job2["audio"]) == second + second
        assert job2["turn_id"] != job["turn_id"]


async def test_max_duration_cut_continues_the_turn(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(39):  # 39 x 13 packets x 20 ms = 10.14 s >= max_duration_ms
            await client.chunk(voiced_chunk())
        job = await node.next_job()
        assert job["is_max_duration_triggered"] is True and "is_manual_cut" not in job
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk())
        await client.chunk(b"", is_final=True)
        job2 = await node.next_job()
        assert job2["utterance_index"] == 1 and job2["is_manual_cut"] is True
        assert job2["turn_id"] == job["turn_id"]  # one long stretch of speech is one turn (§10.4)


async def test_silence_only_cuts_make_no_job_and_take_no_index(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(3):  # the web client's pause pattern: near-silence chunk, is_final, repeat
            await client.chunk(silence_chunk())
            await client.chunk(b"", is_final=True)
        await node.expect_nothing(0.3, types={"job_assign"})
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        assert job["utterance_index"] == 0


async def test_short_onset_is_merged_into_following_speech(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        onset = voiced_chunk()  # 260 ms of voice < min_utterance_ms (500)
        await client.chunk(onset, is_final=True)
        await node.expect_nothing(0.3, types={"job_assign"})
        rest = voiced_chunk(size=60)
        await client.chunk(rest)
        await client.chunk(rest, is_final=True)
        job = await node.next_job()
        assert job["utterance_index"] == 0
        assert base64.b64decode(job["audio"]) == onset + rest + rest


async def test_held_short_utterance_is_cut_after_the_pause(dragoman: StartDragoman) -> None:
    d = await dragoman(pause_ms=300)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        word = voiced_chunk()
        await client.chunk(word, is_final=True)
        # Near-silence keeps arriving; the held word is still cut pause_ms after its last voiced chunk.
        for _ in range(4):
            await asyncio.sleep(0.1)
            await client.chunk(silence_chunk())
        job = await node.next_job(timeout=3)
        assert job["is_timeout_triggered"] is True
        assert base64.b64decode(job["audio"]).startswith(word)


async def test_results_returned_out_of_order_are_delivered_in_order(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url, max_concurrent_jobs=8) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(4):
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
        jobs = [await node.next_job() for _ in range(4)]
        assert [j["utterance_index"] for j in jobs] == [0, 1, 2, 3]
        for job in reversed(jobs):
            await node.result(job)
        outcomes = await client.outcomes(4)
        assert [o["utterance_index"] for o in outcomes] == [0, 1, 2, 3]
        assert [o["part_index"] for o in outcomes] == [0, 1, 2, 3]


async def test_empty_and_failed_results_fill_their_slots(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(3):
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
        jobs = [await node.next_job() for _ in range(3)]
        await node.fail(jobs[2], code="PROCESSING_ERROR", message="asr failed", details={"stage": "asr"})
        await node.empty_result(jobs[1], reason="NO_TEXT_ASSIGNED")
        await node.empty_result(jobs[0])
        outcomes = await client.outcomes(3)
        assert [o["type"] for o in outcomes] == ["missing_result", "missing_result", "error"]
        assert outcomes[0]["reason"] == outcomes[1]["reason"] == "silence_detected"
        assert outcomes[2] == {
            "type": "error",
            "code": "PROCESSING_ERROR",
            "message": "asr failed",
            "details": {"stage": "asr"},
        }
        errors = [f for f in client.skipped_of("ui_event") if f["event"] == "ERROR"]
        assert len(errors) == 1 and "error_code" not in errors[0]  # PROCESSING_ERROR is not an ErrorCode


async def test_result_without_anything_counts_as_empty(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        # The Electron node's "filtered" result: no text, no audio, a free-text reason.
        await node.result(job, text_asr="", text_translated="", extra={"filtered": True, "reason": "low energy"})
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "missing_result" and outcome["reason"] == "silence_detected"


async def test_gap_timeout_releases_later_results(dragoman: StartDragoman) -> None:
    d = await dragoman(gap_timeout_ms=400)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        for _ in range(2):
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
        first, second = await node.next_job(), await node.next_job()
        await node.result(second)  # the node silently skips the first one (N8)
        outcomes = await client.outcomes(2, timeout=5)
        assert outcomes[0]["type"] == "missing_result" and outcomes[0]["reason"] == "gap_timeout"
        assert outcomes[0]["utterance_index"] == 0
        assert outcomes[1]["type"] == "translation_result" and outcomes[1]["utterance_index"] == 1
        cancel = await node.expect("job_cancel")
        assert cancel["job_id"] == first["job_id"]
        await node.result(first)  # too late: dropped, never delivered
        await client.expect_nothing(0.3, types={"translation_result", "missing_result", "error"})


async def test_no_node_resolves_with_no_available_node_and_session_goes_on(dragoman: StartDragoman) -> None:
    d = await dragoman(pending_timeout_ms=300)
    async with LinguaWebClient(d.session_url) as client:
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        [outcome] = await client.outcomes(1, timeout=5)
        assert outcome["type"] == "error" and outcome["code"] == "NO_AVAILABLE_NODE"
        ui = [f for f in client.skipped_of("ui_event") if f["event"] == "ERROR"]
        assert ui and ui[0]["error_code"] == "NO_AVAILABLE_NODE"
        # B1: the session is not wedged; a node that appears now serves the next utterance.
        async with LinguaNode(d.node_url) as node:
            await node.start()
            await client.chunk(voiced_chunk())
            await client.chunk(voiced_chunk(), is_final=True)
            job = await node.next_job()
            assert job["utterance_index"] == 1


async def test_pending_job_is_dispatched_when_a_node_arrives(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaWebClient(d.session_url) as client:
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        await asyncio.sleep(0.2)
        async with LinguaNode(d.node_url) as node:
            await node.start()
            job = await node.next_job()
            await node.result(job)
            [outcome] = await client.outcomes(1)
            assert outcome["type"] == "translation_result"


async def test_session_close_cuts_buffer_and_delivers_before_ack(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk())
        await client.close_session("done")
        job = await node.next_job()
        assert job["is_manual_cut"] is True  # SessionClose closes its turn (§11.2)
        await node.result(job)
        [outcome] = await client.outcomes(1)
        assert outcome["type"] == "translation_result"
        ack = await client.expect("session_close_ack")
        assert ack["session_id"] == client.session_id
        await client.chunk(voiced_chunk())
        error = await client.expect("error")
        assert error["code"] == "INTERNAL_ERROR" and "Session does not exist" in error["message"]


async def test_session_close_gives_up_after_close_grace(dragoman: StartDragoman) -> None:
    d = await dragoman(close_grace_ms=300)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        await client.close_session("bye")
        [outcome] = await client.outcomes(1, timeout=3)
        assert outcome["type"] == "missing_result" and outcome["reason"] == "gap_timeout"
        await client.expect("session_close_ack")
        cancel = await node.expect("job_cancel")
        assert cancel["job_id"] == job["job_id"]


async def test_heartbeat_and_partials(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        beat = await client.heartbeat()
        assert beat["session_id"] == client.session_id and isinstance(beat["timestamp"], int)
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        await node.partial(job, "你")
        partial = await client.expect("asr_partial")
        assert partial == {
            "type": "asr_partial",
            "session_id": client.session_id,
            "utterance_index": 0,
            "job_id": job["job_id"],  # B9: the real job id
            "text": "你",
            "is_final": False,
            "trace_id": job["trace_id"],
        }


async def test_chunks_are_passed_through_verbatim_including_odd_records(dragoman: StartDragoman) -> None:
    d = await dragoman(endpointing="lingua")  # "voice" sends whole records with audio only (test_endpointing.py)
    async with LinguaNode(d.node_url) as node, LinguaWebClient(d.session_url) as client:
        await node.start()
        await client.init()
        odd = plan_a([b"\x48" + b"v" * 40] * 30 + [b""])  # a zero-length record too
        await client.chunk(odd, is_final=True)
        job = await node.next_job()
        assert base64.b64decode(job["audio"]) == odd
