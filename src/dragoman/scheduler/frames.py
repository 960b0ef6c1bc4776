"""The frames a session sends for its utterances' outcomes and events (PROTOCOL.md §6), rendered from what the
store says of a job: pure functions of their arguments (the time included), no state, no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from dragoman import protocol as p
from dragoman.scheduler.store import Outcome

decode_result = msgspec.json.Decoder(p.JobResult).decode

NO_NODE_MESSAGE = "No available node for this language pair, please retry later"


def failure(outcome: Outcome) -> tuple[str, str, Any]:
    """(code, message, details) of a failed outcome: the node's error verbatim, or Dragoman's code."""
    detail = outcome.detail or ""
    if detail.startswith("{"):
        error = decode_result(detail).error
        if error is not None:
            return error.code, error.message, error.details
        return "PROCESSING_ERROR", "the node reported a failure without an error", None
    if detail == "NO_AVAILABLE_NODE":
        return detail, NO_NODE_MESSAGE, None
    return detail, detail, None


def failure_error(outcome: Outcome, pair: str, streaming: bool) -> bytes:
    """The ``error`` of a failed outcome. On the utterance path lingua reported no node as an INTERNAL_ERROR
    naming the pair (§11.4), and its clients expect that text."""
    code, message, details = failure(outcome)
    if code == "NO_AVAILABLE_NODE" and not streaming:
        code = "INTERNAL_ERROR"
        message = f"Failed to process message: no node available for pair {p.excerpt(pair)}"
    return p.encode(p.Error(code=code, message=message, details=details))


def network_timings(outcome: Outcome, result: p.JobResult, client_ts: int | None, now: int) -> p.NetworkTimings | None:
    """The legs of the job's trip that both ends of each leg stamped (none where a stamp is missing or out of
    order); None for a job that was never dispatched."""
    if outcome.dispatched_ms is None:
        return None

    def diff(later: int | None, earlier: int | None) -> int | None:
        return later - earlier if later is not None and earlier is not None and later >= earlier else None

    return p.NetworkTimings(
        web_to_scheduler_ms=diff(outcome.created_ms, client_ts),
        scheduler_to_node_ms=diff(outcome.dispatched_ms, outcome.created_ms),
        node_to_scheduler_ms=diff(now, result.node_completed_at_ms),
    )


def translation_result(
    session_id: str,
    index: int,
    outcome: Outcome,
    result: p.JobResult,
    client_ts: int | None,
    group: tuple[str | None, int | None],
    now: int,
) -> bytes:
    """A completed outcome's ``translation_result`` (§6.2); ``group``: its TTS group and part (§12.5)."""
    group_id, part_index = group
    return p.encode(
        p.TranslationResult(
            session_id=session_id,
            utterance_index=index,
            job_id=outcome.job_id,
            text_asr=result.text_asr or "",
            text_translated=result.text_translated or "",
            tts_audio=result.tts_audio or "",
            tts_format=result.tts_format or "pcm16",
            trace_id=outcome.trace,
            scheduler_sent_at_ms=now,
            extra=result.forwarded_extra(),
            group_id=group_id,
            part_index=part_index,
            service_timings=result.service_timings(),
            network_timings=network_timings(outcome, result, client_ts, now),
            asr_quality_level=result.asr_quality_level,
            reason_codes=result.reason_codes,
            quality_score=result.quality_score,
            rerun_count=result.rerun_count,
            segments_meta=result.segments_meta,
        )
    )


def missing_result(session_id: str, index: int, trace: str, reason: Any, now: int) -> bytes:
    return p.encode(
        p.MissingResult(session_id=session_id, utterance_index=index, reason=reason, created_at_ms=now, trace_id=trace)
    )


def ui_event(session_id: str, index: int, job_id: str, trace: str, event: str, **extra: Any) -> bytes:
    return p.encode(
        p.UiEvent(
            trace_id=trace,
            session_id=session_id,
            job_id=job_id,
            utterance_index=index,
            event=event,
            status="error" if event == "ERROR" else "ok",
            **extra,
        )
    )
