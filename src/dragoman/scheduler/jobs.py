"""Building a job: its ``job_assign`` (PROTOCOL.md §11.2) and what the store needs to create-or-get it. Pure
functions of their arguments, shared by the session path and the HTTP job API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dragoman import protocol as p
from dragoman.langs import job_pairs, room_job_pairs
from dragoman.scheduler.store import JobSpec


def session_assign(
    init: p.SessionInit,
    session_id: str,
    index: int,
    job_id: str,
    trace: str,
    src_lang: str,
    tgt_lang: str,
    turn: str,
    fields: dict[str, Any],
) -> p.JobAssign:
    """The ``job_assign`` of one of a session's utterances: the session's settings, the utterance's
    ``fields`` (its path's: audio, flags, pipeline; §11.2)."""
    return p.JobAssign(
        attempt_id=0,
        job_id=job_id,
        session_id=session_id,
        utterance_index=index,
        src_lang=src_lang,
        tgt_lang=tgt_lang,
        trace_id=trace,
        turn_id=turn,
        mode=init.mode,
        lang_a=init.lang_a,
        lang_b=init.lang_b,
        auto_langs=init.auto_langs,
        enable_streaming_asr=True,
        partial_update_interval_ms=1000,
        **fields,
    )


def job_spec(
    assign: p.JobAssign,
    *,
    tgt: str,
    owner: str,
    result_ttl_ms: int,
    prefer: tuple[str, ...] = (),
    guard: bool = False,
    room: bool = False,
) -> JobSpec:
    """What create-or-get needs to place the job ``assign`` describes: its slot (session, index, ``tgt``), the
    pools it is placed from (a room's two-way speaker needs both its languages recognised), and the
    ``job_assign``'s bytes."""
    pairs = room_job_pairs if room else job_pairs
    pair, pair2 = pairs(assign.src_lang, assign.tgt_lang, assign.lang_a, assign.lang_b)
    return JobSpec(
        session=assign.session_id,
        index=assign.utterance_index,
        tgt=tgt,
        job_id=assign.job_id,
        pair=pair,
        pair2=pair2,
        turn=assign.turn_id or "",  # (both callers give one)
        trace=assign.trace_id,
        owner=owner,
        body=p.assign_body(assign),
        result_ttl_ms=result_ttl_ms,
        prefer=prefer,
        guard=guard,
        room=room,
    )


@dataclass(slots=True)
class Affinity:
    """Which nodes a delivery stream's next job should go to if they can take it: its turn's node (the parts
    of one long utterance go to one node: MUST), then the node of the stream's last job (SHOULD)."""

    turn_node: tuple[str, str] | None = None  # (turn id, node)
    last_node: str | None = None

    def prefer(self, turn: str) -> tuple[str, ...]:
        prefer = []
        if self.turn_node is not None and self.turn_node[0] == turn:
            prefer.append(self.turn_node[1])
        if self.last_node is not None and self.last_node not in prefer:
            prefer.append(self.last_node)
        return tuple(prefer)

    def placed(self, turn: str, node: str) -> None:
        self.turn_node = (turn, node)
        self.last_node = node
