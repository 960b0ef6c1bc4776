"""The room client: `SessionClient` room methods, and `dragoman room create|join` as real processes, against a real
instance and a scripted lingua node."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import math
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dragoman import protocol as p
from dragoman.client import SessionClient, SessionConfig
from dragoman.pcm import write_wav

from conftest import StartDragoman
from peers import LinguaNode


def _speech(path: Path, seconds: float = 1.5) -> Path:
    samples = array.array(
        "h", (int(12000 * math.sin(2 * math.pi * 440 * i / 16000)) for i in range(int(seconds * 16000)))
    )
    write_wav(path, samples.tobytes())
    return path


async def _start(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("DRAGOMAN_SCHEDULER", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dragoman.client", "room", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def _line(proc: asyncio.subprocess.Process, timeout: float = 20) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
    assert raw, "the command ended early"
    line: dict[str, Any] = json.loads(raw)
    return line


@contextlib.asynccontextmanager
async def _answering(node: LinguaNode) -> AsyncIterator[list[dict[str, Any]]]:
    jobs: list[dict[str, Any]] = []

    async def loop() -> None:
        while True:
            job = await node.next_job(timeout=60)
            jobs.append(job)
            await node.result(job)

    task = asyncio.create_task(loop())
    try:
        yield jobs
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_two_terminals_hold_a_translated_conversation(dragoman: StartDragoman, tmp_path: Path) -> None:
    d = await dragoman()
    speech = _speech(tmp_path / "speech.wav")
    async with LinguaNode(d.node_url) as node:
        await node.start()
        async with _answering(node) as jobs:
            host = await _start("create", "--lang", "zh", "--name", "Ann", "--listen", "15", "--json",
                                "--scheduler", d.session_url)  # fmt: skip
            try:
                room = await _line(host)
                assert room["event"] == "room" and len(room["room_code"]) == 6
                assert (await _line(host))["event"] == "members"
                guest = await _start("join", room["room_code"], "--lang", "en", "--name", "Bob", "--file", str(speech),
                                     "--listen", "1", "--json", "--scheduler", d.session_url)  # fmt: skip
                out, err = await asyncio.wait_for(guest.communicate(), 30)
                assert guest.returncode == 0, err.decode()
                guest_lines = [json.loads(line) for line in out.decode().splitlines()]
                assert guest_lines[0] == room  # the room's code and id, from the room_create_ack a joiner gets
                assert not [g for g in guest_lines if g["event"] == "result"]  # not its own speech
                seen = [await _line(host) for _ in range(3)]  # Bob joins, speaks, leaves
                assert [s["event"] for s in seen] == ["members", "result", "members"]
                assert [m["name"] for m in seen[0]["members"]] == ["Ann", "Bob"]
                assert seen[1]["text_translated"] == "zh: asr 0"
                assert [m["name"] for m in seen[2]["members"]] == ["Ann"]
            finally:
                with contextlib.suppress(ProcessLookupError):
                    host.kill()
                await host.wait()
    [job] = jobs
    assert job["tgt_lang"] == "zh" and job["src_lang"] == "en"


async def test_joining_no_such_room_is_one_line_and_exit_code_1(dragoman: StartDragoman) -> None:
    d = await dragoman()
    proc = await _start("join", "654321", "--lang", "en", "--scheduler", d.session_url)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert err.decode().strip() == "dragoman room join: room_error ROOM_NOT_FOUND: 房间不存在"
    assert "Traceback" not in out.decode()


async def test_session_client_room_methods_and_events(dragoman: StartDragoman) -> None:
    d = await dragoman()
    host = SessionClient(d.session_url, SessionConfig.one_way("zh", "en"), reconnect=False)
    guest = SessionClient(d.session_url, SessionConfig.one_way("en", "zh"), reconnect=False)
    await host.connect()
    await guest.connect()
    try:
        await host.create_room(preferred_lang="zh", display_name="Ann")
        ack = await host.recv(timeout=5)
        assert isinstance(ack, p.RoomCreateAck) and host.room_code == ack.room_code
        assert isinstance(await host.recv(timeout=5), p.RoomMembers)
        await guest.join_room(ack.room_code, preferred_lang="en")
        told = await guest.recv(timeout=5)  # a joiner is told the room's code and id first, as a creator is
        assert told == ack and guest.room_code == ack.room_code
        joined = await guest.recv(timeout=5)
        assert isinstance(joined, p.RoomMembers) and [m.session_id for m in joined.members] == [
            host.session_id,
            guest.session_id,
        ]
        assert isinstance(await host.recv(timeout=5), p.RoomMembers) and len(host.room_members) == 2
        await guest.send_webrtc("offer", host.session_id, {"type": "offer", "sdp": "v=0"})
        offer = await host.recv(timeout=5)
        assert isinstance(offer, p.RelayedOffer) and offer.to == guest.session_id and offer.sdp["sdp"] == "v=0"
        await host.set_raw_voice(guest.session_id, False)
        update = await host.recv(timeout=5)
        assert isinstance(update, p.RoomMembers)
        assert host.room_members[0].raw_voice_preferences == {guest.session_id: False}
        await guest.join_room("123456")
        refused = await _next(guest, p.RoomError)  # (after the room_members of the preference)
        assert refused.code == "ALREADY_IN_ROOM"
        with pytest.raises(ValueError):
            await guest.send_webrtc("bye", host.session_id, {})
        await guest.leave_room()
        assert guest.room_code is None
        assert [m.session_id for m in (await _next(host, p.RoomMembers)).members] == [host.session_id]
    finally:
        await host.close()
        await guest.close()


T = TypeVar("T")


async def _next(client: SessionClient, kind: type[T]) -> T:
    """The next event of that type (others are passed over)."""
    while True:
        event = await client.recv(timeout=5)
        if isinstance(event, kind):
            return event
