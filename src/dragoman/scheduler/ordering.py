"""In-order release of one delivery stream (a session's own outcomes, or a room language's): pure logic.

Each utterance index gets a slot when its job is created, in increasing index order. A slot is resolved when
its outcome arrives or Dragoman gives it up, and released only once every lower index has been (§12.3): an
outcome that arrives early waits for the ones before it. A head slot still unresolved while a later one is
resolved behind it is given up ``gap_timeout_ms`` after the later one resolved (or after the head became the
head, if that is later). Times are monotonic milliseconds, given by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from dragoman import protocol as p
from dragoman.scheduler import frames
from dragoman.scheduler.store import Outcome


@dataclass(slots=True)
class Slot:
    """One utterance index with a job: waits for the job's outcome, then for its turn to be released."""

    index: int
    job_id: str
    cell: int  # the store cell that holds the job (-1: none yet)
    streaming: bool
    pair: str
    trace: str
    client_ts: int | None
    outcome: Outcome | None = None
    frames: list[bytes] = field(default_factory=list)  # set when resolved by Dragoman itself
    resolved_at: float | None = None
    _result: p.JobResult | None = None

    def result(self) -> p.JobResult:
        """The node's ``job_result`` behind the outcome, decoded once however often it is read."""
        if self._result is None:
            detail = self.outcome.detail if self.outcome is not None else None
            self._result = frames.decode_result(detail or "")
        return self._result

    @property
    def unresolved(self) -> bool:
        return self.outcome is None and not self.frames


class Ordered:
    """The unreleased slots of one stream, lowest index first."""

    def __init__(self, now: float) -> None:
        self._slots: dict[int, Slot] = {}  # in increasing index order (the order they were added)
        self._head_since = now  # when the current head became the head

    def __len__(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[Slot]:
        return iter(self._slots.values())

    def add(self, slot: Slot, now: float) -> None:
        """A slot for the next index (higher than every slot added before)."""
        if not self._slots:
            self._head_since = now
        self._slots[slot.index] = slot

    def get(self, index: int) -> Slot | None:
        return self._slots.get(index)

    def head(self) -> Slot | None:
        return next(iter(self._slots.values()), None)

    def unresolved(self) -> list[Slot]:
        return [slot for slot in self._slots.values() if slot.unresolved]

    def pop_released(self, now: float) -> Slot | None:
        """The head slot, taken out, if it is resolved (its turn has come); else None."""
        head = self.head()
        if head is None or head.resolved_at is None:
            return None
        del self._slots[head.index]
        self._head_since = now
        return head

    def gap_deadline(self, gap_timeout_ms: int) -> float | None:
        """When the unresolved head is given up; None while nothing resolved waits behind it."""
        slots = iter(self._slots.values())
        head = next(slots, None)
        if head is None or head.resolved_at is not None:
            return None
        waiting = [slot.resolved_at for slot in slots if slot.resolved_at is not None]
        if not waiting:
            return None
        return max(self._head_since, min(waiting)) + gap_timeout_ms
