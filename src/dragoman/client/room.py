"""``dragoman room create|join``: take part in a translated conversation (PROTOCOL.md §13, §15.5).

The command opens a session, creates a room (printing its code) or joins one by code, with the member's
language; it then streams a speech file into the room (or only listens) and prints the other members'
speech, translated into that language, as it arrives, and the room's members whenever they change. Three
terminals in three languages hold a three-person conversation.

Output: text lines, or with ``--json`` one JSON object per line (``{"event": "room"|"members"|"result"|
"missing"|"error"|"expired", ...}``), flushed as they come, so that another program can follow them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dragoman import protocol as p
from dragoman.client.session import SessionClient, SessionConfig
from dragoman.errors import ClientError
from dragoman.opus import CHUNK_PACKETS, PACKET_MS, OpusEncoder, plan_a_chunks
from dragoman.pcm import load_audio

CHUNK_S = CHUNK_PACKETS * PACKET_MS / 1000


class RoomRefused(ClientError):
    """The scheduler answered ``room_error`` (no such room, already in one, full...)."""


@dataclass(frozen=True, slots=True)
class RoomOptions:
    urls: list[str]
    lang: str
    code: str | None = None  # None: create a room
    name: str | None = None
    file: Path | None = None
    realtime: bool = False
    #: Seconds to stay once the file is sent (or from the start, without a file); None: until interrupted.
    listen: float | None = None
    as_json: bool = False


def _emit(as_json: bool, event: str, text: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields}, ensure_ascii=False) if as_json else text
    print(line, flush=True)


class _Printer:
    def __init__(self, client: SessionClient, as_json: bool) -> None:
        self.client = client
        self.as_json = as_json
        self.names: dict[str, str] = {}

    def members(self, msg: p.RoomMembers) -> None:
        self.names = {m.session_id: m.display_name or m.session_id for m in msg.members}
        shown = ", ".join(
            f"{m.display_name or m.session_id} ({m.preferred_lang or '-'})"
            + (" [you]" if m.session_id == self.client.session_id else "")
            for m in msg.members
        )
        members = [{"session_id": m.session_id, "name": m.display_name, "lang": m.preferred_lang} for m in msg.members]
        _emit(self.as_json, "members", f"members: {shown}", room_code=msg.room_code, members=members)

    def event(self, msg: Any) -> bool:
        """Show one event; False when the room is over for this member."""
        if isinstance(msg, p.RoomMembers):
            self.members(msg)
        elif isinstance(msg, p.TranslationResult) and msg.session_id != self.client.session_id:
            who = self.names.get(msg.session_id, msg.session_id)
            _emit(
                self.as_json,
                "result",
                f"{who} #{msg.utterance_index}: {msg.text_asr} -> {msg.text_translated}",
                speaker=msg.session_id,
                utterance_index=msg.utterance_index,
                text_asr=msg.text_asr,
                text_translated=msg.text_translated,
            )
        elif isinstance(msg, p.MissingResult) and msg.session_id != self.client.session_id:
            who = self.names.get(msg.session_id, msg.session_id)
            text = f"{who} #{msg.utterance_index}: (nothing: {msg.reason})"
            _emit(self.as_json, "missing", text, speaker=msg.session_id, utterance_index=msg.utterance_index)
        elif isinstance(msg, p.Error | p.RoomError):
            _emit(self.as_json, "error", f"error {msg.code}: {msg.message or ''}", code=msg.code, message=msg.message)
        elif isinstance(msg, p.RoomExpired):
            _emit(self.as_json, "expired", f"room {msg.room_code} expired: {msg.message}", room_code=msg.room_code)
            return False
        return True


async def _enter(client: SessionClient, options: RoomOptions, printer: _Printer) -> str:
    """Create or join the room; returns its code once the first ``room_members`` arrived."""
    if options.code is None:
        await client.create_room(preferred_lang=options.lang, display_name=options.name)
    else:
        await client.join_room(options.code, preferred_lang=options.lang, display_name=options.name)
    announced = False  # the room line: from room_create_ack (Dragoman sends one to joiners too), else members
    while True:
        event = await client.recv(timeout=10)
        if isinstance(event, p.RoomError):
            raise RoomRefused(f"room_error {event.code}: {event.message or ''}")
        if isinstance(event, p.RoomCreateAck):
            _emit(options.as_json, "room", f"room {event.room_code}", room_code=event.room_code, room_id=event.room_id)
            announced = True
        elif isinstance(event, p.RoomMembers):
            if not announced:
                _emit(options.as_json, "room", f"room {event.room_code}", room_code=event.room_code)
            printer.members(event)
            return event.room_code


async def _speak(client: SessionClient, file: Path, realtime: bool) -> None:
    """Stream the file as the web client does: Plan A Opus chunks, ``is_final`` on the last one."""
    audio = await asyncio.to_thread(load_audio, file)
    chunks = list(plan_a_chunks(audio.pcm))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for k, chunk in enumerate(chunks):
        if realtime:
            await asyncio.sleep(max(0.0, start + k * CHUNK_S - loop.time()))
        await client.send_chunk(chunk, is_final=k == len(chunks) - 1)


async def run_room(options: RoomOptions) -> int:
    """Take part in a room until ``listen`` runs out, the room expires or the user interrupts."""
    if options.file is not None:
        OpusEncoder()  # fails now, before connecting, if the codec is missing
    client = SessionClient(options.urls, SessionConfig.one_way(options.lang, options.lang))
    await client.connect()
    printer = _Printer(client, options.as_json)
    try:
        code = await _enter(client, options, printer)
        if options.file is not None:
            await _speak(client, options.file, options.realtime)
        loop = asyncio.get_running_loop()
        end = None if options.listen is None else loop.time() + options.listen
        while end is None or loop.time() < end:
            try:
                event = await client.recv(timeout=None if end is None else max(0.01, end - loop.time()))
            except TimeoutError:
                break
            if not printer.event(event):
                return 0
        with contextlib.suppress(ClientError):
            await client.leave_room(code)
        await client.close(reason="room_done", timeout=10)
    except BaseException:
        with contextlib.suppress(Exception):
            await client.abort()
        raise
    return 0
