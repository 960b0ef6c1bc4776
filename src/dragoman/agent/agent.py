"""The node agent's connection loop: the node side of ``/ws/node`` (PROTOCOL.md §7, §8, §9, §15.1).

It behaves like lingua's Electron node where the scheduler depends on it, and better where that node lost work:

- registers with ``node_id: null`` the first time (unless one is configured), then always with the acknowledged
  id; drops ``job_assign`` frames received before ``node_register_ack`` (N3); heartbeats at once after the ack,
  then every ``heartbeat_interval_s`` (§2.4);
- rejects a repeated ``job_id`` (N4) and a repeated ``(session_id, utterance_index)`` (N5) with lingua's
  ``PROCESSING_ERROR`` results; the memory of seen ids is bounded (:mod:`dragoman.agent.ledger`);
- runs at most ``max_jobs`` jobs at once and announces that as ``max_concurrent_jobs`` (§18.3). Jobs beyond it
  are accepted and queued (the scheduler respects the announced value, so this only happens after a scheduler
  restart or with a scheduler that ignores it); queued jobs count in ``running_jobs``;
- ``job_cancel`` cancels the job's task for real. A cancelled job gets **no** ``job_result``: the scheduler
  has already resolved or re-dispatched it, and would discard a late result anyway (N11, §12.1);
- every other job gets exactly one ``job_result``. A result that finishes while the socket is down waits in a
  bounded outbox and is sent right after the next registration (the Electron node lost it, N8 d); the scheduler
  drops those it no longer wants;
- reconnects with exponential backoff and jitter, rotating through the configured scheduler URLs, and resets the
  backoff after each successful registration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

import dragoman
from dragoman import protocol as p
from dragoman.agent.engines import PROCESSING_ERROR, Engine, EngineError, EngineResult, EngineUnavailable
from dragoman.agent.engines import capability_by_type as derive_capabilities
from dragoman.agent.ledger import Outbox, RecentSet
from dragoman.client.endpoints import tls_context
from dragoman.websocket import BatchedWritesConnection

log = logging.getLogger(__name__)

DEFAULT_SCHEDULER: Final = "ws://127.0.0.1:5010/ws/node"

SchedulerMessage = p.NodeRegisterAck | p.JobAssign | p.JobCancel
_decode_scheduler: msgspec.json.Decoder[SchedulerMessage] = msgspec.json.Decoder(SchedulerMessage)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def node_platform() -> str:
    """The ``platform`` value of ``node_register``: ``windows``, ``linux`` or ``macos`` (§7.1)."""
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    return "linux"


def with_token(url: str, token: str | None) -> str:
    """``url`` with ``token=<token>`` added to its query string (PROTOCOL.md §18.4)."""
    if not token:
        return url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode({"token": token})
    return urllib.parse.urlunsplit(parts._replace(query=f"{parts.query}&{query}" if parts.query else query))


def redact(url: str) -> str:
    """``url`` without its query string: tokens must never be logged (§18.4)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(query="token=***" if parts.query else ""))


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return value


def encode_frame(message: msgspec.Struct, keep_null: Sequence[str] = ()) -> bytes:
    """JSON of a node message with optional keys that have no value omitted (F6), except the top-level keys in
    ``keep_null`` (``node_register.node_id`` is ``null`` on a first registration, as the Electron node sends it).

    The structs of :mod:`dragoman.protocol` for node messages are inbound structs of the scheduler, which keep
    ``None`` fields, hence this step."""
    data = msgspec.to_builtins(message)
    kept = {key: data[key] for key in keep_null if key in data and data[key] is None}
    out = _strip_none(data)
    out.update(kept)
    return msgspec.json.encode(out)


class Backoff:
    """Exponential backoff with "equal jitter": the n-th delay is uniform in [d/2, d], d = min(cap, initial·2ⁿ).

    The jitter spreads the reconnects of many nodes after a scheduler restart."""

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = min(self.max_s, self.initial_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self._rng.uniform(base / 2, base)

    def reset(self) -> None:
        self.attempt = 0


@dataclass(frozen=True)
class AgentConfig:
    """The agent's settings; :mod:`dragoman.agent.cli` fills them from flags and ``DRAGOMAN_NODE_*``."""

    scheduler_urls: tuple[str, ...] = (DEFAULT_SCHEDULER,)
    token: str | None = None
    ca_file: str | None = None  # the certificates wss:// trusts (default: the system's)
    node_id: str | None = None
    max_jobs: int = 4
    heartbeat_interval_s: float = 15.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    ack_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    seen_capacity: int = 100_000
    outbox_capacity: int = 1000
    max_frame_bytes: int = 64 * 1024 * 1024
    version: str = dragoman.__version__
    platform: str = field(default_factory=node_platform)

    def __post_init__(self) -> None:
        if not self.scheduler_urls:
            raise ValueError("at least one scheduler URL is needed")
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs must be at least 1, got {self.max_jobs}")
        if self.heartbeat_interval_s <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {self.heartbeat_interval_s}")


class NodeAgent:
    """One node: a connection loop around an :class:`Engine`. ``await run()`` until ``stop()``."""

    def __init__(self, config: AgentConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        #: The node's id: the configured one, then whatever the scheduler acknowledged.
        self.node_id: str | None = config.node_id
        #: Set while the node is registered and has sent its first heartbeat; cleared on disconnect.
        self.registered = asyncio.Event()
        #: Successful registrations so far (1 after the first connect, +1 per reconnect).
        self.registrations = 0
        #: The scheduler URL of the current (or last) registered connection, without the token.
        self.connected_url: str | None = None
        self.completed = 0
        self.cancelled = 0
        self.rejected = 0
        self._ws: ClientConnection | None = None  # set only while registered and the outbox is flushed
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.max_jobs)
        self._seen_jobs: RecentSet[str] = RecentSet(config.seen_capacity)
        self._seen_utterances: RecentSet[tuple[str, int]] = RecentSet(config.seen_capacity)
        self._outbox: Outbox[p.JobResult] = Outbox(config.outbox_capacity)
        self._stop = asyncio.Event()
        psutil.cpu_percent(None)  # primes the counter: the first non-blocking call always returns 0.0

    # -- public state --

    @property
    def running_jobs(self) -> int:
        """Accepted jobs without a result yet, running or queued for a slot."""
        return len(self._jobs)

    @property
    def pending_results(self) -> int:
        """Results waiting in the outbox for the next registration."""
        return len(self._outbox)

    def stop(self) -> None:
        """Make :meth:`run` return: running jobs are cancelled and the socket closed."""
        self._stop.set()

    # -- main loop --

    async def run(self) -> None:
        main = asyncio.ensure_future(self._main())
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()  # re-raise an unexpected failure of the loop
        finally:
            for task in (main, stopper):
                task.cancel()
            await asyncio.gather(main, stopper, return_exceptions=True)
            await self._shutdown()

    async def _shutdown(self) -> None:
        jobs = list(self._jobs.values())
        for task in jobs:
            task.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self._jobs.clear()
        with contextlib.suppress(Exception):
            await self.engine.close()

    async def _main(self) -> None:
        await self._wait_until_healthy()
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        urls = self.config.scheduler_urls
        index = 0
        while True:
            url = urls[index % len(urls)]
            registered = False
            try:
                registered = await self._connection(url)
            except ConnectionClosed as exc:
                log.warning("scheduler %s: connection closed (%s)", redact(url), exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.warning("scheduler %s: cannot connect: %s", redact(url), exc or type(exc).__name__)
            except Exception:
                log.exception("scheduler %s: unexpected failure of the connection", redact(url))
            if registered:
                backoff.reset()
            index += 1
            delay = backoff.next()
            log.info("reconnecting to %s in %.2f s", redact(urls[index % len(urls)]), delay)
            await asyncio.sleep(delay)

    async def _wait_until_healthy(self) -> None:
        """Register only once the engine can serve, so that no job meets a service that is still loading."""
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while True:
            try:
                await self.engine.check()
            except Exception as exc:  # EngineUnavailable, or a plugin's own error: the node waits either way
                delay = backoff.next()
                reason = str(exc) if isinstance(exc, EngineUnavailable) else f"{type(exc).__name__}: {exc}"
                log.warning(
                    "engine %s not ready (%s); not registering; checking again in %.1f s",
                    self.engine.name,
                    reason,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            log.info("engine %s ready; languages %s", self.engine.name, ",".join(self.engine.languages()))
            return

    async def _connection(self, url: str) -> bool:
        """One socket's life. Returns whether the node registered on it (which resets the backoff)."""
        log.info("connecting to %s", redact(url))
        async with connect(
            with_token(url, self.config.token),
            create_connection=BatchedWritesConnection,
            open_timeout=self.config.open_timeout_s,
            max_size=self.config.max_frame_bytes,
            ssl=tls_context(self.config.ca_file) if url.startswith("wss:") else None,
        ) as ws:
            await ws.send(encode_frame(self._register_frame(), keep_null=("node_id",)), text=True)
            ack = await self._await_ack(ws)
            if ack is None:
                return False
            if self.node_id is not None and ack.node_id != self.node_id:
                log.warning("scheduler acknowledged node %s instead of %s", ack.node_id, self.node_id)
            self.node_id = ack.node_id
            self.registrations += 1
            self.connected_url = redact(url)
            log.info("registered as %s at %s (max %d jobs)", self.node_id, redact(url), self.config.max_jobs)
            await ws.send(encode_frame(self._heartbeat_frame()), text=True)
            await self._flush_outbox(ws)
            self.registered.set()
            heartbeats = asyncio.create_task(self._heartbeats(ws))
            try:
                async for raw in ws:
                    await self._on_frame(raw)
            except ConnectionClosed as exc:
                log.warning("scheduler %s: connection lost (%s)", redact(url), exc)
            finally:
                self._ws = None
                self.registered.clear()
                heartbeats.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeats
            log.info("disconnected from %s; %d job(s) running", redact(url), self.running_jobs)
            return True

    async def _await_ack(self, ws: ClientConnection) -> p.NodeRegisterAck | None:
        """Wait for ``node_register_ack``. ``job_assign`` frames before it are dropped, like the Electron node."""
        try:
            async with asyncio.timeout(self.config.ack_timeout_s):
                while True:
                    msg = self._decode(await ws.recv())
                    if isinstance(msg, p.NodeRegisterAck):
                        return msg
                    if isinstance(msg, p.JobAssign):
                        log.warning("job_assign %s before node_register_ack: dropped", msg.job_id)
                    elif isinstance(msg, p.JobCancel):
                        self._cancel(msg)
        except TimeoutError:
            log.warning("no node_register_ack within %.1f s; reconnecting", self.config.ack_timeout_s)
            return None

    async def _flush_outbox(self, ws: ClientConnection) -> None:
        """Send results that finished while the node was away, then route new results to this socket.

        There is no await between the outbox running empty and ``self._ws`` being set, so no result can slip
        in between and be lost."""
        sent = 0
        while (result := self._outbox.pop()) is not None:
            try:
                await ws.send(encode_frame(result), text=True)
            except ConnectionClosed:
                self._outbox.push_front(result)
                raise
            sent += 1
        if sent:
            log.info("sent %d result(s) that finished while disconnected", sent)
        self._ws = ws

    async def _heartbeats(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.config.heartbeat_interval_s)
                await ws.send(encode_frame(self._heartbeat_frame()), text=True)

    # -- frames --

    def _decode(self, raw: str | bytes) -> SchedulerMessage | None:
        if isinstance(raw, bytes):
            log.debug("binary frame of %d bytes ignored (F3)", len(raw))
            return None
        try:
            return _decode_scheduler.decode(raw)
        except msgspec.DecodeError as exc:
            log.warning("scheduler frame ignored (%s): %.200s", exc, raw)
            return None

    async def _on_frame(self, raw: str | bytes) -> None:
        msg = self._decode(raw)
        if isinstance(msg, p.JobAssign):
            await self._accept(msg)
        elif isinstance(msg, p.JobCancel):
            self._cancel(msg)
        elif isinstance(msg, p.NodeRegisterAck):
            log.info("repeated node_register_ack for %s ignored", msg.node_id)

    def _capabilities(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], p.LanguageCapabilities]:
        services = self.engine.services()
        langs = self.engine.languages()
        languages = p.LanguageCapabilities(
            asr_languages=list(langs),
            semantic_languages=list(langs),
            tts_languages=list(langs),
            semantic_core_ready=bool(langs),
        )
        return services, derive_capabilities(services), languages

    def _register_frame(self) -> p.NodeRegister:
        services, capabilities, languages = self._capabilities()
        memory = psutil.virtual_memory().total
        return p.NodeRegister(
            node_id=self.node_id,
            version=self.config.version,
            capability_schema_version="2.0",
            platform=self.config.platform,
            hardware={
                "cpu_cores": psutil.cpu_count() or 1,
                "memory_gb": max(1, round(memory / 2**30)),  # an integer (§3 HardwareInfo)
                "gpus": [],
            },
            installed_models=[],
            installed_services=services or None,  # omitted when empty, like the Electron node
            capability_by_type=capabilities,
            features_supported={},
            accept_public_jobs=True,
            language_capabilities=languages,
            max_concurrent_jobs=self.config.max_jobs,
        )

    def _heartbeat_frame(self) -> p.NodeHeartbeat:
        assert self.node_id is not None
        services, capabilities, languages = self._capabilities()
        return p.NodeHeartbeat(
            node_id=self.node_id,
            timestamp=now_ms(),
            resource_usage={
                "cpu_percent": float(psutil.cpu_percent(None)),
                "mem_percent": float(psutil.virtual_memory().percent),
                "running_jobs": self.running_jobs,
            },
            installed_services=services,
            capability_by_type=capabilities,
            language_capabilities=languages,
            max_concurrent_jobs=self.config.max_jobs,
        )

    # -- jobs --

    async def _accept(self, job: p.JobAssign) -> None:
        utterance = (job.session_id, job.utterance_index)
        if job.job_id in self._seen_jobs:
            await self._reject(job, f"DUPLICATE_JOB_ID: job {job.job_id} was already received by this node")
            return
        self._seen_jobs.add(job.job_id)
        if utterance in self._seen_utterances:
            await self._reject(
                job,
                f"DUPLICATE_UTTERANCE_INDEX: session {job.session_id} utterance {job.utterance_index} "
                "was already received by this node",
            )
            return
        self._seen_utterances.add(utterance)
        log.debug("job %s (attempt %d) accepted", job.job_id, job.attempt_id)
        self._jobs[job.job_id] = asyncio.create_task(self._run_job(job), name=f"job {job.job_id}")

    async def _reject(self, job: p.JobAssign, message: str) -> None:
        log.warning("job %s rejected: %s", job.job_id, message)
        self.rejected += 1
        await self._deliver(self._failure(job, EngineError(PROCESSING_ERROR, message), 0))

    def _cancel(self, msg: p.JobCancel) -> None:
        task = self._jobs.pop(msg.job_id, None)
        if task is None:
            log.debug("job_cancel for %s: not running", msg.job_id)
            return
        log.info("job %s cancelled (%s); no result will be sent", msg.job_id, msg.reason or "no reason")
        self.cancelled += 1
        task.cancel()

    async def _run_job(self, job: p.JobAssign) -> None:
        started = time.monotonic()

        async def partial(text: str, is_final: bool) -> None:
            await self._send_partial(job, text, is_final)

        async with self._slots:
            try:
                outcome = await self.engine.run(job, partial)
            except EngineError as exc:
                result = self._failure(job, exc, self._elapsed_ms(started))
            except Exception as exc:
                log.exception("job %s: engine %s failed", job.job_id, self.engine.name)
                error = EngineError(PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
                result = self._failure(job, error, self._elapsed_ms(started))
            else:
                result = self._success(job, outcome, self._elapsed_ms(started))
        # From here the job is finished: a job_cancel no longer applies, and the result is owed.
        self._jobs.pop(job.job_id, None)
        self.completed += 1
        await self._deliver(result)

    @staticmethod
    def _elapsed_ms(started: float) -> int:
        return int((time.monotonic() - started) * 1000)

    def _base(self, job: p.JobAssign, success: bool, elapsed_ms: int) -> dict[str, Any]:
        assert self.node_id is not None
        return {
            "job_id": job.job_id,
            "attempt_id": job.attempt_id,
            "node_id": self.node_id,
            "session_id": job.session_id,
            "utterance_index": job.utterance_index,
            "success": success,
            "trace_id": job.trace_id,
            "processing_time_ms": elapsed_ms,
            "node_completed_at_ms": now_ms(),
        }

    def _success(self, job: p.JobAssign, outcome: EngineResult, elapsed_ms: int) -> p.JobResult:
        extra = dict(outcome.extra)
        timings = dict(extra.get("service_timings") or {})
        timings.setdefault("total_ms", elapsed_ms)
        extra["service_timings"] = timings
        return p.JobResult(
            **self._base(job, True, elapsed_ms),
            text_asr=outcome.text_asr,
            text_translated=outcome.text_translated,
            tts_audio=outcome.tts_audio,
            tts_format=outcome.tts_format or "pcm16",
            extra=extra,
        )

    def _failure(self, job: p.JobAssign, exc: EngineError, elapsed_ms: int) -> p.JobResult:
        timings = dict(exc.timings or {})
        timings.setdefault("total_ms", elapsed_ms)
        return p.JobResult(
            **self._base(job, False, elapsed_ms),
            error=p.JobError(code=exc.code, message=exc.message, details=exc.details),
            extra={"service_timings": timings},
        )

    async def _deliver(self, result: p.JobResult) -> None:
        ws = self._ws
        if ws is not None:
            try:
                await ws.send(encode_frame(result), text=True)
                return
            except ConnectionClosed:
                pass
        log.info("job %s finished while disconnected; result kept for the next registration", result.job_id)
        self._outbox.put(result)

    async def _send_partial(self, job: p.JobAssign, text: str, is_final: bool) -> None:
        """Partials are live subtitles: sent only if the job asked for them and the socket is up, never queued."""
        ws = self._ws
        if not job.enable_streaming_asr or ws is None or self.node_id is None:
            return
        frame = p.NodeAsrPartial(
            job_id=job.job_id,
            node_id=self.node_id,
            session_id=job.session_id,
            utterance_index=job.utterance_index,
            text=text,
            is_final=is_final,
            trace_id=job.trace_id,
        )
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode_frame(frame), text=True)
