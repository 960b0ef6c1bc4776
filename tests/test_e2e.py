"""End to end with real processes only: ``dragoman serve``, ``dragoman node --engine echo`` and
``dragoman translate`` on a generated WAV; then the scheduler restarts and the node comes back by itself."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from test_serve import serve

from conftest import free_port


def speech_wav(path: Path, seconds: float = 1.2, rate: int = 22050) -> Path:
    """A tone that the Opus encoder turns into voiced packets (what the tiny-utterance rules need)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(
            b"".join(
                int(8000 * math.sin(2 * math.pi * 220 * i / rate)).to_bytes(2, "little", signed=True)
                for i in range(int(seconds * rate))
            )
        )
    return path


async def translate(port: int, wav: Path) -> list[dict[str, object]]:
    run = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dragoman", "translate", str(wav), "--src", "zh", "--tgt", "en",
        "--scheduler", f"ws://127.0.0.1:{port}/ws/session", "--json", "--timeout", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(run.communicate(), 60)
    assert run.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


async def node_ids(port: int) -> set[str]:
    async with httpx.AsyncClient() as http:
        cluster = (await http.get(f"http://127.0.0.1:{port}/api/v1/cluster")).json()
    return {n["node_id"] for n in cluster["nodes"] if n["online"]}


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.1)):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("not reached in time")


async def test_serve_node_and_translate_as_processes_and_a_scheduler_restart(tmp_path: Path) -> None:
    port = free_port()
    wav = speech_wav(tmp_path / "speech.wav")
    node_args = ["--engine", "echo", "--langs", "zh,en", "--node-id", "node-E2E00001", "--log-level", "warning"]
    node = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "node", "--scheduler", f"ws://127.0.0.1:{port}/ws/node", *node_args]
    )
    try:
        async with serve(tmp_path / "data", port):
            await until(lambda: _has_node(port))
            [result] = await translate(port, wav)
            assert result["type"] == "translation_result"
            assert str(result["text_asr"]).startswith("echo:") and "opus" in str(result["text_asr"])
            assert str(result["text_translated"]).startswith("[en] ")
        # The scheduler is gone; the node reconnects with backoff to the new one, with its node id.
        async with serve(tmp_path / "data", port):
            await until(lambda: _has_node(port), seconds=40)
            [again] = await translate(port, wav)
            assert again["type"] == "translation_result"
    finally:
        node.send_signal(signal.SIGTERM)
        assert node.wait(20) == 0


async def _has_node(port: int) -> bool:
    try:
        return "node-E2E00001" in await node_ids(port)
    except httpx.TransportError:
        return False
