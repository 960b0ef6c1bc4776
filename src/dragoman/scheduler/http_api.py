"""The HTTP API: one-shot jobs for API gateways (idempotent by ``Idempotency-Key``) and stats.

A job made here goes through the same create-or-get script as a session's: the key is the request id,
bound to the job in the store with a TTL, so the same key sent again — sequentially, concurrently, to
any instance — returns the same job and exactly one ``job_assign`` goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal, cast

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dragoman import protocol as p
from dragoman.scheduler import jobs
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.store import JobRecord
from dragoman.scheduler.store_errors import store_unavailable

MAX_WAIT_S = 60.0
AUDIO_FORMATS = ("opus", "pcm16")


class JobRequest(msgspec.Struct, forbid_unknown_fields=False):
    """Body of ``POST /api/v1/jobs``."""

    src_lang: str
    tgt_lang: str
    audio: str  # base64
    audio_format: str = "pcm16"  # "pcm16" (s16le mono) or "opus" (Plan A)
    sample_rate: p.U32 = 16000
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    pipeline: p.PipelineConfig | None = None
    dialect: str | None = None
    features: p.FeatureFlags | None = None
    trace_id: str | None = None


JobState = Literal["pending", "dispatched", "moving", "completed", "empty", "failed", "timed_out"]


class JobResultBody(msgspec.Struct, omit_defaults=True):
    """A completed (or empty) job's result: the node's texts and audio."""

    text_asr: str
    text_translated: str
    tts_audio: str  # base64
    tts_format: str
    extra: dict[str, Any] | None = None
    service_timings: dict[str, Any] | None = None


class JobFailure(msgspec.Struct):
    """A failed or timed-out job's error."""

    code: str
    message: str
    details: Any = None


class JobStatus(msgspec.Struct, omit_defaults=True):
    """Body of ``GET /api/v1/jobs/{job_id}``: status, then the result or the error once resolved."""

    job_id: str
    status: JobState
    attempt: int
    created_at_ms: int
    node_id: str | None = None
    result: JobResultBody | None = None
    error: JobFailure | None = None


Endpoint = Callable[[Request], Awaitable[Response]]


def store_guarded(scheduler: Scheduler, endpoint: Endpoint) -> Endpoint:
    """The endpoint, answering ``503 SCHEDULER_DEPENDENCY_DOWN`` while the store is unavailable instead of a
    500 with a traceback; the scheduler logs the outage once, and ``/health`` answers 503 until it ends."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            scheduler.store_failed(exc)
            response = _problem(503, "SCHEDULER_DEPENDENCY_DOWN", "the store is unavailable; retry later")
            response.headers["Retry-After"] = "1"
            return response

    return guarded


def _problem(status: int, error: str, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status)


_PATH = re.compile(r"at `\$\.?([^`]*)`")  # "Expected `str`, got `int` - at `$.src_lang`"
_MISSING = re.compile(r"missing required field `([^`]*)`")  # "Object missing required field `audio`"


def _invalid(exc: msgspec.ValidationError) -> JSONResponse:
    """422 naming the offending field, as a dotted path from the body's top level."""
    text = str(exc)
    path = _PATH.search(text)
    missing = _MISSING.search(text)
    parts = [m.group(1) for m in (path, missing) if m and m.group(1)]
    return _problem(422, "invalid_request", text, ".".join(parts) or None)


_decode_request = msgspec.json.Decoder(JobRequest)


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read as it arrives and refused as soon as it is over ``limit`` bytes: by its Content-Length
    before reading any of it, else (chunked) by counting."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge
    return bytes(body)


async def _read_request(request: Request, limit: int) -> JobRequest | JSONResponse:
    try:
        body = await _read_body(request, limit)
    except _BodyTooLarge:
        return _problem(413, "payload_too_large", f"the body is larger than max_http_body_bytes ({limit} bytes)")
    try:
        job = p.decode_json(_decode_request, body)
    except msgspec.ValidationError as exc:
        return _invalid(exc)
    except msgspec.DecodeError as exc:
        return _problem(400, "invalid_json", f"the body is not valid JSON: {exc}")
    audio = p.decode_base64(job.audio)
    if audio is None:
        return _problem(422, "invalid_request", "audio is not valid base64", "audio")
    if not audio:
        return _problem(422, "invalid_request", "audio is empty", "audio")
    if job.audio_format not in AUDIO_FORMATS:
        return _problem(422, "invalid_request", f"audio_format must be one of {AUDIO_FORMATS}", "audio_format")
    if job.sample_rate <= 0:
        return _problem(422, "invalid_request", "sample_rate must be positive", "sample_rate")
    return job


def _scope(request: Request) -> str:
    """The name of the client key of the call ('' without client keys): its jobs belong to it."""
    return str(getattr(request.state, "client_scope", ""))


def _scope_tag(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:12]


def _api_session(scope: str, idempotency_key: str) -> str:
    """The session name of an HTTP job: its ``Idempotency-Key`` within its client key's scope, so that another
    key's request with the same Idempotency-Key is another job."""
    if not scope:
        return "api-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:16]
    return f"api-{_scope_tag(scope)}-" + hashlib.sha256(f"{scope}\n{idempotency_key}".encode()).hexdigest()[:16]


def _readable(record: JobRecord, scope: str) -> bool:
    """A job is read only under the client key that created it (anyone may read any job without client keys)."""
    return not scope or record.session.startswith(f"api-{_scope_tag(scope)}-")


def routes(scheduler: Scheduler) -> list[Route]:
    settings = scheduler.settings
    store = scheduler.store

    async def create_job(request: Request) -> Response:
        key = request.headers.get("idempotency-key") or p.new_uuid()
        if len(key) > 255:
            return _problem(400, "invalid_header", "Idempotency-Key is longer than 255 characters", "Idempotency-Key")
        job = await _read_request(request, settings.max_http_body_bytes)
        if isinstance(job, JSONResponse):
            return job
        session = _api_session(_scope(request), key)
        turn = p.new_uuid()
        assign = p.JobAssign(
            attempt_id=0,
            job_id=p.new_job_id(),
            session_id=session,
            utterance_index=0,
            src_lang=job.src_lang,
            tgt_lang=job.tgt_lang,
            pipeline=job.pipeline or p.DEFAULT_PIPELINE,
            audio=job.audio,
            audio_format=job.audio_format,
            sample_rate=job.sample_rate,
            trace_id=job.trace_id or p.new_uuid(),
            dialect=job.dialect,
            features=job.features,
            mode=job.mode,
            lang_a=job.lang_a,
            lang_b=job.lang_b,
            enable_streaming_asr=True,
            partial_update_interval_ms=1000,
            is_manual_cut=True,
            turn_id=turn,
        )
        # The key alone names the slot: tgt "api".
        spec = jobs.job_spec(assign, tgt="api", owner="", result_ttl_ms=settings.api_result_ttl_ms)
        created = await scheduler.create_job(spec)
        headers = {"Location": f"/api/v1/jobs/{created.job_id}"}
        if created.status == "existing":
            headers["Idempotent-Replayed"] = "true"
        return JSONResponse({"job_id": created.job_id, "status": created.state}, status_code=202, headers=headers)

    async def get_job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        try:
            wait = float(request.query_params.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if not math.isfinite(wait):
            return _problem(422, "invalid_request", "wait must be a number of seconds", "wait")
        wait = min(wait, MAX_WAIT_S)
        deadline = time.monotonic() + max(wait, 0.0)
        while True:
            # Waiting before reading: an outcome that lands while the job is read still wakes this poll.
            woken = scheduler.wait_for(job_id)
            try:
                record = await store.get_job(job_id)
                if record is None or not _readable(record, _scope(request)):
                    return _problem(404, "not_found", f"no job {job_id}")
                remaining = deadline - time.monotonic()
                if record.resolved or remaining <= 0:
                    return Response(msgspec.json.encode(_status(record)), media_type="application/json")
                # Woken by this instance's outcome, or re-read each second for one resolved elsewhere.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken, timeout=min(remaining, 1.0))
            finally:
                woken.cancel()  # no longer waited for: forgotten by the scheduler

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_document())

    return [
        Route("/api/v1/jobs", store_guarded(scheduler, create_job), methods=["POST"]),
        Route("/api/v1/jobs/{job_id}", store_guarded(scheduler, get_job), methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


def _status(record: JobRecord) -> JobStatus:
    state = record.state
    status = JobStatus(
        job_id=record.job_id,
        status=cast(JobState, state),
        attempt=record.attempt,
        created_at_ms=record.created_ms,
        node_id=record.node or None,
    )
    outcome = record.detail
    if state in ("completed", "empty"):
        r = msgspec.json.decode(outcome, type=p.JobResult)
        status.result = JobResultBody(
            text_asr=r.text_asr or "",
            text_translated=r.text_translated or "",
            tts_audio=r.tts_audio or "",
            tts_format=r.tts_format or "pcm16",
            extra=r.forwarded_extra(),
            service_timings=r.service_timings(),
        )
    elif state == "failed" and outcome.startswith("{"):
        error = msgspec.json.decode(outcome, type=p.JobResult).error
        status.error = (
            JobFailure(error.code, error.message, error.details) if error else JobFailure("PROCESSING_ERROR", "")
        )
    elif state == "failed":
        status.error = JobFailure(outcome, "no node available for this language pair")
    elif state == "timed_out":
        status.error = JobFailure("JOB_TIMEOUT", f"no result in time ({outcome})")
    return status


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the HTTP API (schemas generated from the structs above): every response
    code each path answers, 503 included (the store is down), and the headers of a created job."""
    (request_schema, status_schema), components = msgspec.json.schema_components(
        [JobRequest, JobStatus], ref_template="#/components/schemas/{name}"
    )
    components["Problem"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": "string"},
        },
        "required": ["error", "message"],
    }
    components["Trace"] = {
        "type": "object",
        "description": "A job's timeline: steps (e = event, t = unix ms) and the attempts, outcome and delivery",
        "properties": {
            "job_id": {"type": "string"},
            "steps": {"type": "array", "items": {"type": "object", "required": ["e", "t"]}},
            "attempts": {"type": "array", "items": {"type": "object"}},
            "cut": {"type": "object"},
            "outcome": {"type": "object"},
            "delivered_ms": {"type": "integer"},
        },
        "required": ["steps", "attempts"],
    }
    descriptions = {
        400: "malformed request (invalid JSON, a bad header)",
        404: "no such job or session (or it expired)",
        413: "the body is larger than max_http_body_bytes",
        422: "a field is invalid (named in `field`)",
        503: "the store is unavailable (SCHEDULER_DEPENDENCY_DOWN); retry after Retry-After seconds",
    }

    def errors(*codes: int) -> dict[str, Any]:
        ref = {"$ref": "#/components/schemas/Problem"}
        responses: dict[str, Any] = {}
        for code in codes:
            responses[str(code)] = {"description": descriptions[code], "content": {"application/json": {"schema": ref}}}
            if code == 503:
                responses[str(code)]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
        return responses

    def path_id(name: str) -> dict[str, Any]:
        return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}

    def trace_op(summary: str, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "parameters": [path_id(name)],
                "responses": {
                    "200": {"description": "the trace", "content": {"application/json": {"schema": schema}}},
                    **errors(404, 503),
                },
            }
        }

    job_ref = {"$ref": "#/components/schemas/Trace"}
    session_trace = {
        "type": "object",
        "properties": {"session_id": {"type": "string"}, "utterances": {"type": "array", "items": job_ref}},
        "required": ["session_id", "utterances"],
    }
    created = {
        "type": "object",
        "properties": {"job_id": {"type": "string"}, "status": {"type": "string"}},
        "required": ["job_id", "status"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Dragoman HTTP API", "version": "1.0"},
        "paths": {
            "/api/v1/jobs": {
                "post": {
                    "summary": "Create a one-shot translation job (idempotent by Idempotency-Key)",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": request_schema}},
                    },
                    "responses": {
                        "202": {
                            "description": "accepted, or the job an earlier request with the same key created",
                            "headers": {
                                "Location": {
                                    "description": "the job's URL (GET it for the outcome)",
                                    "schema": {"type": "string"},
                                },
                                "Idempotent-Replayed": {
                                    "description": "present (true) when the key was seen before: the same job",
                                    "schema": {"type": "string", "enum": ["true"]},
                                },
                            },
                            "content": {"application/json": {"schema": created}},
                        },
                        **errors(400, 413, 422, 503),
                    },
                }
            },
            "/api/v1/jobs/{job_id}": {
                "get": {
                    "summary": "A job's status and, once resolved, its result or error",
                    "parameters": [
                        path_id("job_id"),
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "description": "long-poll: seconds to wait for the outcome (larger values are capped)",
                            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S, "default": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the job",
                            "content": {"application/json": {"schema": status_schema}},
                        },
                        **errors(404, 422, 503),
                    },
                }
            },
            "/api/v1/jobs/{job_id}/trace": trace_op(
                "A job's timeline, from its cut to its delivery", "job_id", job_ref
            ),
            "/api/v1/sessions/{session_id}/trace": trace_op(
                "The timeline of each utterance of a session", "session_id", session_trace
            ),
            "/api/v1/traces/{trace_id}": trace_op(
                "The timeline of each utterance that carries a trace id (a session's, or an utterance's own)",
                "trace_id",
                session_trace,
            ),
        },
        "components": {"schemas": components},
    }
