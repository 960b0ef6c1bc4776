"""Job and session traces: the timeline of an utterance, from its cut to its delivery.

The store's scripts record each step that changes a job (created, waiting, assigned, accepted, running,
result, failover, outcome) in the job's trace as they make it. The steps Dragoman takes outside the
scripts, the cut and the delivery, are recorded here: buffered, and written every 100 ms, pipelined
(``Store._in_batches``), off the path of the utterance. Traces are best effort: while the store is unreachable
these steps are dropped, never retried, and never hold anything up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from dragoman.scheduler.store import Store, now_ms

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.1
MAX_BUFFERED = 10_000  # steps held between two flushes; more are dropped (a store that stalls)


class TraceRecorder:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._jobs: list[tuple[str, int, dict[str, Any]]] = []
        self._sessions: list[tuple[str, dict[str, Any]]] = []
        self._trace_ids: dict[str, str] = {}  # trace id -> session, for looking traces up
        self._flusher: asyncio.Task[None] | None = None
        self.dropped = 0
        self.flushes = 0  # pipelined store calls made (one round trip each)

    def cut(
        self,
        session: str,
        index: int,
        job_id: str,
        cell: int,
        trace: str,
        at_ms: int,
        reason: str,
        audio_ms: int | None,
    ) -> None:
        entry: dict[str, Any] = {"e": "cut", "t": at_ms, "reason": reason, "index": index}
        if audio_ms is not None:
            entry["audio_ms"] = audio_ms
        self._add((job_id, cell, entry), (session, {**entry, "job_id": job_id, "cell": cell}))
        if trace:
            self._trace_ids[trace] = session

    def delivered(self, job_id: str, cell: int, index: int) -> None:
        self._add((job_id, cell, {"e": "delivered", "t": now_ms(), "index": index}), None)

    def _add(self, job: tuple[str, int, dict[str, Any]], session: tuple[str, dict[str, Any]] | None) -> None:
        if job[1] < 0:  # the job was never placed in a cell (the store failed): nothing to attach it to
            return
        if len(self._jobs) >= MAX_BUFFERED:
            self.dropped += 1
            return
        self._jobs.append(job)
        if session is not None:
            self._sessions.append(session)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon(), name="trace flush")

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL_S)
        await self.flush()

    async def flush(self) -> None:
        jobs, self._jobs = self._jobs, []
        sessions, self._sessions = self._sessions, []
        trace_ids, self._trace_ids = self._trace_ids, {}
        if not jobs and not sessions:
            return
        try:
            self.flushes += 1
            await self.store.add_traces(jobs, sessions, trace_ids)
        except Exception as exc:  # best effort: a trace never fails an utterance
            self.dropped += len(jobs)
            log.debug("trace steps dropped (%d): %s", len(jobs), exc)

    async def stop(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()


def timeline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's steps as the trace endpoint shows them: each attempt with its node, instance and times."""
    attempts: dict[int, dict[str, Any]] = {}
    summary: dict[str, Any] = {"steps": steps, "attempts": []}
    for step in steps:
        event = step.get("e")
        attempt = step.get("attempt")
        if event == "assigned" and isinstance(attempt, int):
            attempts[attempt] = {
                "attempt": attempt,
                "node_id": step.get("node"),
                "instance": step.get("instance"),
                "assigned_ms": step.get("t"),
            }
        elif isinstance(attempt, int) and attempt in attempts:
            current = attempts[attempt]
            if event in ("accepted", "running", "result"):
                current[f"{event}_ms"] = step.get("t")
                if event == "result":
                    current["result"] = step.get("kind")
            elif event == "failover":
                current["failover_ms"] = step.get("t")
                current["failover_why"] = step.get("why")
        if event == "cut":
            summary["cut"] = {k: step[k] for k in ("reason", "audio_ms", "t") if k in step}
        elif event == "created":
            summary.update(created_ms=step.get("t"), pair=step.get("pair"), trace_id=step.get("trace"))
            summary.update(session_id=step.get("session"), utterance_index=step.get("index"))
        elif event == "outcome":
            summary["outcome"] = {k: step[k] for k in ("state", "why", "t") if k in step}
        elif event == "delivered":
            summary["delivered_ms"] = step.get("t")
    summary["attempts"] = [attempts[a] for a in sorted(attempts)]
    return summary
