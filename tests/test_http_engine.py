"""The ``http`` engine against scripted ASR/NMT/TTS services (NODE-SERVICES.md) served by uvicorn on 127.0.0.1.

The services are small Starlette apps whose answers each test scripts: normal answers, HTTP 5xx, slow answers
(timeouts), ``ok:false`` translations and empty recognitions, so the engine's results and its error mapping are
checked over real HTTP.
"""

from __future__ import annotations

import array
import asyncio
import base64
import math
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dragoman import protocol as p
from dragoman.agent import AgentConfig, EngineConfig, EngineError, NodeAgent
from dragoman.agent.engines import EngineUnavailable
from dragoman.agent.http_engine import HttpEngine
from dragoman.audio import plan_a_stats
from dragoman.opus import opus_available
from dragoman.pcm import AudioError, decode_wav, make_wav, resample_pcm16
from test_agent import FakeScheduler, job

from conftest import StartDragoman, free_port, serve_app
from peers import LinguaWebClient, pcm16

# ----------------------------------------------------------------------------------------------------
# Scripted services
# ----------------------------------------------------------------------------------------------------


@dataclass
class Script:
    """What the scripted services answer; tests change it between calls."""

    asr: dict[str, Any] = field(
        default_factory=lambda: {
            "text": " 你好世界 ",
            "language": "zh",
            "language_probability": 0.97,
            "language_probabilities": {"zh": 0.97, "en": 0.02},
            "duration": 1.0,
            "segments": [{"text": "你好世界", "start": 0.0, "end": 1.0, "no_speech_prob": 0.01}],
        }
    )
    asr_status: int = 200
    asr_delay: float = 0.0
    asr_health: str = "ok"
    nmt_ok: bool = True
    nmt_status: int = 200
    nmt_delay: float = 0.0
    nmt_health: str = "ok"
    tts_status: int = 200
    tts_delay: float = 0.0
    tts_rate: int = 22050
    tts_seconds: float = 1.0
    requests: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


def tone(rate: int, seconds: float, hz: float = 440.0) -> bytes:
    """A 16-bit sine: what a voice sounds like to a resampler."""
    n = int(rate * seconds)
    return array.array("h", (int(12000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(n))).tobytes()


def services_app(script: Script) -> Starlette:
    async def asr(request: Request) -> Response:
        script.requests["asr"].append(await request.json())
        await asyncio.sleep(script.asr_delay)
        if script.asr_status != 200:
            return JSONResponse({"detail": "asr broke"}, status_code=script.asr_status)
        return JSONResponse(script.asr)

    async def asr_health(request: Request) -> Response:
        return JSONResponse({"status": script.asr_health, "device": "cuda", "version": "fw-large-v3"})

    async def translate(request: Request) -> Response:
        body = await request.json()
        script.requests["nmt"].append(body)
        await asyncio.sleep(script.nmt_delay)
        if script.nmt_status != 200:
            return Response("nmt broke", status_code=script.nmt_status)
        if not script.nmt_ok:
            return JSONResponse({"ok": False, "text": "", "model": "m2m100", "error": "model exploded", "extra": {}})
        text = f"<{body['src_lang']}->{body['tgt_lang']}> {body['text']}"
        return JSONResponse({"ok": True, "text": text, "model": "m2m100", "error": None, "extra": {"elapsed_ms": 3}})

    async def nmt_health(request: Request) -> Response:
        return JSONResponse({"status": script.nmt_health})

    async def tts(request: Request) -> Response:
        script.requests["tts"].append(await request.json())
        await asyncio.sleep(script.tts_delay)
        if script.tts_status != 200:
            return Response("tts broke", status_code=script.tts_status)
        wav = make_wav(tone(script.tts_rate, script.tts_seconds), script.tts_rate)
        return Response(wav, media_type="audio/wav")

    async def voices(request: Request) -> Response:
        names = ["de_DE-thorsten-low", "en_US-lessac-medium", "zh_CN-huayan-medium"]
        return JSONResponse({"voices": [{"name": n, "path": f"/voices/{n}.onnx"} for n in names]})

    return Starlette(
        routes=[
            Route("/asr/utterance", asr, methods=["POST"]),
            Route("/asr/health", asr_health),
            Route("/nmt/v1/translate", translate, methods=["POST"]),
            Route("/nmt/health", nmt_health),
            Route("/tts/tts", tts, methods=["POST"]),
            Route("/tts/voices", voices),
        ]
    )


@dataclass
class Services:
    script: Script
    base: str

    def config(self, **over: Any) -> EngineConfig:
        fields: dict[str, Any] = {
            "langs": ("zh", "en"),
            "asr_url": f"{self.base}/asr",
            "nmt_url": f"{self.base}/nmt",
            "tts_url": f"{self.base}/tts",
            "asr_timeout_s": 5.0,
            "nmt_timeout_s": 5.0,
            "tts_timeout_s": 5.0,
        }
        fields.update(over)
        return EngineConfig(**fields)


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    script = Script()
    port, server, task = await serve_app(services_app(script), timeout_graceful_shutdown=1)
    yield Services(script, f"http://127.0.0.1:{port}")
    server.should_exit = True
    await asyncio.wait_for(task, 5)


MakeEngine = Callable[..., Awaitable[HttpEngine]]


@pytest.fixture
async def engine_for(services: Services) -> AsyncIterator[MakeEngine]:
    """``await engine_for(**EngineConfig overrides)``: a checked HttpEngine on the scripted services."""
    made: list[HttpEngine] = []

    async def make(**over: Any) -> HttpEngine:
        engine = HttpEngine(services.config(**over))
        made.append(engine)
        await engine.check()
        return engine

    yield make
    for engine in made:
        await engine.close()


class Partials:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bool]] = []

    async def __call__(self, text: str, is_final: bool) -> None:
        self.sent.append((text, is_final))


def samples(b64: str) -> int:
    return len(base64.b64decode(b64)) // 2


TWO_WAY = {"src_lang": "auto", "tgt_lang": "en", "mode": "two_way_auto", "lang_a": "zh", "lang_b": "en"}

# ----------------------------------------------------------------------------------------------------
# Jobs
# ----------------------------------------------------------------------------------------------------


async def test_one_way_job_runs_asr_translation_and_tts(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    partials = Partials()
    work = job(0, padding_ms=280)
    result = await engine.run(work, partials)
    assert result.text_asr == "你好世界"
    assert result.text_translated == "<zh->en> 你好世界"
    assert result.tts_format == "pcm16" and samples(result.tts_audio) == 16000  # 1 s at 22050 Hz -> 16 kHz
    timings = result.extra["service_timings"]
    assert set(timings) == {"asr_ms", "nmt_ms", "tts_ms", "total_ms"} and all(type(v) is int for v in timings.values())
    assert result.extra["language_probability"] == 0.97 and result.extra["language_probabilities"]["zh"] == 0.97
    assert "reason" not in result.extra
    assert partials.sent == [("你好世界", True)]

    [asr] = services.script.requests["asr"]
    assert (asr["job_id"], asr["src_lang"], asr["audio"], asr["audio_format"]) == (
        work.job_id,
        "zh",
        work.audio,
        "pcm16",
    )
    assert asr["sample_rate"] == 16000 and asr["padding_ms"] == 280 and asr["task"] == "transcribe"
    assert asr["condition_on_previous_text"] is False and asr["use_context_buffer"] is False
    [nmt] = services.script.requests["nmt"]
    assert (nmt["src_lang"], nmt["tgt_lang"], nmt["text"]) == ("zh", "en", "你好世界")
    [tts] = services.script.requests["tts"]
    assert tts == {"text": "<zh->en> 你好世界", "voice": "en_US-lessac-medium", "language": "en"}

    asr_service = next(s for s in engine.services() if s["type"] == "asr")
    assert asr_service == {
        "service_id": "faster-whisper-vad",
        "type": "asr",
        "device": "gpu",
        "status": "running",
        "version": "fw-large-v3",
        "engine": "http",
    }


@pytest.mark.parametrize(
    ("detected", "probabilities", "direction"),
    [
        ("en", {"en": 0.9}, ("en", "zh")),
        ("zh", {"zh": 0.9}, ("zh", "en")),
        ("zh-CN", {}, ("zh", "en")),
        ("fr", {"fr": 0.5, "zh": 0.1, "en": 0.4}, ("en", "zh")),  # neither: the likelier of lang_a/lang_b
    ],
)
async def test_two_way_job_translates_into_the_other_language(
    services: Services,
    engine_for: MakeEngine,
    detected: str,
    probabilities: dict[str, float],
    direction: tuple[str, str],
) -> None:
    engine = await engine_for()
    services.script.asr.update(language=detected, language_probabilities=probabilities)
    result = await engine.run(job(0, **TWO_WAY), Partials())
    src, tgt = direction
    assert services.script.requests["asr"][0]["src_lang"] == "auto"
    [nmt] = services.script.requests["nmt"]
    assert (nmt["src_lang"], nmt["tgt_lang"]) == (src, tgt)
    assert result.text_translated == f"<{src}->{tgt}> 你好世界"
    voice = {"en": "en_US-lessac-medium", "zh": "zh_CN-huayan-medium"}[tgt]
    assert services.script.requests["tts"][0]["voice"] == voice


async def test_two_way_job_in_a_third_language_fails(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    services.script.asr.update(language="fr", language_probabilities={"fr": 0.99})
    with pytest.raises(EngineError) as err:
        await engine.run(job(0, **TWO_WAY), Partials())
    assert err.value.code == "PROCESSING_ERROR" and "neither zh nor en" in err.value.message
    assert not services.script.requests["nmt"]


async def test_empty_recognition_is_an_empty_result(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    services.script.asr["text"] = "   "
    result = await engine.run(job(0), Partials())
    assert (result.text_asr, result.text_translated, result.tts_audio) == ("", "", "")
    assert result.extra["reason"] == "ASR_EMPTY" and "asr_ms" in result.extra["service_timings"]
    assert not services.script.requests["nmt"] and not services.script.requests["tts"]


async def test_translation_ok_false_is_a_soft_failure(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    services.script.nmt_ok = False
    result = await engine.run(job(0), Partials())
    assert result.text_asr == "你好世界" and result.text_translated == "" and result.tts_audio == ""
    assert result.extra["nmt_error"] == "model exploded" and "reason" not in result.extra
    assert not services.script.requests["tts"]


@pytest.mark.parametrize(
    ("setting", "code", "service_id"),
    [
        ({"asr_status": 500}, "MODEL_NOT_AVAILABLE", "faster-whisper-vad"),
        ({"nmt_status": 503}, "MODEL_NOT_AVAILABLE", "nmt-m2m100"),
        ({"tts_status": 500}, "MODEL_NOT_AVAILABLE", "piper-tts"),
        ({"asr_status": 422}, "PROCESSING_ERROR", None),
    ],
)
async def test_service_failures_map_to_job_errors(
    services: Services, engine_for: MakeEngine, setting: dict[str, Any], code: str, service_id: str | None
) -> None:
    engine = await engine_for()
    for key, value in setting.items():
        setattr(services.script, key, value)
    with pytest.raises(EngineError) as err:
        await engine.run(job(0), Partials())
    assert err.value.code == code, err.value
    assert err.value.timings is not None and "asr_ms" in err.value.timings
    if service_id is None:
        return
    assert set(err.value.details) == {"service_id", "service_version", "reason"}
    assert err.value.details["service_id"] == service_id and err.value.details["reason"].startswith("HTTP 5")
    failed = next(s for s in engine.services() if s["service_id"] == service_id)
    assert failed["status"] == "error" and failed["last_error"].startswith("HTTP 5")
    services.script.asr_status = services.script.nmt_status = services.script.tts_status = 200
    await engine.run(job(1), Partials())  # the service answers again: running again
    assert next(s for s in engine.services() if s["service_id"] == service_id)["status"] == "running"


@pytest.mark.parametrize(
    ("service", "code"),
    [("asr", "PROCESSING_ERROR"), ("nmt", "NMT_TIMEOUT"), ("tts", "TTS_TIMEOUT")],
)
async def test_slow_services_time_out(services: Services, engine_for: MakeEngine, service: str, code: str) -> None:
    engine = await engine_for(**{f"{service}_timeout_s": 0.2})
    setattr(services.script, f"{service}_delay", 0.5)
    with pytest.raises(EngineError) as err:
        await engine.run(job(0), Partials())
    assert err.value.code == code and "within 0.2 s" in err.value.message
    assert err.value.timings is not None and err.value.timings[f"{service}_ms"] >= 200


async def test_unreachable_service_is_model_not_available(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    engine._services["nmt"].url = f"http://127.0.0.1:{free_port()}"  # the NMT service dies after the check
    with pytest.raises(EngineError) as err:
        await engine.run(job(0), Partials())
    assert err.value.code == "MODEL_NOT_AVAILABLE" and err.value.details["service_id"] == "nmt-m2m100"
    assert "ConnectError" in err.value.details["reason"]


async def test_pipeline_flags_select_the_steps(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for()
    no_tts = await engine.run(job(0, pipeline=p.PipelineConfig(use_asr=True, use_nmt=True, use_tts=False)), Partials())
    assert no_tts.text_translated and no_tts.tts_audio == "" and not services.script.requests["tts"]

    no_nmt = await engine.run(job(1, pipeline=p.PipelineConfig(use_asr=True, use_nmt=False, use_tts=True)), Partials())
    assert no_nmt.text_translated == "" and len(services.script.requests["nmt"]) == 1
    assert services.script.requests["tts"][-1] == {"text": "你好世界", "voice": "zh_CN-huayan-medium", "language": "zh"}
    assert samples(no_nmt.tts_audio) == 16000

    same = await engine.run(job(2, tgt_lang="zh"), Partials())  # a same-language pair needs no translation
    assert same.text_translated == "你好世界" and len(services.script.requests["nmt"]) == 1

    with pytest.raises(EngineError, match="use_asr"):
        await engine.run(job(3, pipeline=p.PipelineConfig(use_asr=False, use_nmt=True, use_tts=True)), Partials())


async def test_languages_without_a_voice_get_text_only(services: Services, engine_for: MakeEngine) -> None:
    engine = await engine_for(langs=("zh", "en", "ja"), tts_voices={"en": "en_GB-alan-low"})
    result = await engine.run(job(0, tgt_lang="ja"), Partials())
    assert result.text_translated == "<zh->ja> 你好世界" and result.tts_audio == ""
    assert result.extra["tts_error"] == "no TTS voice for ja"
    await engine.run(job(1), Partials())
    assert services.script.requests["tts"][-1]["voice"] == "en_GB-alan-low"  # configured voices win


@pytest.mark.skipif(not opus_available(), reason="PyAV (av), the Opus codec, is not installed")
async def test_opus_output_is_plan_a_at_16_khz(services: Services, engine_for: MakeEngine) -> None:
    import av

    engine = await engine_for(tts_format="opus")
    result = await engine.run(job(0), Partials())
    assert result.tts_format == "opus"
    data = base64.b64decode(result.tts_audio)
    stats = plan_a_stats(data, silence_packet_max_bytes=10)
    assert stats.packets == 50 and stats.duration_ms == 1000  # 16000 samples / 320 per 20 ms packet
    decoder = av.CodecContext.create("libopus", "r")
    decoder.sample_rate = 48000  # FFmpeg's Opus decoder always outputs 48 kHz
    decoder.layout = "mono"
    pos, decoded = 0, 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 2], "little")
        decoded += sum(frame.samples for frame in decoder.decode(av.Packet(data[pos + 2 : pos + 2 + length])))
        pos += 2 + length
    assert decoded == 3 * 16000  # every packet decodes to 20 ms


# ----------------------------------------------------------------------------------------------------
# Health checks and the agent
# ----------------------------------------------------------------------------------------------------


async def test_check_requires_every_service_to_answer(services: Services) -> None:
    services.script.nmt_health = "not_ready"
    engine = HttpEngine(services.config())
    try:
        with pytest.raises(EngineUnavailable, match=r"nmt .*not_ready"):
            await engine.check()
        services.script.nmt_health = "ok"
        await engine.check()
        assert {s["status"] for s in engine.services()} == {"running"}
    finally:
        await engine.close()
    dead = HttpEngine(services.config(tts_url=f"http://127.0.0.1:{free_port()}"))
    try:
        with pytest.raises(EngineUnavailable, match=r"tts .*ConnectError"):
            await dead.check()
    finally:
        await dead.close()


async def test_agent_registers_only_once_the_services_answer(services: Services) -> None:
    services.script.asr_health = "loading"
    engine = HttpEngine(services.config())
    async with FakeScheduler() as sched:
        config = AgentConfig((sched.url,), heartbeat_interval_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.1)
        agent = NodeAgent(config, engine)
        task = asyncio.create_task(agent.run())
        try:
            with pytest.raises(TimeoutError):
                await sched.accept(timeout=0.4)
            services.script.asr_health = "ok"
            link = await sched.accept(timeout=3)
            reg = await link.register()
            ids = {s["service_id"]: s["status"] for s in reg["installed_services"]}
            assert ids == {"faster-whisper-vad": "running", "nmt-m2m100": "running", "piper-tts": "running"}
            caps = {c["type"]: c["ready"] for c in reg["capability_by_type"]}
            assert caps == {"asr": True, "nmt": False, "tts": False}  # only the ASR service said it runs on a GPU
        finally:
            agent.stop()
            await asyncio.wait_for(task, 5)


async def test_utterance_through_dragoman_and_the_http_engine(services: Services, dragoman: StartDragoman) -> None:
    d = await dragoman()
    engine = HttpEngine(services.config())
    agent = NodeAgent(AgentConfig(scheduler_urls=(d.node_url,), heartbeat_interval_s=0.2), engine)
    task = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.registered.wait(), 5)
        async with LinguaWebClient(d.session_url) as client:
            await client.init(two_way=False, src_lang="zh", tgt_lang="en")
            await client.utterance(0, pcm16(500))
            [result] = await client.outcomes(1)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 5)
    assert result["type"] == "translation_result", result
    assert (result["text_asr"], result["text_translated"]) == ("你好世界", "<zh->en> 你好世界")
    assert result["tts_format"] == "pcm16" and samples(result["tts_audio"]) == 16000
    assert set(result["service_timings"]) == {"asr_ms", "nmt_ms", "tts_ms", "total_ms"}
    assert result["extra"]["language_probability"] == 0.97
    assert "detected_src_lang" not in result["extra"]  # a diagnostic key: not forwarded to clients


# ----------------------------------------------------------------------------------------------------
# Audio conversion
# ----------------------------------------------------------------------------------------------------


def test_tts_wav_is_resampled_to_16_khz() -> None:
    wav = make_wav(tone(22050, 1.0), 22050)
    out = array.array("h", decode_wav(wav).pcm)
    assert len(out) == 16000
    # Downsampling averages the input over each output sample's span (22050/16000 input samples), so output j
    # is the tone at the middle of that span, (j + 0.5) / 16000 s less half an input sample.
    expected = [12000 * math.sin(2 * math.pi * 440 * ((j + 0.5) / 16000 - 0.5 / 22050)) for j in range(16000)]
    assert max(abs(a - b) for a, b in zip(out, expected, strict=True)) < 200  # the box filter's error

    assert len(decode_wav(make_wav(tone(22050, 0.5), 22050)).pcm) // 2 == 8000
    assert len(resample_pcm16(tone(8000, 0.25), 8000)) // 2 == 4000
    assert len(resample_pcm16(tone(24000, 0.1), 24000)) // 2 == 1600
    same = tone(16000, 0.1)
    assert resample_pcm16(same, 16000) == same
    ramp = array.array("h", [0, 300, 600, 900]).tobytes()  # upsampling interpolates linearly, keeping the last
    assert array.array("h", resample_pcm16(ramp, 8000)).tolist() == [0, 150, 300, 450, 600, 750, 900, 900]
    ramp = array.array("h", [0, 100, 200, 300, 400, 500]).tobytes()  # halving the rate averages pairs
    assert array.array("h", resample_pcm16(ramp, 32000)).tolist() == [50, 250, 450]

    stereo = make_wav(array.array("h", [100, 300] * 160).tobytes(), 16000, channels=2)
    assert set(array.array("h", decode_wav(stereo).pcm)) == {200}
    with pytest.raises(AudioError, match="unreadable WAV file"):
        decode_wav(b"RIFF....not a wav")
