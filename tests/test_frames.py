"""The outcome frames a session sends, rendered without a server (dragoman.scheduler.frames)."""

from __future__ import annotations

import json
from typing import Literal

from dragoman.scheduler import frames
from dragoman.scheduler.store import Outcome


def outcome(
    state: Literal["completed", "empty", "failed", "timed_out"] = "completed",
    detail: str | None = None,
    dispatched_ms: int | None = 1_000,
) -> Outcome:
    return Outcome(
        job_id="job-1",
        session="s-1",
        index=3,
        owner="inst",
        state=state,
        detail=detail,
        trace="t-1",
        created_ms=900,
        dispatched_ms=dispatched_ms,
    )


def job_result(**fields: object) -> str:
    """A node's job_result for the job above, with ``fields``."""
    base = {"type": "job_result", "job_id": "job-1", "attempt_id": 1, "node_id": "n-1", "session_id": "s-1"}
    return json.dumps({**base, "utterance_index": 3, "success": True, "trace_id": "t-1", **fields})


def test_a_node_error_is_passed_on_verbatim_and_dragomans_codes_get_their_text() -> None:
    node_error = job_result(success=False, error={"code": "MODEL_LOAD_FAILED", "message": "no gpu"})
    assert frames.failure(outcome("failed", node_error))[:2] == ("MODEL_LOAD_FAILED", "no gpu")
    assert frames.failure(outcome("failed", job_result(success=False)))[0] == "PROCESSING_ERROR"
    assert frames.failure(outcome("failed", "NO_AVAILABLE_NODE"))[1] == frames.NO_NODE_MESSAGE
    assert frames.failure(outcome("failed", "JOB_TIMEOUT")) == ("JOB_TIMEOUT", "JOB_TIMEOUT", None)


def test_no_node_on_the_utterance_path_is_lingua_s_internal_error_naming_the_pair() -> None:
    streamed = json.loads(frames.failure_error(outcome("failed", "NO_AVAILABLE_NODE"), "ja:de", streaming=True))
    assert (streamed["code"], streamed["message"]) == ("NO_AVAILABLE_NODE", frames.NO_NODE_MESSAGE)
    one_shot = json.loads(frames.failure_error(outcome("failed", "NO_AVAILABLE_NODE"), "ja:de", streaming=False))
    assert one_shot["code"] == "INTERNAL_ERROR"
    assert one_shot["message"] == "Failed to process message: no node available for pair ja:de"


def test_a_translation_result_carries_the_legs_both_ends_stamped() -> None:
    result = frames.decode_result(
        job_result(text_asr="你好", text_translated="hello", node_completed_at_ms=1_200, tts_audio="AA")
    )
    frame = json.loads(frames.translation_result("s-1", 3, outcome(), result, 850, ("group_s-1_1", 2), now=1_250))
    assert (frame["utterance_index"], frame["job_id"], frame["trace_id"]) == (3, "job-1", "t-1")
    assert (frame["text_asr"], frame["text_translated"], frame["tts_format"]) == ("你好", "hello", "pcm16")
    assert (frame["group_id"], frame["part_index"], frame["scheduler_sent_at_ms"]) == ("group_s-1_1", 2, 1_250)
    assert frame["network_timings"] == {
        "web_to_scheduler_ms": 50,
        "scheduler_to_node_ms": 100,
        "node_to_scheduler_ms": 50,
    }
    # A node clock ahead of the scheduler's gives no leg rather than a negative one; no dispatch, no timings.
    ahead = frames.decode_result(job_result(node_completed_at_ms=9_999))
    assert frames.network_timings(outcome(), ahead, None, 1_250).node_to_scheduler_ms is None
    assert frames.network_timings(outcome(dispatched_ms=None), result, None, 1_250) is None


def test_events_and_missing_results_name_their_slot() -> None:
    event = json.loads(frames.ui_event("s-1", 3, "job-1", "t-1", "ERROR", error_code="JOB_TIMEOUT"))
    assert (event["event"], event["status"], event["error_code"], event["utterance_index"]) == (
        "ERROR",
        "error",
        "JOB_TIMEOUT",
        3,
    )
    assert json.loads(frames.ui_event("s-1", 3, "job-1", "t-1", "DISPATCHED"))["status"] == "ok"
    missing = json.loads(frames.missing_result("s-1", 3, "t-1", "gap_timeout", now=7))
    assert (missing["reason"], missing["created_at_ms"], missing["trace_id"]) == ("gap_timeout", 7, "t-1")
