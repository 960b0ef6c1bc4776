"""What runs a job on a node: the :class:`Engine` interface, the plugin registry, and the ``echo`` test engine.

Engines are plugins so that a deployment can put any ASR/NMT/TTS stack behind the node protocol without
touching the agent. They are found by name through the entry-point group ``dragoman.engines``; each entry
point names a factory (usually the Engine subclass itself) called with an :class:`EngineConfig`. The
built-in engines are also in a fallback table, so ``dragoman node`` works from a source checkout whose
package metadata is not installed.

An engine only turns a ``job_assign`` into an :class:`EngineResult` or raises :class:`EngineError`; the
agent owns everything protocol-related (ids, duplicates, timing, delivery, cancellation).
"""

from __future__ import annotations

import abc
import asyncio
import base64
import importlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Final

from dragoman import pcm
from dragoman.audio import pcm16_duration_ms, plan_a_stats
from dragoman.protocol import JobAssign, decode_base64

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP: Final = "dragoman.engines"

#: Built-in engines by name, used when the ``dragoman.engines`` entry points are not installed.
BUILTIN_ENGINES: Final[Mapping[str, str]] = {
    "echo": "dragoman.agent.engines:EchoEngine",
    "http": "dragoman.agent.http_engine:HttpEngine",
}

#: ``partial(text, is_final)`` sends an ``asr_partial`` for the running job (dropped if the job did not ask).
PartialSink = Callable[[str, bool], Awaitable[None]]

#: The error codes an engine may use (PROTOCOL.md §14, plus the node's generic ``PROCESSING_ERROR``).
PROCESSING_ERROR: Final = "PROCESSING_ERROR"
MODEL_NOT_AVAILABLE: Final = "MODEL_NOT_AVAILABLE"
NMT_TIMEOUT: Final = "NMT_TIMEOUT"
TTS_TIMEOUT: Final = "TTS_TIMEOUT"

SUPPORTED_AUDIO: Final = frozenset({"opus", "pcm16"})  # all the Electron node accepts (§4.3)


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine may be configured with. The built-in engines have typed fields; a third-party
    engine reads ``options`` (``--engine-opt KEY=VALUE``)."""

    langs: tuple[str, ...]
    options: Mapping[str, str] = field(default_factory=dict)
    # echo
    echo_delay_ms: int = 0
    echo_fail_rate: float = 0.0
    echo_empty_rate: float = 0.0
    echo_seed: int = 0
    # http
    asr_url: str | None = None
    nmt_url: str | None = None
    tts_url: str | None = None
    tts_format: str = "pcm16"
    tts_voices: Mapping[str, str] = field(default_factory=dict)
    asr_timeout_s: float = 30.0
    nmt_timeout_s: float = 10.0
    tts_timeout_s: float = 20.0


@dataclass
class EngineResult:
    """A finished job. ``tts_audio`` is base64; ``extra`` holds ExtraResult keys (``service_timings``,
    ``language_probability``...) and may hold diagnostics, which the scheduler does not forward."""

    text_asr: str = ""
    text_translated: str = ""
    tts_audio: str = ""
    tts_format: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def empty(cls, reason: str = "ASR_EMPTY", **extra: Any) -> EngineResult:
        """The node's empty result (N9): no text, no audio, ``extra.reason``."""
        return cls(extra={"reason": reason, **extra})


class EngineError(Exception):
    """A failed job: sent as ``job_result{success:false, error:{code, message, details?}}``. ``timings`` are the
    service timings measured before the failure (sent as ``extra.service_timings``)."""

    def __init__(self, code: str, message: str, details: Any = None, timings: dict[str, int] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details
        self.timings = timings


class EngineUnavailable(Exception):
    """Raised by :meth:`Engine.check` while the engine cannot take jobs yet (a service is not answering)."""


class UnknownEngine(LookupError):
    """No engine of that name is registered."""


class Engine(abc.ABC):
    """A node's job runner. One instance serves all jobs; ``run`` is called concurrently (up to the agent's
    ``--max-jobs``) and may be cancelled at any await point when the scheduler sends ``job_cancel``."""

    #: The name the engine is registered under (for logs and ``installed_services``).
    name: str = "engine"

    @abc.abstractmethod
    async def run(self, job: JobAssign, partial: PartialSink) -> EngineResult:
        """Process one job. Raise :class:`EngineError` for a failure the client should see."""

    @abc.abstractmethod
    def languages(self) -> list[str]:
        """Languages the node announces; the agent sends them as all three capability lists (like N13)."""

    @abc.abstractmethod
    def services(self) -> list[dict[str, Any]]:
        """``installed_services`` entries (PROTOCOL.md §3 InstalledService), current status included."""

    async def check(self) -> None:
        """Raise :class:`EngineUnavailable` until the engine can serve jobs. The agent retries with
        backoff and registers only after it passes, so a node never announces languages it cannot serve."""
        return None

    async def close(self) -> None:
        """Release resources (HTTP clients...) when the agent stops."""
        return None


EngineFactory = Callable[[EngineConfig], Engine]


def available_engines() -> dict[str, str]:
    """Registered engine names and their targets (``module:attr``): entry points win over built-ins."""
    found = dict(BUILTIN_ENGINES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    return found


def _resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def load_engine(name: str, config: EngineConfig) -> Engine:
    """Build the engine registered as ``name``: an entry point of ``dragoman.engines``, else a built-in."""
    factory: Any = None
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
        factory = ep.load()
        break
    if factory is None and name in BUILTIN_ENGINES:
        factory = _resolve(BUILTIN_ENGINES[name])
    if factory is None:
        raise UnknownEngine(f"unknown engine {name!r}; available: {', '.join(sorted(available_engines()))}")
    if not callable(factory):
        raise UnknownEngine(f"engine {name!r} does not name a callable: {factory!r}")
    engine = factory(config)
    if not isinstance(engine, Engine):
        raise UnknownEngine(f"engine {name!r} built {type(engine).__name__}, not an Engine")
    return engine


def capability_by_type(services: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``capability_by_type`` derived from ``installed_services`` with the Electron node's rule: a type is
    ``ready`` only if an implementation of it runs on a GPU (PROTOCOL.md §3); ``reason`` says why not."""
    caps: dict[str, dict[str, Any]] = {}
    for svc in services:
        cap = caps.setdefault(svc["type"], {"type": svc["type"], "ready": False, "_running": False})
        if svc.get("status") == "running":
            cap["_running"] = True
            if svc.get("device") == "gpu":
                cap["ready"] = True
                cap.setdefault("ready_impl_ids", []).append(svc["service_id"])
    out = []
    for cap in caps.values():
        running = cap.pop("_running")
        if not cap["ready"]:
            cap["reason"] = "only_cpu_running" if running else "no_running_impl"
        out.append(cap)
    return out


def decode_audio(job: JobAssign) -> bytes:
    """The job's audio bytes; invalid base64 is a PROCESSING_ERROR, as on the Electron node."""
    audio = decode_base64(job.audio)
    if audio is None:
        raise EngineError(PROCESSING_ERROR, "audio is not valid base64")
    return audio


class EchoEngine(Engine):
    """TEST ENGINE: no speech recognition, translation or synthesis happens. It answers every job with a
    deterministic description of its audio so that a scheduler, a client or a whole deployment can be
    exercised end to end without models.

    - ``text_asr``: ``"echo: 13 packets, 260 ms, opus"`` (Plan A record count) or
      ``"echo: 32000 bytes, 1000 ms, pcm16"`` (bytes / 2 / sample_rate);
    - ``text_translated``: ``"[<tgt_lang>] " + text_asr`` (empty if ``pipeline.use_nmt`` is false);
    - ``tts_audio``: the input audio itself, with ``tts_format`` = the input format (pcm16 at another rate is
      resampled to 16 kHz first, since pcm16 ``tts_audio`` is 16 kHz); empty if ``pipeline.use_tts`` is false;
    - one ``asr_partial`` (the final text, ``is_final:false``) first when the job has ``enable_streaming_asr``.

    Options: ``echo_delay_ms`` (artificial processing time), ``echo_fail_rate`` (share of jobs failed with
    PROCESSING_ERROR), ``echo_empty_rate`` (share answered as empty, ASR_EMPTY). The rates draw from a
    ``random.Random(echo_seed)`` in job arrival order, so a run is reproducible. Other formats than opus and
    pcm16 fail with PROCESSING_ERROR, as on the Electron node.
    """

    name = "echo"

    def __init__(self, config: EngineConfig) -> None:
        for label, rate in (("echo_fail_rate", config.echo_fail_rate), ("echo_empty_rate", config.echo_empty_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must be within 0..1, got {rate}")
        if config.echo_delay_ms < 0:
            raise ValueError(f"echo_delay_ms must not be negative, got {config.echo_delay_ms}")
        self.config = config
        self._random = random.Random(config.echo_seed)

    def languages(self) -> list[str]:
        return list(self.config.langs)

    def services(self) -> list[dict[str, Any]]:
        return [
            {"service_id": f"echo-{kind}", "type": kind, "device": "cpu", "status": "running", "engine": "echo"}
            for kind in ("asr", "nmt", "tts")
        ]

    @staticmethod
    def describe(job: JobAssign, data: bytes) -> str:
        """The deterministic ``text_asr`` for ``data`` (exposed so tests can compute the expected text)."""
        if job.audio_format == "opus":
            stats = plan_a_stats(data, silence_packet_max_bytes=10)  # the voiced count is not used
            return f"echo: {stats.packets} packets, {stats.duration_ms} ms, opus"
        return f"echo: {len(data)} bytes, {pcm16_duration_ms(len(data), job.sample_rate)} ms, pcm16"

    async def run(self, job: JobAssign, partial: PartialSink) -> EngineResult:
        draw = self._random.random()  # drawn first, in arrival order, so outcomes do not depend on timing
        if job.audio_format not in SUPPORTED_AUDIO:
            raise EngineError(PROCESSING_ERROR, f"unsupported audio_format {job.audio_format!r}")
        data = decode_audio(job)
        text = self.describe(job, data)
        if job.enable_streaming_asr:
            await partial(text, False)
        if self.config.echo_delay_ms:
            await asyncio.sleep(self.config.echo_delay_ms / 1000)
        if draw < self.config.echo_fail_rate:
            raise EngineError(PROCESSING_ERROR, "echo: simulated failure (echo_fail_rate)")
        if draw < self.config.echo_fail_rate + self.config.echo_empty_rate or not data:
            return EngineResult.empty("ASR_EMPTY")
        tts_audio = ""
        if job.pipeline.use_tts:
            if job.audio_format == "pcm16" and job.sample_rate != pcm.SAMPLE_RATE:
                data = await asyncio.to_thread(pcm.resample_pcm16, data, job.sample_rate)
            tts_audio = base64.b64encode(data).decode("ascii")
        return EngineResult(
            text_asr=text,
            text_translated=f"[{job.tgt_lang}] {text}" if job.pipeline.use_nmt else "",
            tts_audio=tts_audio,
            tts_format=job.audio_format,
        )
