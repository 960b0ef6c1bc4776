"""A client for Dragoman's HTTP job API (``POST /api/v1/jobs``, ``GET /api/v1/jobs/{id}?wait=S``).

The API is for gateways that have a whole utterance and want one translation back without holding a
WebSocket. A job is made idempotent by its ``Idempotency-Key``: the same key always names the same job,
on any instance, so ``create`` retries a failed request with the *same* key and can never make two jobs.
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from typing import Any, Final

import httpx
import msgspec

from dragoman import protocol as p
from dragoman.client.endpoints import http_base, tls_context
from dragoman.errors import ApiError, ConnectError

#: The server answers a long-poll after at most this many seconds (``http_api.MAX_WAIT_S``).
MAX_WAIT_S: Final = 60.0
#: Job states before an outcome (``JobStatus.status`` on the server).
PENDING_STATES: Final = frozenset({"pending", "dispatched"})


class JobCreated(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to ``POST /api/v1/jobs`` (202)."""

    job_id: str
    status: str
    #: The key the job is bound to (the caller's, or the one ``create`` generated).
    idempotency_key: str
    #: True when the key was already bound: this is the earlier job, not a new one.
    replayed: bool = False


class JobOutput(msgspec.Struct, frozen=True, kw_only=True):
    """A resolved job's result: the node's texts and synthesized speech (base64)."""

    text_asr: str = ""
    text_translated: str = ""
    tts_audio: str = ""
    tts_format: str = "pcm16"
    extra: dict[str, Any] | None = None
    service_timings: dict[str, Any] | None = None

    def tts_bytes(self) -> bytes:
        return p.decode_base64(self.tts_audio) or b""


class JobFailure(msgspec.Struct, frozen=True, kw_only=True):
    """A failed or timed-out job's error: the node's (relayed unchanged) or Dragoman's."""

    code: str
    message: str = ""
    details: Any = None


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """``GET /api/v1/jobs/{id}``: ``status`` is pending, dispatched, completed, empty, failed or timed_out."""

    job_id: str
    status: str
    attempt: int = 0
    created_at_ms: int = 0
    node_id: str | None = None
    result: JobOutput | None = None
    error: JobFailure | None = None

    @property
    def done(self) -> bool:
        """Whether the job has its outcome (anything but pending or dispatched)."""
        return self.status not in PENDING_STATES


class ApiClient:
    """The HTTP side of one scheduler: base URL handling, transport errors and the server's JSON problems."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``key``: the client or admin key, sent as ``Authorization: Bearer``; ``ca_file``: the certificates
        that https:// trusts (default: the system's)."""
        self.base_url = http_base(url)
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {key}"} if key else None
        verify = tls_context(ca_file) if ca_file else True
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=headers, verify=verify
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> httpx.Response:
        """Send one request; raises ``ConnectError`` when the scheduler cannot be reached and ``ApiError`` with
        the server's JSON problem for an error status."""
        url = self.base_url + path
        try:
            response = await self._http.request(
                method, path, json=json, headers=headers, params=params, timeout=timeout or self.timeout
            )
        except httpx.TimeoutException:
            raise ConnectError(f"{method} {url}: timed out") from None
        except httpx.TransportError as exc:
            raise ConnectError(f"cannot reach the scheduler at {self.base_url}: {_reason(exc)}") from None
        if response.status_code >= 400:
            try:
                body: Any = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, body, method, url)
        return response

    async def get_json(self, path: str) -> Any:
        response = await self.request("GET", path)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, response.text, "GET", self.base_url + path) from None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class JobsClient(ApiClient):
    """One-shot translation jobs over HTTP.

    ::

        async with JobsClient("http://127.0.0.1:5010") as jobs:
            created = await jobs.create(pcm, src_lang="zh", tgt_lang="en", idempotency_key="req-42")
            job = await jobs.wait(created.job_id, timeout=30)
    """

    async def __aenter__(self) -> JobsClient:
        return self

    async def create(
        self,
        audio: bytes,
        *,
        src_lang: str,
        tgt_lang: str,
        audio_format: str = "pcm16",
        sample_rate: int = 16000,
        idempotency_key: str | None = None,
        mode: str | None = None,
        lang_a: str | None = None,
        lang_b: str | None = None,
        pipeline: p.PipelineConfig | None = None,
        dialect: str | None = None,
        features: p.FeatureFlags | None = None,
        trace_id: str | None = None,
        retries: int = 2,
    ) -> JobCreated:
        """Create a job for one utterance (``audio`` is raw s16le for ``"pcm16"``, Plan A for ``"opus"``).

        Without ``idempotency_key`` a fresh one is generated; either way it is returned, and a request that
        failed in transit or with 503 is retried up to ``retries`` times with that same key.
        """
        key = idempotency_key or str(uuid.uuid4())
        body: dict[str, Any] = {
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "audio": base64.b64encode(audio).decode("ascii"),
            "audio_format": audio_format,
            "sample_rate": sample_rate,
        }
        optional = {
            "mode": mode,
            "lang_a": lang_a,
            "lang_b": lang_b,
            "pipeline": msgspec.to_builtins(pipeline) if pipeline is not None else None,
            "dialect": dialect,
            "features": msgspec.to_builtins(features) if features is not None else None,
            "trace_id": trace_id,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        attempt = 0
        while True:
            try:
                response = await self.request("POST", "/api/v1/jobs", json=body, headers={"Idempotency-Key": key})
                break
            except (ConnectError, ApiError) as exc:
                retryable = isinstance(exc, ConnectError) or exc.status == 503
                if not retryable or attempt >= retries:
                    raise
                attempt += 1
                await asyncio.sleep(0.5 * attempt)
        data = response.json()
        return JobCreated(
            job_id=data["job_id"],
            status=data["status"],
            idempotency_key=key,
            replayed=response.headers.get("idempotent-replayed", "").lower() == "true",
        )

    async def get(self, job_id: str, wait: float = 0.0) -> Job:
        """The job's status; with ``wait`` > 0 the server holds the request until the job resolves or ``wait``
        seconds (at most 60) pass."""
        wait = max(0.0, min(wait, MAX_WAIT_S))
        params = {"wait": f"{wait:g}"} if wait else None
        response = await self.request("GET", f"/api/v1/jobs/{job_id}", params=params, timeout=self.timeout + wait)
        try:
            return msgspec.json.decode(response.content, type=Job, strict=False)
        except msgspec.DecodeError as exc:
            raise ApiError(response.status_code, response.text, "GET", str(response.url)) from exc

    async def wait(self, job_id: str, timeout: float = 60.0) -> Job:
        """Long-poll until the job has its outcome or ``timeout`` seconds pass; returns the last status read
        (check ``job.done``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            job = await self.get(job_id, wait=max(0.0, deadline - loop.time()))
            if job.done or loop.time() >= deadline:
                return job


def _reason(exc: httpx.TransportError) -> str:
    cause: BaseException | None = exc
    while cause is not None:  # httpx wraps the OSError that says what happened
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return os.strerror(cause.errno) if cause.errno else str(cause.strerror)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__
