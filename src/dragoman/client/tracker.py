"""Following a session's utterance slots from the messages a client receives.

Outcomes arrive in ``utterance_index`` order, one per slot (PROTOCOL.md §12), but a client on the streaming
path never chooses the indices, and an ``error`` outcome carries none. The ``ui_event``s fill both gaps:
``DISPATCHED`` announces every slot as soon as its job is sent, and ``ERROR`` names the slot whose failure
will be released later as an ``error``. With them a client knows which utterances are still outstanding (so
it can wait for them before closing) and which utterance each ``error`` belongs to.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from dragoman import protocol as p
from dragoman.client.session import Reconnected, SessionEvent

Outcome = p.TranslationResult | p.MissingResult | p.Error


@dataclass(frozen=True, slots=True)
class TrackedOutcome:
    """An outcome with the utterance it resolves (``None`` for an ``error`` that answers a bad message)."""

    index: int | None
    message: Outcome
    #: A ``missing_result{gap_timeout}`` for a slot no node was ever given (no ``DISPATCHED`` announced it): the
    #: job waited for a node until the session closed, i.e. no node serves the pair, or every one was busy.
    never_dispatched: bool = False


@dataclass(slots=True)
class OutcomeTracker:
    """Feed it every event of a ``SessionClient`` created with ``ui_events=True``."""

    #: Slots the scheduler announced (a ui_event or asr_partial named them).
    announced: set[int] = field(default_factory=set)
    resolved: set[int] = field(default_factory=set)
    #: Slots whose job failed (ui_event ERROR) and whose ``error`` outcome has not been matched yet.
    failing: set[int] = field(default_factory=set)
    #: Outcomes by wire type, and ``never_dispatched`` for those of them that never reached a node.
    counts: Counter[str] = field(default_factory=Counter)
    #: ``time.monotonic()`` of the last event.
    last_event_at: float = field(default_factory=time.monotonic)

    def observe(self, event: SessionEvent) -> TrackedOutcome | None:
        """Record an event; returns the outcome it is, if it is one."""
        self.last_event_at = time.monotonic()
        if isinstance(event, p.UiEvent):
            self.announced.add(event.utterance_index)
            # A timed-out job ends as missing_result, not error (§11.6), so it is not waited for as an error.
            if event.event == "ERROR" and event.error_code != "JOB_TIMEOUT":
                self.failing.add(event.utterance_index)
            return None
        if isinstance(event, p.ClientAsrPartial):
            self.announced.add(event.utterance_index)
            return None
        if isinstance(event, Reconnected):
            if not event.resumed:  # a new session numbers its utterances from 0 again
                self.announced.clear()
                self.resolved.clear()
                self.failing.clear()
            return None
        if not isinstance(event, p.TranslationResult | p.MissingResult | p.Error):
            return None  # room messages
        self.counts[outcome_type(event)] += 1
        if isinstance(event, p.Error):
            candidates = self.failing - self.resolved
            index = min(candidates) if candidates else None  # slots are released in index order
            if index is not None:
                self.failing.discard(index)
                self.resolved.add(index)
            return TrackedOutcome(index, event)
        never_dispatched = (
            isinstance(event, p.MissingResult)
            and event.reason == "gap_timeout"
            and event.utterance_index not in self.announced
        )
        if never_dispatched:
            self.counts["never_dispatched"] += 1
        self.resolved.add(event.utterance_index)
        return TrackedOutcome(event.utterance_index, event, never_dispatched)

    @property
    def outstanding(self) -> set[int]:
        """Announced slots without an outcome yet."""
        return self.announced - self.resolved

    def quiet_for(self) -> float:
        """Seconds since the last event."""
        return time.monotonic() - self.last_event_at


def outcome_type(event: Outcome) -> str:
    """The wire ``type`` of an outcome message."""
    if isinstance(event, p.TranslationResult):
        return "translation_result"
    if isinstance(event, p.MissingResult):
        return "missing_result"
    return "error"
