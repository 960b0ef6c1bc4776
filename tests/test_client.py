"""The client library and the ``translate``/``status`` commands, against a real instance and a scripted lingua node."""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import io
import json
import math
import os
import struct
import sys
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.server import ServerConnection, serve

from dragoman import protocol as p
from dragoman.audio import plan_a_stats
from dragoman.client import (
    ApiError,
    AudioError,
    Backoff,
    ConnectError,
    ConnectionLostError,
    JobsClient,
    Reconnected,
    SessionClient,
    SessionConfig,
    decode_plan_a,
    encode_plan_a,
    load_audio,
    parse_plan_a,
    plan_a,
    plan_a_chunks,
)
from dragoman.client.output import JsonReporter
from dragoman.client.translate import TranslateOptions, translate
from dragoman.opus import CHUNK_PACKETS, PACKET_SAMPLES, packet_duration_ms
from dragoman.pcm import SAMPLE_RATE

from conftest import StartDragoman, free_port
from peers import LinguaNode

# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------


def sine(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0, amp: float = 0.5) -> list[float]:
    return [amp * math.sin(2 * math.pi * freq * i / rate) for i in range(round(seconds * rate))]


def write_sine_wav(
    path: Path,
    seconds: float = 1.5,
    rate: int = SAMPLE_RATE,
    channels: int = 1,
    width: int = 2,
    invert_second_channel: bool = False,
) -> Path:
    """A WAV of a 440 Hz sine at half scale, written with ``wave`` (integer PCM of ``width`` bytes)."""
    full = (1 << (8 * width - 1)) - 1
    out = bytearray()
    for v in sine(seconds, rate):
        for c in range(channels):
            x = -v if invert_second_channel and c % 2 else v
            if width == 1:
                out.append(round(x * 127) + 128)
            else:
                out += round(x * full).to_bytes(width, "little", signed=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(bytes(out))
    return path


def write_extensible_wav(path: Path, seconds: float, rate: int, channels: int) -> Path:
    """A 24-bit WAVE_FORMAT_EXTENSIBLE file, as sox and ffmpeg write them (Python 3.11's ``wave`` rejects it)."""
    samples = b"".join(round(v * 8388607).to_bytes(3, "little", signed=True) * channels for v in sine(seconds, rate))
    guid = b"\x01\x00\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHLLHH", 0xFFFE, channels, rate, rate * channels * 3, channels * 3, 24)
    fmt += struct.pack("<HHL", 22, 24, 0) + guid
    body = b"WAVE" + b"fmt " + struct.pack("<L", len(fmt)) + fmt + b"data" + struct.pack("<L", len(samples)) + samples
    path.write_bytes(b"RIFF" + struct.pack("<L", len(body)) + body)
    return path


def rms(pcm: bytes) -> float:
    values = array.array("h", pcm)
    return math.sqrt(sum(v * v for v in values) / max(1, len(values)))


HALF_SCALE_SINE_RMS = 0.5 * 32767 / math.sqrt(2)


@contextlib.asynccontextmanager
async def answering(node: LinguaNode, **result: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """Let ``node`` answer every job it gets with ``node.result(job, **result)``; yields the jobs seen."""
    jobs: list[dict[str, Any]] = []

    async def loop() -> None:
        while True:
            job = await node.next_job(timeout=60)
            jobs.append(job)
            await node.result(job, **result)

    task = asyncio.create_task(loop())
    try:
        yield jobs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def run_cli(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """``python -m dragoman.client ARGS`` as a real process; the instance keeps serving meanwhile."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    env.pop("DRAGOMAN_SCHEDULER", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dragoman.client",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def assert_one_line_error(code: int, out: str, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err and "Traceback" not in out
    assert len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------------
# audio: WAV reading, Plan A Opus
# ----------------------------------------------------------------------------------------------------


def test_wav_44k_stereo_becomes_16k_mono_of_the_right_length(tmp_path: Path) -> None:
    audio = load_audio(write_sine_wav(tmp_path / "a.wav", seconds=1.5, rate=44100, channels=2))
    assert audio.samples == 24000  # 1.5 s at 16 kHz
    assert audio.source == "WAV 44100 Hz, 2 channels, 16-bit"
    assert rms(audio.pcm) == pytest.approx(HALF_SCALE_SINE_RMS, rel=0.02)  # the 440 Hz tone survives

    # Channels are averaged: opposite channels cancel out.
    cancel = load_audio(write_sine_wav(tmp_path / "b.wav", rate=44100, channels=2, invert_second_channel=True))
    assert cancel.samples == 24000 and rms(cancel.pcm) < 2


@pytest.mark.parametrize(
    ("rate", "channels", "width"),
    [(16000, 1, 2), (8000, 1, 1), (22050, 1, 4), (48000, 6, 2), (11025, 2, 2)],
)
def test_wav_rates_widths_and_channel_counts(tmp_path: Path, rate: int, channels: int, width: int) -> None:
    audio = load_audio(write_sine_wav(tmp_path / "a.wav", seconds=1.0, rate=rate, channels=channels, width=width))
    assert audio.samples == 16000
    assert rms(audio.pcm) == pytest.approx(HALF_SCALE_SINE_RMS, rel=0.03)


def test_extensible_24_bit_wav_is_read(tmp_path: Path) -> None:
    audio = load_audio(write_extensible_wav(tmp_path / "x.wav", seconds=0.5, rate=48000, channels=2))
    assert audio.samples == 8000 and audio.source == "WAV 48000 Hz, 2 channels, 24-bit"
    assert rms(audio.pcm) == pytest.approx(HALF_SCALE_SINE_RMS, rel=0.02)


def test_raw_pcm_and_unreadable_files(tmp_path: Path) -> None:
    raw = tmp_path / "speech.pcm"
    raw.write_bytes(b"\x01\x00" * 800 + b"\x07")  # a trailing odd byte is dropped, as the node does
    assert load_audio(raw).pcm == b"\x01\x00" * 800

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "fake.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    (tmp_path / "empty.raw").write_bytes(b"")
    for name, reason in [
        ("missing.wav", "no such file"),
        ("notes.txt", "not a WAV file"),
        ("fake.wav", "unreadable WAV file"),
        ("empty.raw", "no audio samples"),
    ]:
        with pytest.raises(AudioError, match=reason):
            load_audio(tmp_path / name)


def test_plan_a_encoding_is_20ms_records_that_decode_to_the_right_sample_count() -> None:
    pcm = array.array("h", (round(v * 32767) for v in sine(1.5))).tobytes()
    packets = encode_plan_a(pcm)
    assert len(packets) == 75  # 1.5 s / 20 ms
    assert all(0 < len(pk) <= 4096 for pk in packets)
    assert {packet_duration_ms(pk) for pk in packets} == {20.0}  # every TOC byte says one 20 ms frame

    stream = plan_a(packets)
    assert parse_plan_a(stream) == packets
    assert stream[:2] == len(packets[0]).to_bytes(2, "little")  # u16 little-endian length, then the packet
    assert plan_a_stats(stream, silence_packet_max_bytes=10).packets == 75  # the scheduler counts the same

    chunks = list(plan_a_chunks(pcm))
    assert [len(parse_plan_a(c)) for c in chunks] == [CHUNK_PACKETS] * 5 + [75 - 5 * CHUNK_PACKETS]

    decoded = decode_plan_a(stream)
    assert len(decoded) // 2 == 75 * PACKET_SAMPLES == 24000
    assert rms(decoded[4000:]) == pytest.approx(HALF_SCALE_SINE_RMS, rel=0.15)  # still the tone, after the delay


# ----------------------------------------------------------------------------------------------------
# SessionClient
# ----------------------------------------------------------------------------------------------------


async def test_session_client_streams_a_wav_as_plan_a_and_gets_the_result(
    dragoman: StartDragoman, tmp_path: Path
) -> None:
    d = await dragoman()
    audio = load_audio(write_sine_wav(tmp_path / "speech.wav", seconds=1.5))
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node, text_asr="你好", text_translated="hello", tts_audio=b"\x01\x02") as jobs:
            client = SessionClient(d.session_url, SessionConfig.one_way("zh", "en"), ui_events=True)
            ack = await client.connect()
            assert ack.session_id.startswith("s-") and client.session_id == ack.session_id
            chunks = list(plan_a_chunks(audio.pcm))
            for i, chunk in enumerate(chunks):
                assert await client.send_chunk(chunk, is_final=i == len(chunks) - 1) == i  # seq from 0
            events = []
            async for event in client:
                events.append(event)
                if isinstance(event, p.TranslationResult):
                    break
            result = events[-1]
            assert isinstance(result, p.TranslationResult)
            assert (result.utterance_index, result.text_asr, result.text_translated) == (0, "你好", "hello")
            assert base64.b64decode(result.tts_audio) == b"\x01\x02"
            assert next(e.event for e in events if isinstance(e, p.UiEvent)) == "DISPATCHED"

            [job] = jobs
            assert base64.b64decode(job["audio"]) == b"".join(chunks)  # the chunks, byte for byte
            assert (job["audio_format"], job["sample_rate"], job["src_lang"], job["tgt_lang"]) == (
                "opus",
                16000,
                "zh",
                "en",
            )
            assert job["mode"] == "one_way" and job["is_manual_cut"] is True
            await client.close()
            assert [e async for e in client] == []  # the stream ends after session_close_ack


async def test_session_client_utterance_path_pcm16(dragoman: StartDragoman) -> None:
    d = await dragoman()
    pcm = array.array("h", (round(v * 20000) for v in sine(0.8))).tobytes()
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node, tts_audio=b"\x00\x01" * 10, tts_format="pcm16") as jobs:
            config = SessionConfig.two_way("zh", "en")
            async with SessionClient(d.session_url, config, heartbeat_interval=0.1) as client:
                await client.send_utterance(0, pcm)
                await client.send_utterance(1, pcm[:3200])
                events = [await client.recv(timeout=10) for _ in range(2)]
                results = [e for e in events if isinstance(e, p.TranslationResult)]
                assert [r.utterance_index for r in results] == [0, 1]
                assert all(r.tts_format == "pcm16" for r in results)
                for _ in range(40):  # client_heartbeat every 0.1 s is answered
                    if client.last_server_heartbeat_ms is not None:
                        break
                    await asyncio.sleep(0.05)
                assert client.last_server_heartbeat_ms is not None
    assert [j["utterance_index"] for j in jobs] == [0, 1]
    assert base64.b64decode(jobs[0]["audio"]) == pcm
    assert (jobs[0]["audio_format"], jobs[0]["sample_rate"]) == ("pcm16", 16000)
    assert [jobs[0][k] for k in ("src_lang", "tgt_lang", "lang_a", "lang_b")] == ["auto", "en", "zh", "en"]


async def test_unreachable_scheduler_is_a_connect_error() -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws/session"
    client = SessionClient([dead, dead.replace("ws://", "http://")], SessionConfig.one_way("zh", "en"))
    with pytest.raises(ConnectError, match="could not open a session") as caught:
        await client.connect()
    assert str(caught.value).count("Connection refused") == 2  # every URL was tried and named


async def test_dropped_socket_reconnects_through_the_url_list_and_resumes_the_session(
    dragoman: StartDragoman,
) -> None:
    d = await dragoman()
    dead = f"ws://127.0.0.1:{free_port()}/ws/session"
    pcm = b"\x01\x00" * 8000
    async with LinguaNode(d.node_url) as node:
        await node.start()
        client = SessionClient(
            [dead, d.session_url],  # tried in turn: the first one refuses
            SessionConfig.one_way("zh", "en"),
            backoff=Backoff(initial=0.05, max_attempts=5),
        )
        await client.connect()
        assert client.url == d.session_url
        first = client.session_id
        await client.send_utterance(0, pcm)
        job = await node.next_job()
        d.scheduler.sessions[first].conn.close(1012)  # the scheduler drops the socket while the job runs

        event = await client.recv(timeout=5)
        assert event == Reconnected(previous_session_id=first, session_id=first, resumed=True, url=d.session_url)
        await node.result(job, text_translated="after the drop")  # delivered on the new socket (§18.2)
        result = await client.recv(timeout=10)
        assert isinstance(result, p.TranslationResult)
        assert (result.session_id, result.utterance_index, result.text_translated) == (first, 0, "after the drop")

        await client.send_utterance(1, pcm)  # numbering goes on
        await node.result(await node.next_job())
        result = await client.recv(timeout=10)
        assert isinstance(result, p.TranslationResult) and result.utterance_index == 1
        await client.close()


@pytest.mark.parametrize("supports_resume", [True, False])
async def test_reconnect_asks_to_resume_and_reports_whether_it_did(supports_resume: bool) -> None:
    """§18.2 with a scripted scheduler: the second session_init names the old session; a scheduler that starts
    a new session instead (lingua's, or after the resume grace) is reported as not resumed."""
    inits: list[dict[str, Any]] = []

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg["type"] == "session_init":
                inits.append(msg)
                old = msg.get("resume_session_id") if supports_resume else None
                ack = p.SessionInitAck.new(old or f"s-0000000{len(inits)}", "trace-1", resumed=bool(old) or None)
                await ws.send(p.encode(ack).decode())
                if len(inits) == 1:
                    await ws.close(1012)  # drop the first connection right after the ack
                    return
            elif msg["type"] == "session_close":
                await ws.send(p.encode(p.SessionCloseAck(session_id=msg["session_id"])).decode())

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = SessionClient(
            f"ws://127.0.0.1:{port}/ws/session",
            SessionConfig.one_way("zh", "en", trace_id="trace-1"),
            backoff=Backoff(initial=0.05, max_attempts=3),
        )
        await client.connect()
        event = await client.recv(timeout=5)
        new_id = "s-00000001" if supports_resume else "s-00000002"
        assert event == Reconnected(
            previous_session_id="s-00000001", session_id=new_id, resumed=supports_resume, url=client.url
        )
        assert client.session_id == new_id
        assert "resume_session_id" not in inits[0]  # optional keys without a value are omitted
        assert inits[1]["resume_session_id"] == "s-00000001" and inits[1]["trace_id"] == "trace-1"
        await client.close(timeout=5)


async def test_reconnecting_gives_up_with_connection_lost() -> None:
    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            if json.loads(raw)["type"] == "session_init":
                await ws.send(p.encode(p.SessionInitAck.new("s-0000BBBB", "t")).decode())

    server = await serve(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = SessionClient(
        f"ws://127.0.0.1:{port}", SessionConfig.one_way("zh", "en"), backoff=Backoff(initial=0.02, max_attempts=2)
    )
    await client.connect()
    server.close()  # stops listening and drops the session's socket
    await server.wait_closed()
    with pytest.raises(ConnectionLostError, match="2 reconnection attempts failed"):
        await client.recv(timeout=5)
    with pytest.raises(ConnectionLostError):
        await client.send_chunk(b"\x00\x00")
    await client.abort()


# ----------------------------------------------------------------------------------------------------
# JobsClient
# ----------------------------------------------------------------------------------------------------


async def test_jobs_client_is_idempotent_and_waits_for_the_result(dragoman: StartDragoman) -> None:
    d = await dragoman()
    pcm = b"\x01\x00\xff\xff" * 4000
    async with LinguaNode(d.node_url) as node, JobsClient(d.session_url) as jobs:  # any scheduler URL works
        await node.start()
        async with answering(node, text_asr="早上好", text_translated="good morning") as seen:
            first = await jobs.create(pcm, src_lang="zh", tgt_lang="en", idempotency_key="req-42")
            again = await jobs.create(pcm, src_lang="zh", tgt_lang="en", idempotency_key="req-42")
            assert again.job_id == first.job_id and again.replayed and not first.replayed
            job = await jobs.wait(first.job_id, timeout=10)
        assert job.done and job.status == "completed"
        assert job.result is not None and job.result.text_translated == "good morning"
        assert len(seen) == 1  # one job_assign for the two requests

        other = await jobs.create(pcm, src_lang="zh", tgt_lang="en")  # a generated key: another job
        assert other.job_id != first.job_id and other.idempotency_key

        with pytest.raises(ApiError) as missing:
            await jobs.get("job-does-not-exist")
        assert missing.value.status == 404 and missing.value.error == "not_found"
        with pytest.raises(ApiError) as invalid:
            await jobs.create(pcm, src_lang="zh", tgt_lang="en", audio_format="wav")
        assert invalid.value.status == 422 and invalid.value.field == "audio_format"
        assert "HTTP 422" in str(invalid.value)


async def test_jobs_client_unreachable_scheduler() -> None:
    async with JobsClient(f"http://127.0.0.1:{free_port()}", timeout=2) as jobs:
        with pytest.raises(ConnectError, match="cannot reach the scheduler"):
            await jobs.get("job-x")


# ----------------------------------------------------------------------------------------------------
# dragoman translate / status, as real processes
# ----------------------------------------------------------------------------------------------------


async def test_translate_cli_json_lines_and_wav_files(dragoman: StartDragoman, tmp_path: Path) -> None:
    d = await dragoman()
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.5, rate=44100, channels=2)
    tts = b"\x10\x00\x20\x00" * 800  # 1600 samples of pcm16
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node, text_asr="你好", text_translated="hello", tts_audio=tts, tts_format="pcm16") as jobs:
            code, out, err = await run_cli(
                "translate", str(wav), "--src", "zh", "--tgt", "en", "--scheduler", d.session_url,
                "--json", "--out", str(tmp_path / "out"),
            )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 1
    [line] = lines
    assert line["type"] == "translation_result" and line["utterance_index"] == 0
    assert (line["text_asr"], line["text_translated"], line["tts_bytes"]) == ("你好", "hello", len(tts))
    assert "tts_audio" not in line and line["audio_file"] == str(tmp_path / "out" / "utt-0000.wav")
    with wave.open(line["audio_file"]) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
        assert w.readframes(w.getnframes()) == tts
    [job] = jobs
    assert job["audio_format"] == "opus" and plan_a_stats(base64.b64decode(job["audio"]), 10).packets == 75


async def test_translate_cli_decodes_opus_speech_and_prints_text(dragoman: StartDragoman, tmp_path: Path) -> None:
    d = await dragoman()
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.0)
    speech = plan_a(encode_plan_a(b"\x00\x10" * 8000))  # 0.5 s of Plan A, as the Electron node sends
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node, text_asr="谢谢", text_translated="thank you", tts_audio=speech):
            code, out, err = await run_cli(
                "translate", str(wav), "--two-way", "zh,en", "--scheduler", d.session_url,
                "--out", str(tmp_path / "out"),
            )  # fmt: skip
    assert code == 0, err
    assert "谢谢" in out and "thank you" in out and "1 result" in out
    with wave.open(str(tmp_path / "out" / "utt-0000.wav")) as w:
        assert w.getnframes() == 25 * PACKET_SAMPLES  # 25 Plan A packets, decoded


async def test_translate_cli_pcm16_utterances_every_n_seconds(dragoman: StartDragoman, tmp_path: Path) -> None:
    d = await dragoman()
    raw = tmp_path / "speech.raw"
    raw.write_bytes(array.array("h", (round(v * 20000) for v in sine(2.5))).tobytes())
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node) as jobs:
            code, out, err = await run_cli(
                "translate", str(raw), "--src", "zh", "--tgt", "en", "--scheduler", d.session_url,
                "--format", "pcm16", "--cut-every", "1", "--json",
            )  # fmt: skip
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(x["type"], x["utterance_index"]) for x in lines] == [("translation_result", i) for i in range(3)]
    assert [len(base64.b64decode(j["audio"])) for j in jobs] == [32000, 32000, 16000]
    assert {j["audio_format"] for j in jobs} == {"pcm16"}


async def test_translate_cli_reports_failed_utterances_with_exit_code_1(
    dragoman: StartDragoman, tmp_path: Path
) -> None:
    d = await dragoman()
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.0)
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node, success=False, error={"code": "PROCESSING_ERROR", "message": "asr failed"}):
            code, out, err = await run_cli(
                "translate", str(wav), "--src", "zh", "--tgt", "en", "--scheduler", d.session_url, "--json"
            )  # fmt: skip
    assert code == 1, err
    [line] = [json.loads(line) for line in out.splitlines()]
    assert line == {"type": "error", "code": "PROCESSING_ERROR", "message": "asr failed", "utterance_index": 0}


async def test_translate_in_process_paces_a_realtime_stream(dragoman: StartDragoman, tmp_path: Path) -> None:
    """The command's logic is a library function too; ``realtime`` sends no faster than speech."""
    d = await dragoman()
    wav = write_sine_wav(tmp_path / "speech.wav", seconds=1.0)
    out = io.StringIO()
    options = TranslateOptions(
        file=wav, urls=[d.session_url], config=SessionConfig.one_way("zh", "en"), realtime=True, timeout=10
    )
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with answering(node) as jobs:
            summary = await translate(options, JsonReporter(out=out))
    assert (summary.results, summary.errors, summary.outstanding) == (1, 0, 0)
    assert summary.elapsed_s >= 0.75  # 4 chunks of 260 ms: the last one leaves 0.78 s after the first
    assert [json.loads(line)["utterance_index"] for line in out.getvalue().splitlines()] == [0]
    assert jobs[0]["is_manual_cut"] is True  # the end of the file is an is_final cut


async def test_translate_cli_errors_are_one_line(dragoman: StartDragoman, tmp_path: Path) -> None:
    d = await dragoman()
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"RIFF....WAVEnothing here")
    good = write_sine_wav(tmp_path / "ok.wav", seconds=0.5)
    dead = f"ws://127.0.0.1:{free_port()}/ws/session"
    langs = ("--src", "zh", "--tgt", "en")
    cases = [
        (("translate", str(tmp_path / "missing.wav"), *langs, "--scheduler", d.session_url), 2, "no such file"),
        (("translate", str(text), *langs, "--scheduler", d.session_url), 2, "not a WAV file"),
        (("translate", str(fake), *langs, "--scheduler", d.session_url), 2, "unreadable WAV"),
        (("translate", str(good), *langs, "--scheduler", dead), 3, "could not open a session"),
        (("translate", str(good), "--scheduler", d.session_url), 2, "give the languages"),
    ]
    for args, expected, reason in cases:
        code, out, err = await run_cli(*args)
        assert_one_line_error(code, out, err)
        assert code == expected and reason in err, (args, err)


async def test_status_cli_shows_nodes(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient() as http:
        if (await http.get(f"{d.http}/api/v1/cluster")).status_code == 404:
            pytest.skip("this instance has no GET /api/v1/cluster yet (PROTOCOL.md §16.3)")
    async with LinguaNode(d.node_url) as node:
        node_id = await node.start()
        await asyncio.sleep(0.2)
        code, out, err = await run_cli("status", "--scheduler", d.http)
        assert code == 0, err
        assert node_id in out and "Nodes" in out
        code, out, err = await run_cli("status", "--scheduler", d.session_url, "--json")
        assert code == 0, err
        assert node_id in [n["node_id"] for n in json.loads(out)["nodes"]]


async def test_status_cli_unreachable_scheduler_is_one_line() -> None:
    code, out, err = await run_cli("status", "--scheduler", f"http://127.0.0.1:{free_port()}")
    assert_one_line_error(code, out, err)
    assert code == 3 and "cannot reach the scheduler" in err


def test_repeated_outcomes_after_a_resume_are_passed_on_once() -> None:
    from dragoman.client.session import _DeliveredSlots

    slots = _DeliveredSlots()
    assert [slots.add("s-1", i) for i in (0, 1, 3, 1, 2, 3, 0)] == [True, True, True, False, True, False, False]
    assert slots.add("s-2", 0)  # another session starts afresh
    for i in range(1, 5000):  # index 0 of s-3 never comes: the set stays bounded and repeats are still caught
        assert slots.add("s-3", i)
    assert not slots.add("s-3", 4999) and not slots.add("s-3", 17)
    assert len(slots._above) <= 4096
