"""The ``http`` engine: drives lingua's ASR, translation and TTS services over HTTP (NODE-SERVICES.md).

Per job: ASR (``POST {asr}/utterance``) → translation (``POST {nmt}/v1/translate``) → speech synthesis
(``POST {tts}/tts``), each step only if ``job.pipeline`` asks for it. A two-way job (``mode:"two_way_auto"``
with ``lang_a`` and ``lang_b``) is recognised with the job's source (``"auto"``) and translated into whichever
of the two languages the speaker did not use.

Failure mapping, chosen so that the scheduler's reaction fits the cause (PROTOCOL.md §11.6, N10):

============================================  =======================================================
cause                                         ``job_result``
============================================  =======================================================
any service unreachable, or HTTP 5xx          ``MODEL_NOT_AVAILABLE`` with details {service_id,
                                              service_version, reason}: Dragoman excludes this node for
                                              the pair for a while and fails the job over elsewhere
ASR timeout                                   ``PROCESSING_ERROR`` (the audio may be the cause)
translation timeout / TTS timeout             ``NMT_TIMEOUT`` / ``TTS_TIMEOUT`` (retryable elsewhere)
HTTP 4xx, or an unreadable ASR answer         ``PROCESSING_ERROR`` (a request the service rejects)
ASR text empty                                empty result, ``extra.reason:"ASR_EMPTY"``
two-way job in neither language               ``PROCESSING_ERROR`` (as the Electron node)
``pipeline.use_asr`` false                    ``PROCESSING_ERROR``: without ASR this node has no text
translation ``ok:false`` or unreadable        soft failure: success, ``text_translated:""`` and no TTS
TTS voice missing, WAV unusable, no TTS URL   soft failure: success, ``tts_audio:""``
============================================  =======================================================

Soft failures keep ``success:true`` like the Electron node (N10), and put the reason in ``extra.nmt_error`` /
``extra.tts_error`` (diagnostic keys the scheduler does not forward). The TTS WAV is resampled to 16 kHz and
sent as ``pcm16`` (default) or Plan A ``opus`` (needs PyAV, the ``av`` package, which bundles libopus).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

import httpx

from dragoman.agent.engines import (
    MODEL_NOT_AVAILABLE,
    NMT_TIMEOUT,
    PROCESSING_ERROR,
    TTS_TIMEOUT,
    Engine,
    EngineConfig,
    EngineError,
    EngineResult,
    EngineUnavailable,
    PartialSink,
)
from dragoman.langs import normalize
from dragoman.opus import encode_plan_a, opus_available, plan_a
from dragoman.pcm import AudioError, decode_wav
from dragoman.protocol import JobAssign

log = logging.getLogger(__name__)

#: lingua's service ids (overridable with ``--engine-opt asr_service_id=...`` etc.).
DEFAULT_SERVICE_IDS: Final = {"asr": "faster-whisper-vad", "nmt": "nmt-m2m100", "tts": "piper-tts"}
#: lingua ships these Piper voices; used when the TTS service lists no better match.
DEFAULT_VOICES: Final = {"en": "en_US-lessac-medium", "zh": "zh_CN-huayan-medium"}
TIMEOUT_CODES: Final = {"asr": PROCESSING_ERROR, "nmt": NMT_TIMEOUT, "tts": TTS_TIMEOUT}
HEALTH_TIMEOUT_S: Final = 5.0
TTS_FORMATS: Final = ("pcm16", "opus")


@dataclass
class _Service:
    """One configured service and what the node last learned about it (sent in ``installed_services``)."""

    kind: str
    url: str
    service_id: str
    version: str = "unknown"
    device: str = "cpu"
    status: str = "stopped"  # until the first health check passes
    last_error: str | None = None

    def entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "service_id": self.service_id,
            "type": self.kind,
            "device": self.device,
            "status": self.status,
            "version": self.version,
            "engine": "http",
        }
        if self.last_error:
            entry["last_error"] = self.last_error
        return entry

    def failed(self, reason: str) -> None:
        if self.status != "error":
            log.warning("%s service %s: %s", self.kind, self.url, reason)
        self.status, self.last_error = "error", reason

    def healthy(self) -> None:
        if self.status == "error":
            log.info("%s service %s answers again", self.kind, self.url)
        self.status, self.last_error = "running", None


class HttpEngine(Engine):
    """Runs jobs on lingua's ASR/NMT/TTS HTTP services. ``asr_url`` and ``nmt_url`` are required; without
    ``tts_url`` results carry no audio."""

    name = "http"

    def __init__(self, config: EngineConfig) -> None:
        if not config.asr_url or not config.nmt_url:
            raise ValueError("the http engine needs --asr-url and --nmt-url")
        if config.tts_format not in TTS_FORMATS:
            raise ValueError(f"--tts-format must be one of {', '.join(TTS_FORMATS)}, got {config.tts_format!r}")
        if config.tts_format == "opus" and not opus_available():
            raise ValueError("--tts-format opus needs PyAV (libopus): pip install av")
        self.config = config
        ids = {kind: config.options.get(f"{kind}_service_id", default) for kind, default in DEFAULT_SERVICE_IDS.items()}
        self._services: dict[str, _Service] = {
            "asr": _Service("asr", config.asr_url.rstrip("/"), ids["asr"]),
            "nmt": _Service("nmt", config.nmt_url.rstrip("/"), ids["nmt"]),
        }
        if config.tts_url:
            self._services["tts"] = _Service("tts", config.tts_url.rstrip("/"), ids["tts"])
        self._voices: dict[str, str] = {normalize(k): v for k, v in config.tts_voices.items()}
        # trust_env=False: the services are local, and a proxy from the environment must not intercept them.
        self._client = httpx.AsyncClient(trust_env=False, timeout=None)

    # -- Engine interface --

    def languages(self) -> list[str]:
        return list(self.config.langs)

    def services(self) -> list[dict[str, Any]]:
        return [svc.entry() for svc in self._services.values()]

    async def close(self) -> None:
        await self._client.aclose()

    async def check(self) -> None:
        """Every configured service must answer its health endpoint: ``GET {asr}/health`` and
        ``GET {nmt}/health`` with status ``ok``, ``GET {tts}/voices`` with a voice list (which also picks the
        voice of each language)."""
        problems = []
        for svc in self._services.values():
            path = "/voices" if svc.kind == "tts" else "/health"
            try:
                resp = await self._client.get(svc.url + path, timeout=HEALTH_TIMEOUT_S)
                body = resp.json() if resp.status_code == 200 else None
            except (httpx.HTTPError, ValueError) as exc:
                problems.append(f"{svc.kind} {svc.url}{path}: {type(exc).__name__} {exc}".rstrip())
                svc.failed(f"health check: {type(exc).__name__}")
                continue
            if not isinstance(body, dict):
                problems.append(f"{svc.kind} {svc.url}{path}: HTTP {resp.status_code}")
                svc.failed(f"health check: HTTP {resp.status_code}")
                continue
            if svc.kind == "tts":
                voices = body.get("voices")
                if not isinstance(voices, list):
                    problems.append(f"tts {svc.url}{path}: no voice list")
                    svc.failed("health check: no voice list")
                    continue
                self._pick_voices([str(v.get("name")) for v in voices if isinstance(v, dict) and v.get("name")])
            else:
                status = body.get("status", "ok")
                if status != "ok":
                    problems.append(f"{svc.kind} {svc.url}{path}: status {status!r}")
                    svc.failed(f"health check: status {status!r}")
                    continue
            version = body.get("version")
            if isinstance(version, str) and version:
                svc.version = version
            device = str(body.get("device", "")).lower()
            svc.device = "gpu" if device.startswith(("cuda", "gpu")) else "cpu"
            svc.healthy()
        if problems:
            raise EngineUnavailable("; ".join(problems))

    def _pick_voices(self, names: list[str]) -> None:
        """Choose a voice per language: configured ones first, then lingua's defaults if the service has them,
        then the first voice whose name starts with the language (Piper names voices ``en_US-lessac-medium``)."""
        for lang in self.config.langs:
            key = normalize(lang)
            if key in self._voices:
                continue
            default = DEFAULT_VOICES.get(key)
            if default in names:
                self._voices[key] = default
                continue
            match = next((n for n in names if normalize(n.split("-")[0].split("_")[0]) == key), None)
            if match is not None:
                self._voices[key] = match
            else:
                log.warning("no TTS voice for language %s: its results will carry no audio", lang)

    # -- jobs --

    async def run(self, job: JobAssign, partial: PartialSink) -> EngineResult:
        started = time.monotonic()
        timings: dict[str, int] = {}
        extra: dict[str, Any] = {"service_timings": timings}
        if not job.pipeline.use_asr:
            raise EngineError(PROCESSING_ERROR, "pipeline.use_asr is false: this node has no other source of text")

        asr = await self._asr(job, timings)
        text = asr.get("text")
        text = text.strip() if isinstance(text, str) else ""
        if isinstance(asr.get("language_probability"), int | float):
            extra["language_probability"] = float(asr["language_probability"])
        probabilities = asr.get("language_probabilities")
        if isinstance(probabilities, dict):
            extra["language_probabilities"] = {
                str(k): float(v) for k, v in probabilities.items() if isinstance(v, int | float)
            }
        detected = asr.get("language") if isinstance(asr.get("language"), str) else None
        if detected:
            extra["detected_src_lang"] = detected
        if not text:
            timings["total_ms"] = _ms(started)
            return EngineResult.empty("ASR_EMPTY", **extra)
        await partial(text, True)

        src, tgt = self._direction(job, detected, extra.get("language_probabilities") or {}, timings)
        translated = ""
        if job.pipeline.use_nmt:
            if normalize(src) == normalize(tgt):
                translated = text  # a same-language pair needs no translation
            else:
                translated = await self._translate(job, text, src, tgt, timings, extra)

        tts_audio = ""
        speak, speak_lang = (translated, tgt) if job.pipeline.use_nmt else (text, src)
        if job.pipeline.use_tts and speak:
            tts_audio = await self._speak(speak, speak_lang, timings, extra)

        timings["total_ms"] = _ms(started)
        return EngineResult(
            text_asr=text,
            text_translated=translated,
            tts_audio=tts_audio,
            tts_format=self.config.tts_format,
            extra=extra,
        )

    @staticmethod
    def _direction(
        job: JobAssign, detected: str | None, probabilities: Mapping[str, float], timings: dict[str, int]
    ) -> tuple[str, str]:
        """(source, target) languages of the job. Two-way: the detected language is the source, the other one
        of lang_a/lang_b the target; if ASR detected a third language, the likelier of the two wins, and with
        no probability for either the job fails like on the Electron node."""
        src = job.src_lang if normalize(job.src_lang) != "auto" else (detected or "auto")
        if not (job.mode == "two_way_auto" and job.lang_a and job.lang_b):
            return src, job.tgt_lang
        a, b = job.lang_a, job.lang_b
        if normalize(src) == normalize(a):
            return a, b
        if normalize(src) == normalize(b):
            return b, a
        by_lang: dict[str, float] = {}
        for code, prob in probabilities.items():
            key = normalize(code)
            by_lang[key] = max(by_lang.get(key, 0.0), prob)
        pa, pb = by_lang.get(normalize(a), 0.0), by_lang.get(normalize(b), 0.0)
        if pa == pb == 0.0:
            raise EngineError(
                PROCESSING_ERROR, f"detected language {src!r} is neither {a} nor {b}", timings=dict(timings)
            )
        return (a, b) if pa >= pb else (b, a)

    async def _asr(self, job: JobAssign, timings: dict[str, int]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "job_id": job.job_id,
            "src_lang": job.src_lang,
            "tgt_lang": job.tgt_lang,
            "audio": job.audio,
            "audio_format": job.audio_format,
            "sample_rate": job.sample_rate,
            "trace_id": job.trace_id,
            "task": "transcribe",
            # The service keeps context process-wide, not per session: a node must not use it (NODE-SERVICES.md).
            "condition_on_previous_text": False,
            "use_context_buffer": False,
            "use_text_context": False,
        }
        if job.padding_ms is not None:
            body["padding_ms"] = job.padding_ms
        resp = await self._post("asr", "/utterance", body, self.config.asr_timeout_s, timings)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise EngineError(PROCESSING_ERROR, "ASR service answered without a JSON object", timings=dict(timings))
        return data

    async def _translate(
        self, job: JobAssign, text: str, src: str, tgt: str, timings: dict[str, int], extra: dict[str, Any]
    ) -> str:
        body = {"src_lang": src, "tgt_lang": tgt, "text": text, "context_text": None, "num_candidates": None}
        resp = await self._post("nmt", "/v1/translate", body, self.config.nmt_timeout_s, timings)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or data.get("ok") is not True or not isinstance(data.get("text"), str):
            reason = data.get("error") if isinstance(data, dict) else None
            extra["nmt_error"] = str(reason or "translation service answered without a translation")
            log.warning("job %s: translation %s->%s failed softly: %s", job.job_id, src, tgt, extra["nmt_error"])
            return ""
        translated: str = data["text"].strip()
        return translated

    async def _speak(self, text: str, lang: str, timings: dict[str, int], extra: dict[str, Any]) -> str:
        if "tts" not in self._services:
            extra["tts_error"] = "no TTS service configured"
            return ""
        voice = self._voices.get(normalize(lang))
        if voice is None:
            extra["tts_error"] = f"no TTS voice for {lang}"
            return ""
        resp = await self._post(
            "tts", "/tts", {"text": text, "voice": voice, "language": lang}, self.config.tts_timeout_s, timings
        )
        try:
            data = (await asyncio.to_thread(decode_wav, resp.content, "TTS answer")).pcm  # 16 kHz mono s16le
            if self.config.tts_format == "opus":
                data = plan_a(await asyncio.to_thread(encode_plan_a, data))
        except AudioError as exc:
            extra["tts_error"] = str(exc)
            log.warning("TTS audio unusable: %s", exc)
            return ""
        return base64.b64encode(data).decode("ascii")

    async def _post(
        self, kind: str, path: str, body: dict[str, Any], timeout: float, timings: dict[str, int]
    ) -> httpx.Response:
        """POST to a service, bounded by a total deadline; maps transport failures to job errors (see the
        table above) and records the step's duration as ``<kind>_ms``."""
        svc = self._services[kind]
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                resp = await self._client.post(svc.url + path, json=body)
        except (TimeoutError, httpx.TimeoutException):
            timings[f"{kind}_ms"] = _ms(started)
            raise EngineError(
                TIMEOUT_CODES[kind], f"{kind} service did not answer within {timeout:g} s", timings=dict(timings)
            ) from None
        except httpx.HTTPError as exc:
            timings[f"{kind}_ms"] = _ms(started)
            self._unavailable(svc, f"{type(exc).__name__}: {exc}".rstrip(": "), timings)
        timings[f"{kind}_ms"] = _ms(started)
        if resp.status_code >= 500:
            self._unavailable(svc, f"HTTP {resp.status_code}", timings)
        if resp.status_code >= 400:
            raise EngineError(
                PROCESSING_ERROR,
                f"{kind} service rejected the request: HTTP {resp.status_code} {resp.text[:200]}",
                timings=dict(timings),
            )
        svc.healthy()
        return resp

    @staticmethod
    def _unavailable(svc: _Service, reason: str, timings: dict[str, int]) -> NoReturn:
        svc.failed(reason)
        raise EngineError(
            MODEL_NOT_AVAILABLE,
            f"{svc.kind} service {svc.service_id} is not available: {reason}",
            details={"service_id": svc.service_id, "service_version": svc.version, "reason": reason},
            timings=dict(timings),
        )


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
