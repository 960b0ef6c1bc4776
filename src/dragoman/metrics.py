"""Process-local counters for ``/metrics`` (Prometheus text format).

One event loop mutates them, so they need no locks; each instance reports its own figures.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable

_registry: list[_Metric] = []


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        _registry.append(self)

    def _label_text(self, values: tuple[str, ...]) -> str:
        if not values:
            return ""
        return "{" + ",".join(f'{k}="{v}"' for k, v in zip(self.labels, values, strict=True)) + "}"

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        super().__init__(name, help, labels)
        self.values: defaultdict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *labels: str, amount: float = 1) -> None:
        self.values[labels] += amount

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def samples(self) -> list[str]:
        return [f"{self.name}{self._label_text(k)} {v:g}" for k, v in sorted(self.values.items())]


class Gauge(_Metric):
    """A value read when scraped."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], float] = lambda: 0) -> None:
        super().__init__(name, help)
        self.read = read

    def samples(self) -> list[str]:
        return [f"{self.name} {self.read():g}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        super().__init__(name, help)
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value

    def samples(self) -> list[str]:
        lines, running = [], 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        running += self.counts[-1]
        lines += [f'{self.name}_bucket{{le="+Inf"}} {running}', f"{self.name}_sum {self.total:g}"]
        lines.append(f"{self.name}_count {running}")
        return lines


def render() -> str:
    return "".join(metric.render() for metric in _registry)


SESSIONS = Gauge("dragoman_sessions", "Client sessions held by this instance")
NODES = Gauge("dragoman_nodes", "Node sockets held by this instance")
CUTS = Counter("dragoman_cuts_total", "Utterance cuts by reason (discarded: silence only; merged: held)", ("reason",))
VOICELESS_CUTS = Counter(
    "dragoman_voiceless_cuts_total",
    "Cuts not turned into jobs for less voice than min_voice_ms (lingua: no voiced packet), by cut reason",
    ("reason",),
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
JOBS_RESOLVED = Counter("dragoman_jobs_resolved_total", "Job outcomes seen by this instance", ("outcome",))
FAILOVERS = Counter("dragoman_failovers_total", "Attempts after the first")
STALE_RESULTS = Counter("dragoman_stale_results_total", "job_results dropped", ("why",))
GAP_TIMEOUTS = Counter("dragoman_gap_timeouts_total", "Slots resolved by the ordering gap timeout")
BAD_FRAMES = Counter("dragoman_bad_frames_total", "Frames answered or logged as malformed", ("socket",))
REFUSED = Counter("dragoman_refused_total", "Sockets and HTTP calls refused by authentication", ("path", "why"))
LIMITED = Counter("dragoman_limited_total", "Frames dropped or sockets closed by a limit against abuse", ("limit",))
STORE_ERRORS = Counter("dragoman_store_errors_total", "Store calls that failed")
ROOM_MEMBERS = Gauge("dragoman_room_members", "Room members whose sessions this instance holds")
ROOM_EVENTS = Counter(
    "dragoman_room_events_total",
    "Room events: created, joined, left, expired, join_failed, join_limited, full, relayed, relay_muted, relay_offline",
    ("event",),
)
DISPATCH_LATENCY = Histogram(
    "dragoman_dispatch_seconds",
    "From the finalizing message to the job_assign frame being written",
    (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
