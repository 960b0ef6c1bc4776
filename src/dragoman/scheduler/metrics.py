"""The metrics of ``/metrics``, kept with ``prometheus_client`` in a registry of their own.

Process-local figures (what this instance did) are counters and histograms here; fleet-wide figures (every
node, pair and instance of the deployment) are read from the store by ``dragoman.scheduler.fleet`` and exported by
its collector, so any instance's ``/metrics`` shows the whole deployment. Every label is bounded: script
names, outcomes, reasons, language pairs and instances, never a session, job or node. Every labelled
counter is exported at 0 for each of its known label values before its first increment, so a rate or an
alert on it works from the start.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram

disable_created_metrics()  # type: ignore[no-untyped-call] # the *_created series double the output and nothing here reads them
REGISTRY = CollectorRegistry(auto_describe=True)

# Latency buckets, in seconds: dispatch and store calls take a millisecond or so, results seconds.
FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
RESULT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)

OUTCOMES = ("completed", "empty", "failed", "timed_out")


class _Labelled:
    """A prometheus_client metric and its children by label values, looked up once each (``labels()`` takes a
    lock and builds a key on every call; the hot path counts and observes several times per utterance)."""

    def __init__(self, metric: Any, labelled: bool) -> None:
        self._metric = metric
        self._labelled = labelled
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, labels: tuple[str, ...]) -> Any:
        if not self._labelled:
            return self._metric
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self._metric.labels(*labels)
        return child

    def known(self, values: Iterable[str]) -> None:
        """Export these label values from the start."""
        for value in values:
            self._child((value,))


class Counter(_Labelled):
    """A counter with optional labels, each known label value exported at 0 from the start."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), known: Iterable[str] = ()) -> None:
        assert name.endswith("_total"), "a counter's name ends in _total"
        super().__init__(_Counter(name, help, labels, registry=REGISTRY), bool(labels))
        self._name, self._labels = name, labels
        self.known(known)

    def inc(self, *labels: str, amount: float = 1) -> None:
        self._child(labels).inc(amount)

    def get(self, *labels: str) -> float:
        value = REGISTRY.get_sample_value(self._name, dict(zip(self._labels, labels, strict=True)))
        return value or 0.0


class Histogram(_Labelled):
    def __init__(
        self, name: str, help: str, buckets: tuple[float, ...], labels: tuple[str, ...] = (), known: Iterable[str] = ()
    ) -> None:
        super().__init__(_Histogram(name, help, labels, buckets=buckets, registry=REGISTRY), bool(labels))
        self.known(known)

    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(max(0.0, value))


class Gauge:
    """A value read when scraped: ``read`` is set by whoever holds it (the scheduler)."""

    def __init__(self, name: str, help: str) -> None:
        self._metric = _Gauge(name, help, registry=REGISTRY)
        self.read: Callable[[], float] = lambda: 0
        self._metric.set_function(lambda: self.read())


def render() -> str:
    """This instance's metrics in the text exposition format."""
    return generate_latest(REGISTRY).decode()


SESSIONS = Gauge("dragoman_sessions", "Client sessions held by this instance")
NODES = Gauge("dragoman_nodes", "Node sockets held by this instance")
CUT_REASONS = ("is_final", "timeout", "endpoint", "max_duration", "max_length", "session_close")  # segmenter.CutReason
CUTS = Counter(
    "dragoman_cuts_total",
    "Utterance cuts by reason (discarded: silence only; merged: held)",
    ("reason",),
    (*CUT_REASONS, "discarded", "merged"),
)
VOICELESS_CUTS = Counter(
    "dragoman_voiceless_cuts_total",
    "Cuts not turned into jobs for less voice than min_voice_ms (lingua: no voiced packet), by cut reason",
    ("reason",),
    CUT_REASONS,
)
AUDIO_SENT_SECONDS = Counter("dragoman_audio_sent_seconds_total", "Seconds of streamed audio cut into jobs")
VOICE_SENT_SECONDS = Counter(
    "dragoman_voice_sent_seconds_total", "Seconds of voiced packets in that audio (as the endpointing mode judges them)"
)
AUDIO_TRIMMED_SECONDS = Counter(
    "dragoman_audio_trimmed_seconds_total",
    "Seconds of streamed audio not sent: non-voice trimmed around speech, and cuts without voice",
)
JOBS_CREATED = Counter("dragoman_jobs_created_total", "Jobs created by this instance")
JOBS_DISPATCHED = Counter("dragoman_jobs_dispatched_total", "job_assign frames sent (every attempt)")
JOBS_RESOLVED = Counter("dragoman_jobs_resolved_total", "Job outcomes seen by this instance", ("outcome",), OUTCOMES)
FAILOVERS = Counter("dragoman_failovers_total", "Attempts after the first")
STALE_RESULTS = Counter(
    "dragoman_stale_results_total", "job_results dropped", ("why",), ("stale", "resolved", "unknown")
)
GAP_TIMEOUTS = Counter("dragoman_gap_timeouts_total", "Slots resolved by the ordering gap timeout")
BAD_FRAMES = Counter(
    "dragoman_bad_frames_total", "Frames answered or logged as malformed", ("socket",), ("session", "node")
)
REFUSED = Counter("dragoman_refused_total", "Sockets and HTTP calls refused by authentication", ("path", "why"))
LIMITED = Counter(
    "dragoman_limited_total",
    "Frames dropped or sockets closed by a limit against abuse",
    ("limit",),
    ("messages_per_s", "audio_speed", "sessions", "connections_per_peer"),
)
STORE_ERRORS = Counter("dragoman_store_errors_total", "Store calls that failed")
ROOM_MEMBERS = Gauge("dragoman_room_members", "Room members whose sessions this instance holds")
ROOM_EVENTS = Counter(
    "dragoman_room_events_total",
    "Room events: created, joined, left, expired, join_failed, join_limited, full, relayed, relay_muted, relay_offline",
    ("event",),
    (
        "created",
        "joined",
        "left",
        "expired",
        "join_failed",
        "join_limited",
        "full",
        "relayed",
        "relay_muted",
        "relay_offline",
    ),
)
DISPATCH_LATENCY = Histogram(
    "dragoman_dispatch_seconds",
    "From the finalizing message to the job_assign frame being written (finalize -> job_assign)",
    FAST_BUCKETS,
)
RESULT_LATENCY = Histogram(
    "dragoman_result_seconds",
    "From the job's creation at the finalizing message to its outcome being delivered (finalize -> result)",
    RESULT_BUCKETS,
    ("outcome",),
    OUTCOMES,
)
NODE_WAIT = Histogram(
    "dragoman_node_wait_seconds",
    "From a job's creation to the job_assign of its last attempt (waiting for a node, and failovers)",
    RESULT_BUCKETS,
)
SCRIPT_LATENCY = Histogram(
    "dragoman_store_script_seconds", "Store script calls, by script (round trip included)", FAST_BUCKETS, ("script",)
)


# The last few minutes of events, for the dashboard's charts and lists (bounded, this instance only).
RECENT_RESULTS: deque[tuple[float, str, float]] = deque(maxlen=20_000)  # (unix s, outcome, finalize->result s)
RECENT_DISPATCHES: deque[tuple[float, float]] = deque(maxlen=20_000)  # (unix s, finalize->job_assign s)
RECENT_FAILOVERS: deque[dict[str, object]] = deque(maxlen=50)
RECENT_JOBS: deque[tuple[int, str, str, float]] = deque(maxlen=50)  # (unix ms, job id, outcome, seconds)


def dispatched(seconds: float) -> None:
    """A new job's first job_assign went out ``seconds`` after its finalizing message."""
    DISPATCH_LATENCY.observe(seconds)
    RECENT_DISPATCHES.append((time.time(), seconds))


def job_resolved(job_id: str, state: str, created_ms: int, dispatched_ms: int | None) -> None:
    """A job's outcome reached its end here (delivered, or nobody to deliver to): counted, with its latencies."""
    now_ms = int(time.time() * 1000)
    seconds = max(0.0, (now_ms - created_ms) / 1000)
    JOBS_RESOLVED.inc(state)
    RESULT_LATENCY.observe(seconds, state)
    RECENT_RESULTS.append((now_ms / 1000, state, seconds))
    RECENT_JOBS.append((now_ms, job_id, state, seconds))
    if dispatched_ms is not None:
        NODE_WAIT.observe((dispatched_ms - created_ms) / 1000)


def failed_over(job_id: str, node: str, attempt: int) -> None:
    """A job's attempt after the first went out."""
    FAILOVERS.inc()
    RECENT_FAILOVERS.append({"t": int(time.time() * 1000), "job_id": job_id, "node_id": node, "attempt": attempt})
