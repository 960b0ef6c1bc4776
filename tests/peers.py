"""Scripted fake protocol peers for the Dragoman test-suite.

These are real WebSocket peers (no mocks). They send the frames that lingua's unmodified web client
and lingua's Electron compute node send (PROTOCOL.md §5, §7, §9.3, §15), key for key, and they check
the frames they receive the way strict lingua peers would: text frames only (F3), JSON objects tagged
by ``type`` (F1, F2), integer fields as JSON integers (F8, F9) and no top-level ``null`` (F6).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

Frame = dict[str, Any]

# ----------------------------------------------------------------------------------------------------
# Audio helpers (PROTOCOL §4)
# ----------------------------------------------------------------------------------------------------

#: Opus TOC byte for SILK wide-band, 20 ms, mono, one frame (config 9): what a 16 kHz VOIP encoder emits.
#: Using it keeps fake packets at exactly 20 ms for a Dragoman that reads the TOC byte (§4.5).
OPUS_TOC_WB_20MS = 0x48

#: §4.5 default ``silence_packet_max_bytes``.
SILENCE_PACKET_MAX_BYTES = 10

#: node URL -> whether the instance behind it has seen a node's first heartbeat (``LinguaNode.start`` waits
#: for it); filled by the tests' instance fixtures.
NODE_READY: dict[str, Callable[[str], Awaitable[bool]]] = {}

#: Keys that lingua peers parse as strict integers (F8, F9); every ``*_ms`` key is checked too.
_INT_KEYS = frozenset(
    {
        "utterance_index",
        "attempt_id",
        "sample_rate",
        "part_index",
        "rerun_count",
        "padding_ms",
        "partial_update_interval_ms",
        "negotiated_sample_rate",
        "negotiated_channel_count",
        "timestamp",
        "count",
    }
)
#: Keys whose values are relayed verbatim (``any``) and therefore not checked.
_OPAQUE_KEYS = frozenset({"details", "sdp", "candidate"})


def plan_a(packets: Iterable[bytes]) -> bytes:
    """Plan A framing (§4.1): each record is a u16 little-endian length followed by the packet."""
    out = bytearray()
    for packet in packets:
        if len(packet) > 0xFFFF:
            raise ValueError(f"Plan A packet too long: {len(packet)} bytes")
        out += len(packet).to_bytes(2, "little")
        out += packet
    return bytes(out)


#: First range-coded byte of a fake packet: with the SILK voice-activity flag set on a voiced frame, or clear
#: (what ``dragoman.scheduler.voice`` reads, for ``endpointing = "voice"``).
_VOICED_SILK_HEADER, _SILENT_SILK_HEADER = 0xB0, 0x00


def _packet(size: int, seed: int) -> bytes:
    """One deterministic fake Opus packet of ``size`` bytes, starting with a 20 ms TOC byte; voiced if longer than
    the silence limit."""
    header = _VOICED_SILK_HEADER if size > SILENCE_PACKET_MAX_BYTES else _SILENT_SILK_HEADER
    body = bytes((seed * 31 + j * 7 + 1) & 0xFF for j in range(1, size - 1))
    return bytes([OPUS_TOC_WB_20MS]) + bytes([header])[: size - 1] + body


def voiced_chunk(packets: int = 13, size: int = 70) -> bytes:
    """A web-client-like 260 ms chunk (§4.4): ``packets`` voiced 20 ms packets of ``size`` (> 10) bytes."""
    if size <= SILENCE_PACKET_MAX_BYTES:
        raise ValueError(f"a voiced packet must be longer than {SILENCE_PACKET_MAX_BYTES} bytes, got {size}")
    return plan_a(_packet(size, i) for i in range(packets))


def silence_chunk(packets: int = 13, size: int = 3) -> bytes:
    """A near-silence chunk (§4.4): ``packets`` packets of ``size`` (1..10) bytes; 65 bytes by default."""
    if not 1 <= size <= SILENCE_PACKET_MAX_BYTES:
        raise ValueError(f"a silence packet must be 1..{SILENCE_PACKET_MAX_BYTES} bytes, got {size}")
    return plan_a(_packet(size, i) for i in range(packets))


def pcm16(duration_ms: int = 1000, sample_rate: int = 16000) -> bytes:
    """Deterministic non-silent raw s16le mono audio (§4.2) of ``duration_ms``, no header."""
    n = sample_rate * duration_ms // 1000
    return b"".join((((i * 37) % 2001) - 1000).to_bytes(2, "little", signed=True) for i in range(n))


def b64(data: bytes | str) -> str:
    """Standard base64 of ``data``; a ``str`` is returned unchanged (lets tests send invalid base64)."""
    if isinstance(data, str):
        return data
    return base64.b64encode(data).decode("ascii") if data else ""


def now_ms() -> int:
    """Unix epoch milliseconds as an int (F9)."""
    return time.time_ns() // 1_000_000


def _summary(frame: Frame, limit: int = 240) -> str:
    text = json.dumps(frame, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_ints(value: Any, path: str, problems: list[str]) -> None:
    """Collect F8/F9 violations: known integer keys and ``*_ms`` keys must be JSON integers."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _OPAQUE_KEYS:
                continue
            sub = f"{path}.{key}" if path else key
            is_int_key = key in _INT_KEYS or key.endswith("_ms")
            if is_int_key and item is not None and (isinstance(item, bool) or not isinstance(item, int)):
                problems.append(f"{sub}={item!r} is not a JSON integer")
            _check_ints(item, sub, problems)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_ints(item, f"{path}[{i}]", problems)


# ----------------------------------------------------------------------------------------------------
# Base peer
# ----------------------------------------------------------------------------------------------------


class Peer:
    """One WebSocket connection speaking JSON text frames (§2.2)."""

    #: When true, received frames are checked for F1/F2/F6/F8 violations and an AssertionError is raised.
    strict: bool = True

    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        #: Frames passed over by expect(), expect_nothing() and outcomes(), in arrival order.
        self.skipped: list[Frame] = []
        #: Every frame received, in arrival order.
        self.received: list[Frame] = []
        #: Every frame sent with :meth:`send`, in order.
        self.sent: list[Frame] = []
        #: Extra HTTP headers of the opening handshake (e.g. a browser's ``Origin``).
        self.headers: dict[str, str] = {}
        #: The TLS context of a ``wss://`` URL (None: the system's trusted certificates).
        self.ssl: ssl.SSLContext | None = None

    # -- connection --

    async def open(self) -> None:
        """Open the WebSocket connection."""
        self.ws = await connect(
            self.url,
            max_size=None,
            ping_interval=None,
            open_timeout=5,
            additional_headers=self.headers,
            ssl=self.ssl if self.url.startswith("wss:") else None,
        )

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        if self.ws is not None:
            ws, self.ws = self.ws, None
            await ws.close()

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Wait for the server to close the socket (frames go to ``skipped``); return the close code."""
        ws = self._require_ws()
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"{self._name()}: socket still open after {timeout}s")
            try:
                data = await asyncio.wait_for(ws.recv(), remaining)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd is not None else None
            if isinstance(data, str):
                try:
                    parsed = json.loads(data)
                except ValueError:
                    parsed = {"type": None, "raw": data}
                self.skipped.append(parsed if isinstance(parsed, dict) else {"type": None, "raw": parsed})

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _require_ws(self) -> ClientConnection:
        if self.ws is None:
            raise RuntimeError(f"{self._name()}: not connected; call open() first")
        return self.ws

    def _name(self) -> str:
        return type(self).__name__

    # -- sending --

    async def send(self, frame: Frame) -> None:
        """Send ``frame`` as one text frame of JSON."""
        self.sent.append(frame)
        await self._require_ws().send(json.dumps(frame, ensure_ascii=False))

    async def send_raw(self, data: str | bytes) -> None:
        """Send ``data`` verbatim: ``str`` as a text frame, ``bytes`` as a binary frame (malformed input)."""
        await self._require_ws().send(data)

    # -- receiving --

    def _validate(self, frame: Any, raw: str) -> Frame:
        if not isinstance(frame, dict):
            raise AssertionError(f"{self._name()}: frame is not a JSON object (F1): {raw[:240]}")
        if not self.strict:
            return frame
        if not isinstance(frame.get("type"), str):
            raise AssertionError(f"{self._name()}: frame without a string 'type' (F2): {raw[:240]}")
        nulls = [key for key, value in frame.items() if value is None]
        if nulls:
            raise AssertionError(f"{self._name()}: null value for {nulls} (F6): {raw[:240]}")
        problems: list[str] = []
        _check_ints(frame, "", problems)
        if problems:
            raise AssertionError(f"{self._name()}: {'; '.join(problems)} (F8): {raw[:240]}")
        return frame

    def _on_frame(self, frame: Frame) -> None:
        """Hook called for every received frame, before it is returned or skipped."""

    async def recv(self, timeout: float = 5.0) -> Frame:
        """Return the next text frame, decoded.

        Raises ``TimeoutError`` after ``timeout`` seconds, and ``AssertionError`` on a binary frame,
        invalid JSON, a protocol-shape violation or a closed socket."""
        ws = self._require_ws()
        try:
            data = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed as exc:
            raise AssertionError(f"{self._name()}: connection closed while waiting for a frame ({exc})") from exc
        if isinstance(data, bytes):
            raise AssertionError(f"{self._name()}: received a binary frame of {len(data)} bytes (F3)")
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise AssertionError(f"{self._name()}: invalid JSON text frame: {data[:240]!r}") from exc
        frame = self._validate(parsed, data)
        self.received.append(frame)
        self._on_frame(frame)
        return frame

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> Frame:
        """Receive frames until one has ``type == type_`` and ``frame[k] == v`` for each ``k=v`` in ``match``.

        Frames passed over are appended to ``self.skipped``. Raises ``TimeoutError`` (with the passed-over
        frames in the message) if no such frame arrives within ``timeout`` seconds in total."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        passed: list[Frame] = []
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                frame = await self.recv(remaining)
            except TimeoutError:
                seen = "\n  ".join(_summary(f) for f in passed) or "(nothing)"
                raise TimeoutError(
                    f"{self._name()}: no {type_!r} frame matching {match} within {timeout}s; "
                    f"received meanwhile:\n  {seen}"
                ) from None
            except AssertionError as exc:
                raise AssertionError(f"{exc} [while waiting for {type_!r} matching {match}]") from exc
            if frame.get("type") == type_ and all(key in frame and frame[key] == value for key, value in match.items()):
                return frame
            passed.append(frame)
            self.skipped.append(frame)

    async def expect_nothing(self, timeout: float = 0.5, types: set[str] | None = None) -> None:
        """Assert that no frame (or no frame whose type is in ``types``) arrives within ``timeout`` seconds.

        Frames of other types are appended to ``self.skipped``. A socket closed by the server also fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                frame = await self.recv(remaining)
            except TimeoutError:
                return
            if types is None or frame.get("type") in types:
                raise AssertionError(f"{self._name()}: expected no frame, got {_summary(frame)}")
            self.skipped.append(frame)

    def skipped_of(self, type_: str) -> list[Frame]:
        """The skipped frames of type ``type_``, in arrival order."""
        return [f for f in self.skipped if f.get("type") == type_]


# ----------------------------------------------------------------------------------------------------
# lingua Electron node (§7, §9.3, §15.1)
# ----------------------------------------------------------------------------------------------------


def _default_services() -> list[Frame]:
    """The Electron node's usual service set: GPU ASR, NMT and semantic repair, CPU-only Piper TTS."""
    return [
        {
            "service_id": "faster-whisper-vad",
            "type": "asr",
            "device": "gpu",
            "status": "running",
            "version": "2.0.0",
        },
        {"service_id": "nmt-m2m100", "type": "nmt", "device": "gpu", "status": "running", "version": "1.0.0"},
        {"service_id": "piper-tts", "type": "tts", "device": "cpu", "status": "running", "version": "1.0.0"},
        {
            "service_id": "semantic-repair-en-zh",
            "type": "semantic",
            "device": "gpu",
            "status": "running",
            "version": "1.0.0",
        },
    ]


class LinguaNode(Peer):
    """A fake lingua Electron compute node on ``/ws/node``, sending the node's frames exactly.

    It never sends ``job_ack``, ``job_started`` or ``node_error`` (N1). The attributes ``langs``,
    ``services``, ``gpu_queue_length``, ``max_concurrent_jobs`` and ``node_id`` are read each time a frame
    is built, so a test can change them and call :meth:`heartbeat` again. Set ``node_id = None`` to act
    as a restarted node process."""

    def __init__(
        self,
        url: str,
        node_id: str | None = None,
        langs: Sequence[str] = ("zh", "en"),
        max_concurrent_jobs: int | None = None,
    ) -> None:
        super().__init__(url)
        self.node_id = node_id
        self.langs: list[str] = list(langs)
        self.max_concurrent_jobs = max_concurrent_jobs
        self.services: list[Frame] = _default_services()
        #: Sent as ``resource_usage.gpu_queue_length``; like the Electron node, the key is omitted when 0.
        self.gpu_queue_length = 1
        self.ack: Frame | None = None
        #: Every ``job_assign`` returned by :meth:`next_job`.
        self.jobs: list[Frame] = []
        #: ``job_id``s of assigned jobs not yet answered and not cancelled (drives ``running_jobs``, N11).
        self.running: set[str] = set()
        #: Every ``job_cancel`` received.
        self.cancels: list[Frame] = []

    def _name(self) -> str:
        return f"LinguaNode({self.node_id})"

    def _on_frame(self, frame: Frame) -> None:
        if frame.get("type") == "job_cancel":
            self.cancels.append(frame)
            self.running.discard(str(frame.get("job_id")))

    # -- capability frames --

    def capability_by_type(self) -> list[Frame]:
        """``capability_by_type`` as the Electron node builds it: ready only if a GPU implementation runs,
        with the extra key ``devices`` (F4)."""
        caps: dict[str, Frame] = {}
        for svc in self.services:
            cap = caps.setdefault(svc["type"], {"type": svc["type"], "ready": False, "devices": []})
            if svc["status"] == "running" and svc["device"] == "gpu":
                cap["ready"] = True
            if svc["device"] not in cap["devices"]:
                cap["devices"].append(svc["device"])
        return list(caps.values())

    def language_capabilities(self) -> Frame:
        """The node's NodeLanguageCapabilities: all three lists equal (N13)."""
        return {
            "asr_languages": list(self.langs),
            "tts_languages": list(self.langs),
            "semantic_languages": list(self.langs),
            "semantic_core_ready": len(self.langs) > 0,
        }

    def register_frame(self) -> Frame:
        """The ``node_register`` frame (§7.1) exactly as the Electron node builds it."""
        frame: Frame = {
            "type": "node_register",
            "node_id": self.node_id,
            "version": "2.0.0",
            "capability_schema_version": "2.0",
            "platform": "linux",
            "hardware": {
                "cpu_cores": 8,
                "memory_gb": 32,
                "gpus": [{"name": "NVIDIA GeForce RTX 4060", "memory_gb": 8}],
            },
            "installed_models": [],
        }
        if self.services:  # the node omits installed_services when it has none
            frame["installed_services"] = [dict(s) for s in self.services]
        frame["capability_by_type"] = self.capability_by_type()
        frame["features_supported"] = {}
        frame["accept_public_jobs"] = True
        frame["language_capabilities"] = self.language_capabilities()
        if self.max_concurrent_jobs is not None:  # Dragoman extension §18.3
            frame["max_concurrent_jobs"] = self.max_concurrent_jobs
        return frame

    def heartbeat_frame(self) -> Frame:
        """The ``node_heartbeat`` frame (§7.2) exactly as the Electron node builds it."""
        resource_usage: Frame = {
            "cpu_percent": 12.5,
            "gpu_percent": 30.0,
            "gpu_mem_percent": 41.5,
            "mem_percent": 55.25,
            "running_jobs": len(self.running),
        }
        if self.gpu_queue_length > 0:
            resource_usage["gpu_queue_length"] = self.gpu_queue_length
        frame: Frame = {
            "type": "node_heartbeat",
            "node_id": self.node_id,
            "timestamp": now_ms(),
            "resource_usage": resource_usage,
            # installed_models is omitted by the node when it has none
            "installed_services": [dict(s) for s in self.services],
            "capability_by_type": self.capability_by_type(),
            "language_capabilities": self.language_capabilities(),
        }
        if any(s["type"] == "asr" and s["status"] == "running" for s in self.services):
            frame["rerun_metrics"] = {
                "totalReruns": 0,
                "successfulReruns": 0,
                "failedReruns": 0,
                "timeoutReruns": 0,
                "qualityImprovements": 0,
            }
            frame["processing_metrics"] = {
                "serviceEfficiencies": {"faster-whisper-vad": 12.5, "nmt-m2m100": 85.0, "piper-tts": 8.25}
            }
        if self.max_concurrent_jobs is not None:  # Dragoman extension §18.3
            frame["max_concurrent_jobs"] = self.max_concurrent_jobs
        return frame

    # -- lifecycle --

    async def register(self, timeout: float = 5.0, **extra: Any) -> str:
        """Send ``node_register`` (``extra`` overrides/adds keys), wait for ``node_register_ack``,
        store and return the acknowledged ``node_id``."""
        await self.send({**self.register_frame(), **extra})
        self.ack = await self.expect("node_register_ack", timeout)
        node_id = self.ack.get("node_id")
        if not isinstance(node_id, str) or not node_id:
            raise AssertionError(f"{self._name()}: node_register_ack without node_id: {_summary(self.ack)}")
        self.node_id = node_id
        return node_id

    async def heartbeat(self, **extra: Any) -> None:
        """Send one ``node_heartbeat`` (``extra`` overrides/adds keys). There is no reply."""
        await self.send({**self.heartbeat_frame(), **extra})

    async def start(self) -> str:
        """Open, register, send the immediate post-ack heartbeat (like the node); return ``node_id``. Where
        the test's instance says how (``NODE_READY``), wait until that heartbeat has made the node eligible:
        a heartbeat has no reply, and a job cut before it lands waits for a later one (§9.1)."""
        await self.open()
        node_id = await self.register()
        await self.heartbeat()
        ready = NODE_READY.get(self.url.partition("?")[0])
        if ready is not None:
            for _ in range(100):
                if await ready(node_id):
                    break
                await asyncio.sleep(0.02)
        return node_id

    # -- jobs --

    async def next_job(self, timeout: float = 5.0) -> Frame:
        """Wait for the next ``job_assign`` and return it."""
        job = await self.expect("job_assign", timeout)
        self.jobs.append(job)
        self.running.add(str(job.get("job_id")))
        return job

    def _echo(self, job: Frame) -> Frame:
        return {
            "type": "job_result",
            "job_id": job["job_id"],
            "attempt_id": job["attempt_id"],
            "node_id": self.node_id,
            "session_id": job["session_id"],
            "utterance_index": job["utterance_index"],
        }

    async def jobs_within(self, seconds: float = 0.4) -> list[Frame]:
        """Every ``job_assign`` that arrives until ``seconds`` pass without one."""
        jobs: list[Frame] = []
        try:
            while True:
                jobs.append(await self.next_job(timeout=seconds))
        except (TimeoutError, AssertionError):
            return jobs

    async def result(
        self,
        job: Frame,
        *,
        text_asr: str | None = None,
        text_translated: str | None = None,
        tts_audio: str | bytes = "",
        success: bool = True,
        extra: Frame | None = None,
        error: Frame | None = None,
        processing_time_ms: int | None = 120,
        **more: Any,
    ) -> None:
        """Send a ``job_result`` for ``job`` shaped like the Electron node's success result (§7.3, N12).

        Defaults: ``text_asr`` = ``"asr <index>"``, ``text_translated`` = ``"<tgt_lang>: asr <index>"``,
        ``tts_format`` ``"opus"``. ``None`` for ``extra``/``error``/``processing_time_ms`` omits the key;
        ``more`` adds keys (e.g. ``asr_quality_level``, ``node_completed_at_ms``)."""
        index = job["utterance_index"]
        frame = self._echo(job)
        frame["success"] = success
        frame["text_asr"] = f"asr {index}" if text_asr is None else text_asr
        frame["text_translated"] = f"{job.get('tgt_lang')}: asr {index}" if text_translated is None else text_translated
        frame["tts_audio"] = b64(tts_audio)
        frame["tts_format"] = "opus"
        if extra is not None:
            frame["extra"] = extra
        if processing_time_ms is not None:
            frame["processing_time_ms"] = processing_time_ms
        if error is not None:
            frame["error"] = error
        frame["trace_id"] = job["trace_id"]
        frame.update(more)
        self.running.discard(str(job["job_id"]))
        await self.send(frame)

    async def empty_result(self, job: Frame, reason: str = "ASR_EMPTY") -> None:
        """Send the Electron node's empty result (N9): success, empty texts and audio, ``extra.reason``."""
        await self.result(job, text_asr="", text_translated="", tts_audio="", extra={"reason": reason})

    async def fail(
        self,
        job: Frame,
        code: str = "PROCESSING_ERROR",
        message: str = "boom",
        details: Any = None,
        processing_time_ms: int = 120,
    ) -> None:
        """Send the node's failure result (N10): ``success:false``, ``error{code, message, details?}``."""
        error: Frame = {"code": code, "message": message}
        if details is not None:
            error["details"] = details
        frame = self._echo(job)
        frame["success"] = False
        frame["processing_time_ms"] = processing_time_ms
        frame["error"] = error
        frame["trace_id"] = job["trace_id"]
        self.running.discard(str(job["job_id"]))
        await self.send(frame)

    async def partial(self, job: Frame, text: str, is_final: bool = False) -> None:
        """Send a node ``asr_partial`` (§7.4) for ``job``. (The real Electron node never does.)"""
        await self.send(
            {
                "type": "asr_partial",
                "node_id": self.node_id,
                "session_id": job["session_id"],
                "utterance_index": job["utterance_index"],
                "job_id": job["job_id"],
                "text": text,
                "is_final": is_final,
                "trace_id": job["trace_id"],
            }
        )


# ----------------------------------------------------------------------------------------------------
# lingua web client and one-shot clients (§5, §15.2, §15.3)
# ----------------------------------------------------------------------------------------------------

OUTCOME_TYPES = frozenset({"translation_result", "missing_result", "error"})


class LinguaWebClient(Peer):
    """A fake lingua session client on ``/ws/session``: the browser client's streaming path (``chunk``) and
    the one-shot path (``utterance``) of the mobile app, API gateway and test scripts."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.session_id: str | None = None
        self.trace_id: str | None = None
        self.ack: Frame | None = None
        self.seq = 0
        #: The last ``translation_result`` received (the web client echoes its ids in TTS events).
        self.last_result: Frame | None = None

    def _name(self) -> str:
        return f"LinguaWebClient({self.session_id})"

    def _on_frame(self, frame: Frame) -> None:
        if frame.get("type") == "translation_result":
            self.last_result = frame

    async def init(
        self,
        *,
        two_way: bool = True,
        lang_a: str = "zh",
        lang_b: str = "en",
        src_lang: str = "zh",
        tgt_lang: str = "en",
        trace_id: str | None = None,
        timeout: float = 5.0,
        **extra: Any,
    ) -> Frame:
        """Send ``session_init`` and wait for ``session_init_ack``; store and return it.

        ``two_way=True`` sends the web client's two-way frame of §5.1 (``src_lang "auto"``, and
        ``tgt_lang`` = ``lang_b`` as the web client does; the ``src_lang``/``tgt_lang`` arguments are
        unused). ``two_way=False`` sends its one-way frame. A fresh UUIDv4 ``trace_id`` is generated
        when none is given. ``extra`` adds or overrides keys (e.g. ``resume_session_id``, ``platform``,
        ``tenant_id``)."""
        trace = trace_id if trace_id is not None else str(uuid.uuid4())
        frame: Frame = {
            "type": "session_init",
            "client_version": "web-client-v1.0",
            "platform": "web",
            "src_lang": "auto" if two_way else src_lang,
            "tgt_lang": lang_b if two_way else tgt_lang,
            "dialect": None,
            "features": {},
            "pairing_code": None,
        }
        if two_way:
            frame.update(mode="two_way_auto", lang_a=lang_a, lang_b=lang_b, auto_langs=[lang_a, lang_b])
        else:
            frame["mode"] = "one_way"
        frame["trace_id"] = trace
        frame["tenant_id"] = None
        frame.update(extra)
        await self.send(frame)
        ack = await self.expect("session_init_ack", timeout)
        if ack.get("use_binary_frame") is not False:
            raise AssertionError(
                f"{self._name()}: session_init_ack.use_binary_frame must be false (F3): {_summary(ack)}"
            )
        session_id = ack.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise AssertionError(f"{self._name()}: session_init_ack without session_id: {_summary(ack)}")
        self.ack = ack
        self.session_id = session_id
        self.trace_id = ack.get("trace_id")
        self.seq = 0
        return ack

    def _session_frame(self, type_: str, **fields: Any) -> Frame:
        frame: Frame = {"type": type_, "session_id": self.session_id, **fields}
        if frame["session_id"] is None:
            raise RuntimeError(f"{self._name()}: no session; call init() first or pass session_id=")
        return frame

    async def chunk(self, payload: bytes | str = b"", is_final: bool = False, **extra: Any) -> None:
        """Send an ``audio_chunk`` (§5.2) with the next ``seq`` (from 0).

        ``payload`` bytes are base64-encoded (``""`` when empty, as in the web client's final frame);
        a ``str`` is sent verbatim. ``extra`` adds or overrides keys."""
        frame: Frame = {
            "type": "audio_chunk",
            "session_id": self.session_id,
            "seq": self.seq,
            "is_final": is_final,
            "payload": b64(payload),
        }
        frame.update(extra)
        if frame["session_id"] is None:
            raise RuntimeError(f"{self._name()}: no session; call init() first or pass session_id=")
        self.seq += 1
        await self.send(frame)

    async def utterance(
        self,
        index: int,
        audio: bytes | str,
        *,
        audio_format: str = "pcm16",
        sample_rate: int = 16000,
        src_lang: str = "zh",
        tgt_lang: str = "en",
        manual_cut: bool = True,
        **extra: Any,
    ) -> None:
        """Send a one-shot ``utterance`` (§5.3). ``audio`` bytes are base64-encoded; a ``str`` is verbatim.
        ``extra`` adds keys (``pipeline``, ``trace_id``, ``dialect``, ``features``, ``session_id``...)."""
        frame: Frame = {
            "type": "utterance",
            "session_id": self.session_id,
            "utterance_index": index,
            "manual_cut": manual_cut,
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "audio": b64(audio),
            "audio_format": audio_format,
            "sample_rate": sample_rate,
        }
        frame.update(extra)
        if frame["session_id"] is None:
            raise RuntimeError(f"{self._name()}: no session; call init() first or pass session_id=")
        await self.send(frame)

    async def heartbeat(self, timeout: float = 5.0) -> Frame:
        """Send ``client_heartbeat`` (§5.4) and return the next ``server_heartbeat``."""
        await self.send(self._session_frame("client_heartbeat", timestamp=now_ms()))
        return await self.expect("server_heartbeat", timeout)

    def _tts_trace_id(self, trace_id: str | None) -> str | None:
        if trace_id is not None:
            return trace_id
        if self.last_result is not None and isinstance(self.last_result.get("trace_id"), str):
            return str(self.last_result["trace_id"])
        return self.trace_id

    async def tts_started(self, group_id: str, trace_id: str | None = None) -> None:
        """Send ``tts_started`` (§5.5); ``trace_id`` defaults to the last result's, else the session's."""
        await self.send(
            self._session_frame(
                "tts_started", trace_id=self._tts_trace_id(trace_id), group_id=group_id, ts_start_ms=now_ms()
            )
        )

    async def tts_play_ended(self, group_id: str, trace_id: str | None = None) -> None:
        """Send ``tts_play_ended`` (§5.5); ``trace_id`` defaults to the last result's, else the session's."""
        await self.send(
            self._session_frame(
                "tts_play_ended", trace_id=self._tts_trace_id(trace_id), group_id=group_id, ts_end_ms=now_ms()
            )
        )

    async def close_session(self, reason: str = "user") -> None:
        """Send ``session_close`` (§5.6) as the mobile app does; then ``expect("session_close_ack")``."""
        await self.send(self._session_frame("session_close", reason=reason))

    # -- rooms (§13, §15.5): the web client's room frames, key for key --

    async def room_create(
        self, preferred_lang: str | None = None, display_name: str | None = None, timeout: float = 5.0
    ) -> tuple[Frame, list[Frame]]:
        """Send ``room_create``; return its ``room_create_ack`` and the members of the ``room_members`` that
        follows it."""
        frame: Frame = {"type": "room_create", "client_ts": now_ms()}
        if display_name is not None:
            frame["display_name"] = display_name
        if preferred_lang is not None:
            frame["preferred_lang"] = preferred_lang
        await self.send(frame)
        ack = await self.expect("room_create_ack", timeout)
        return ack, await self.members(timeout)

    async def room_join(
        self, room_code: str, preferred_lang: str | None = None, display_name: str | None = None
    ) -> None:
        """Send ``room_join`` (the reply is ``room_members`` or ``room_error``)."""
        frame: Frame = {"type": "room_join", "room_code": room_code}
        if display_name is not None:
            frame["display_name"] = display_name
        if preferred_lang is not None:
            frame["preferred_lang"] = preferred_lang
        await self.send(frame)

    async def room_leave(self, room_code: str) -> None:
        await self.send({"type": "room_leave", "room_code": room_code})

    async def raw_voice(self, room_code: str, target_session_id: str, receive: bool) -> None:
        await self.send(
            {
                "type": "room_raw_voice_preference",
                "room_code": room_code,
                "target_session_id": target_session_id,
                "receive_raw_voice": receive,
            }
        )

    async def webrtc(self, kind: str, room_code: str, to: str, payload: Any) -> None:
        """Send ``webrtc_offer`` / ``webrtc_answer`` (``payload`` is the sdp) or ``webrtc_ice`` (the candidate)."""
        key = "candidate" if kind == "webrtc_ice" else "sdp"
        await self.send({"type": kind, "room_code": room_code, "to": to, key: payload})

    async def members(self, timeout: float = 5.0, count: int | None = None) -> list[Frame]:
        """The members of the next ``room_members`` (with ``count``: the next one with that many)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.expect("room_members", max(0.01, deadline - loop.time()))
            members: list[Frame] = frame["members"]
            if count is None or len(members) == count:
                return members

    async def outcomes(self, n: int, timeout: float = 10.0) -> list[Frame]:
        """Collect the next ``n`` outcomes (``translation_result``, ``missing_result``, ``error``) in arrival
        order, within ``timeout`` seconds in total; other frames (``ui_event``, ``asr_partial``...) go to
        ``self.skipped``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: list[Frame] = []
        while len(got) < n:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                frame = await self.recv(remaining)
            except TimeoutError:
                have = "\n  ".join(_summary(f) for f in got) or "(none)"
                raise TimeoutError(
                    f"{self._name()}: got {len(got)} of {n} outcomes within {timeout}s:\n  {have}"
                ) from None
            if frame.get("type") in OUTCOME_TYPES:
                got.append(frame)
            else:
                self.skipped.append(frame)
        return got
