"""An asyncio client for ``/ws/session``: open a session, stream audio or send utterances, receive outcomes.

It speaks lingua's client protocol (PROTOCOL.md §5, §6, §15.2, §15.3) with the message structs of
``dragoman.protocol``, so it works against Dragoman and against lingua's own scheduler alike, and adds the one
Dragoman extension a client can use: ``resume_session_id`` (§18.2). When the socket drops it reconnects with
backoff, trying each scheduler URL in turn, and asks to resume the old session; whether the scheduler did is
reported in the event stream (``Reconnected``), because a session that was not resumed has lost its buffered
audio and undelivered outcomes, and only the caller knows whether to send that audio again.

Typical use::

    async with SessionClient(["ws://127.0.0.1:5010/ws/session"], SessionConfig.one_way("zh", "en")) as client:
        await client.send_utterance(0, pcm, audio_format="pcm16")
        async for event in client:
            if isinstance(event, TranslationResult):
                print(event.text_translated)
                break
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from dragoman import __version__
from dragoman import protocol as p
from dragoman.client.endpoints import session_url, tls_context, with_query
from dragoman.errors import (
    ClientError,
    CloseTimeoutError,
    ConnectError,
    ConnectionLostError,
    SessionClosedError,
)
from dragoman.websocket import BatchedWritesConnection

log = logging.getLogger(__name__)

CLIENT_VERSION: Final = f"dragoman-client-v{__version__}"
#: ``session_init.platform`` is free text (§5.1); this one names the client in the scheduler's logs.
PLATFORM: Final = "dragoman-client"
#: Frames from the scheduler may carry seconds of synthesized speech in base64.
MAX_FRAME_BYTES: Final = 16 * 1024 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Reconnected(msgspec.Struct, frozen=True, kw_only=True):
    """Not a wire message: the socket dropped and a new one was opened.

    ``resumed`` is false when the scheduler answered with another ``session_id`` (it does not support
    resumption, or the old session expired): the old session's buffered audio and undelivered outcomes are
    lost, utterance indices start again at 0, and chunk ``seq`` numbers restart.
    """

    previous_session_id: str
    session_id: str
    resumed: bool
    url: str


class _DeliveredSlots:
    """The utterance indexes whose outcome was passed on, per session: all below a low-water mark, plus the few
    above it (outcomes arrive in index order, so the set stays small)."""

    def __init__(self) -> None:
        self._session = ""
        self._below = 0
        self._above: set[int] = set()

    def through(self, session_id: str) -> int | None:
        """The index up to which every outcome of the session was passed on (None: not one yet)."""
        return self._below - 1 if session_id == self._session and self._below > 0 else None

    def add(self, session_id: str, index: int) -> bool:
        """Record the slot; False if it was already delivered."""
        if session_id != self._session:
            self._session, self._below, self._above = session_id, 0, set()
        if index < self._below or index in self._above:
            return False
        self._above.add(index)
        while self._below in self._above:
            self._above.discard(self._below)
            self._below += 1
        if len(self._above) > 4096:  # a low index never came (a skipped utterance): move the mark past it
            self._below = min(self._above) + 1
            self._above = {i for i in self._above if i >= self._below}
            while self._below in self._above:
                self._above.discard(self._below)
                self._below += 1
        return True


#: Room messages (§13.2): replies to the room methods, changes of the room, relayed WebRTC signalling.
RoomEvent = (
    p.RoomCreateAck | p.RoomMembers | p.RoomError | p.RoomExpired | p.RelayedOffer | p.RelayedAnswer | p.RelayedIce
)
#: What iterating a ``SessionClient`` yields. ``UiEvent`` only if asked for, ``ClientAsrPartial`` unless
#: turned off. ``server_heartbeat`` and ``session_close_ack`` are handled inside. In a room, results of
#: the other members' speech carry the speaker's ``session_id``.
SessionEvent = (
    p.TranslationResult | p.MissingResult | p.Error | p.ClientAsrPartial | p.UiEvent | Reconnected | RoomEvent
)
#: The outcome messages: exactly one per utterance (§12.2), plus ``error`` replies to bad messages.
OUTCOME_TYPES: Final = (p.TranslationResult, p.MissingResult, p.Error)

_ServerMessage = (
    p.SessionInitAck
    | p.TranslationResult
    | p.MissingResult
    | p.Error
    | p.ClientAsrPartial
    | p.UiEvent
    | p.ServerHeartbeat
    | p.SessionCloseAck
    | p.RoomCreateAck
    | p.RoomMembers
    | p.RoomError
    | p.RoomExpired
    | p.RelayedOffer
    | p.RelayedAnswer
    | p.RelayedIce
)
_decode_server = msgspec.json.Decoder(_ServerMessage).decode


class _TypeOnly(msgspec.Struct):
    type: str | None = None


_decode_type = msgspec.json.Decoder(_TypeOnly).decode
_KNOWN_TYPES: Final = frozenset(
    {
        "session_init_ack",
        "translation_result",
        "missing_result",
        "error",
        "asr_partial",
        "ui_event",
        "server_heartbeat",
        "session_close_ack",
        "room_create_ack",
        "room_members",
        "room_error",
        "room_expired",
        "webrtc_offer",
        "webrtc_answer",
        "webrtc_ice",
    }
)


def encode_message(msg: p.Inbound) -> str:
    """A client message as one JSON text frame (F1), without the optional keys that have no value (F6)."""
    fields = msgspec.to_builtins(msg)
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not None}).decode()


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """What ``session_init`` says (§5.1). Build it with ``one_way`` or ``two_way``."""

    src_lang: str
    tgt_lang: str
    mode: str = "one_way"
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: tuple[str, ...] | None = None
    dialect: str | None = None
    features: p.FeatureFlags | None = None
    tenant_id: str | None = None
    #: The session's trace id, used for all its jobs; the scheduler makes one when it is None.
    trace_id: str | None = None
    client_version: str = CLIENT_VERSION
    platform: str = PLATFORM

    @classmethod
    def one_way(cls, src_lang: str, tgt_lang: str, **options: Any) -> SessionConfig:
        """Speech in ``src_lang`` translated into ``tgt_lang``; ``options`` sets the other fields."""
        return cls(src_lang=src_lang, tgt_lang=tgt_lang, mode="one_way", **options)

    @classmethod
    def two_way(cls, lang_a: str, lang_b: str, **options: Any) -> SessionConfig:
        """A conversation in two languages, each utterance translated into the other one; the frame is the
        web client's (``src_lang "auto"``, ``tgt_lang`` = ``lang_b``)."""
        return cls(
            src_lang="auto",
            tgt_lang=lang_b,
            mode="two_way_auto",
            lang_a=lang_a,
            lang_b=lang_b,
            auto_langs=(lang_a, lang_b),
            **options,
        )

    def init_message(
        self,
        resume_session_id: str | None = None,
        delivered_index: int | None = None,
        resume_token: str | None = None,
        ui_events: bool | None = None,
    ) -> p.SessionInit:
        return p.SessionInit(
            client_version=self.client_version,
            platform=self.platform,
            src_lang=self.src_lang,
            tgt_lang=self.tgt_lang,
            dialect=self.dialect,
            features=self.features,
            tenant_id=self.tenant_id,
            mode=self.mode,
            lang_a=self.lang_a,
            lang_b=self.lang_b,
            auto_langs=list(self.auto_langs) if self.auto_langs is not None else None,
            trace_id=self.trace_id,
            resume_session_id=resume_session_id,
            resume_delivered_index=delivered_index if resume_session_id else None,
            resume_token=resume_token if resume_session_id else None,
            ui_events=ui_events,
        )


@dataclass(frozen=True, slots=True)
class Backoff:
    """Reconnection delays: ``initial``, then multiplied by ``factor`` up to ``maximum``, each with up to
    ``jitter`` (a fraction) added so that many clients do not return at the same instant. The defaults are the
    web client's (1 s to 30 s, §2.4), with a bound on the number of attempts so that a program ends."""

    initial: float = 1.0
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.1
    #: Attempts before giving up (each attempt tries every URL once); None retries forever.
    max_attempts: int | None = 10

    def delays(self) -> Iterator[float]:
        delay = self.initial
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            attempt += 1
            yield delay * (1 + random.uniform(0, self.jitter))
            delay = min(delay * self.factor, self.maximum)


class _End:
    """Queue marker: the event stream is over."""


_END: Final = _End()


@dataclass(slots=True)
class _Link:
    """One open socket and the session the scheduler acknowledged on it."""

    url: str
    ws: ClientConnection
    ack: p.SessionInitAck
    #: Frames that arrived before the ack, handled by the reader after it.
    extra: list[str] = field(default_factory=list)


class SessionClient:
    """One translation session on a scheduler's ``/ws/session``.

    ``urls``: one or several scheduler URLs (``ws://host:5010/ws/session``, or ``http://host:5010``), tried in
    order when connecting and reconnecting. Iterate the client (``async for event in client``) for outcomes
    and other events; they arrive in the scheduler's order, which is ``utterance_index`` order for outcomes.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        config: SessionConfig,
        *,
        heartbeat_interval: float = 30.0,
        backoff: Backoff | None = None,
        reconnect: bool = True,
        open_timeout: float = 5.0,
        ack_timeout: float = 10.0,
        ui_events: bool = False,
        asr_partials: bool = True,
        send_timestamps: bool = True,
        key: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.urls = [session_url(u) for u in ([urls] if isinstance(urls, str) else urls)]
        self.key = key  # the client key, sent as ?key= (never part of the URLs shown)
        self._tls = tls_context(ca_file) if any(u.startswith("wss:") for u in self.urls) else None
        if not self.urls:
            raise ValueError("SessionClient needs at least one scheduler URL")
        self.config = config
        self.heartbeat_interval = heartbeat_interval
        self.backoff = (backoff or Backoff()) if reconnect else None
        self.open_timeout = open_timeout
        self.ack_timeout = ack_timeout
        self.ui_events = ui_events
        self.asr_partials = asr_partials
        self.send_timestamps = send_timestamps
        #: Server time (ms) of the last ``server_heartbeat``.
        self.last_server_heartbeat_ms: int | None = None
        #: The room the session is in (its code) and its members, as the last room message said.
        self.room_code: str | None = None
        self.room_members: list[p.Participant] = []
        self._link: _Link | None = None
        self._seq = 0
        self._connected = asyncio.Event()
        self._events: asyncio.Queue[SessionEvent | _End | ClientError] = asyncio.Queue()
        self._delivered = _DeliveredSlots()
        # Utterances without an outcome yet: re-sent after a resume, since one written just before a scheduler
        # died may never have been read (the scheduler ignores re-sends of utterances it already holds).
        self._unanswered: dict[int, Callable[[], p.Inbound]] = {}
        self._ended = False
        self._failure: ClientError | None = None
        self._state = "new"  # new -> open -> closing -> closed
        self._close_ack: asyncio.Future[None] | None = None
        self._close_reason = ""
        self._reader: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None

    # -- state ----------------------------------------------------------------------------------------

    @property
    def ack(self) -> p.SessionInitAck:
        """The scheduler's ``session_init_ack`` for the current session."""
        if self._link is None:
            raise SessionClosedError("the session is not open; call connect() first")
        return self._link.ack

    @property
    def session_id(self) -> str:
        """The current session id (it changes when a reconnection was not resumed)."""
        return self.ack.session_id

    @property
    def trace_id(self) -> str:
        return self.ack.trace_id

    @property
    def url(self) -> str:
        """The URL of the scheduler the session is on."""
        if self._link is None:
            raise SessionClosedError("the session is not open; call connect() first")
        return self._link.url

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and self._failure is None and self._state in ("open", "closing")

    # -- opening --------------------------------------------------------------------------------------

    async def connect(self) -> p.SessionInitAck:
        """Open a socket to the first scheduler that answers and create the session (``session_init``).

        Raises ``ConnectError`` naming every URL tried and why it failed.
        """
        if self._state != "new":
            raise SessionClosedError(f"connect() was already called (state {self._state})")
        try:
            self._link = await self._open(resume=None)
        except ConnectError:
            self._state = "closed"
            raise
        self._state = "open"
        self._connected.set()
        self._reader = asyncio.create_task(self._read_loop(), name="dragoman-client reader")
        if self.heartbeat_interval > 0:
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="dragoman-client heartbeat")
        return self._link.ack

    async def _open(self, resume: p.SessionInitAck | None) -> _Link:
        """A socket with a session: a new one, or ``resume``'s session (by its id and its resume token)."""
        problems: list[str] = []
        for url in self.urls:
            try:
                ws = await connect(
                    with_query(url, "key", self.key),
                    create_connection=BatchedWritesConnection,
                    open_timeout=self.open_timeout,
                    max_size=MAX_FRAME_BYTES,
                    close_timeout=2,
                    ssl=self._tls if url.startswith("wss:") else None,
                )
            except (OSError, TimeoutError, WebSocketException) as exc:
                problems.append(f"{url}: {_describe(exc)}")
                continue
            try:
                init = (
                    self.config.init_message(
                        resume.session_id,
                        self._delivered.through(resume.session_id),
                        resume.resume_token,
                        ui_events=self.ui_events,
                    )
                    if resume is not None
                    else self.config.init_message(ui_events=self.ui_events)
                )
                await ws.send(encode_message(init))
                ack, early = await asyncio.wait_for(self._await_ack(ws), self.ack_timeout)
            except (OSError, TimeoutError, WebSocketException) as exc:
                problems.append(f"{url}: no session_init_ack ({_describe(exc)})")
                await ws.close()
                continue
            return _Link(url, ws, ack, early)
        raise ConnectError("could not open a session: " + "; ".join(problems))

    @staticmethod
    async def _await_ack(ws: ClientConnection) -> tuple[p.SessionInitAck, list[str]]:
        early: list[str] = []  # frames before the ack (none from Dragoman); handled after it
        while True:
            raw = await ws.recv()
            if isinstance(raw, bytes):
                continue
            try:
                msg = _decode_server(raw)
            except msgspec.DecodeError:
                early.append(raw)
                continue
            if isinstance(msg, p.SessionInitAck):
                return msg, early
            early.append(raw)

    # -- sending --------------------------------------------------------------------------------------

    async def send_chunk(self, payload: bytes, is_final: bool = False) -> int:
        """Send one ``audio_chunk`` (§5.2) of Plan A Opus bytes; ``is_final`` cuts the utterance here.

        Returns the chunk's ``seq``. While the socket is down this waits for the reconnection; a chunk whose
        send failed is sent again on the new socket.
        """
        data = base64.b64encode(payload).decode("ascii") if payload else ""
        sent_seq = -1

        def build() -> p.AudioChunk:
            nonlocal sent_seq
            sent_seq = self._seq
            self._seq += 1
            return p.AudioChunk(
                session_id=self.session_id,
                seq=sent_seq,
                is_final=is_final,
                payload=data,
                client_timestamp_ms=now_ms() if self.send_timestamps else None,
            )

        await self._send(build)
        return sent_seq

    async def send_utterance(
        self,
        index: int,
        audio: bytes,
        audio_format: str = "pcm16",
        sample_rate: int = 16000,
        *,
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        manual_cut: bool = True,
        pipeline: p.PipelineConfig | None = None,
        dialect: str | None = None,
        features: p.FeatureFlags | None = None,
        trace_id: str | None = None,
    ) -> None:
        """Send a whole utterance (§5.3): ``audio`` is raw s16le (``"pcm16"``) or Plan A (``"opus"``).

        The client chooses ``index``; the scheduler dispatches indices in increasing order and rejects a used
        one. The languages default to the session's.
        """
        data = base64.b64encode(audio).decode("ascii")

        def build() -> p.Utterance:
            return p.Utterance(
                session_id=self.session_id,
                utterance_index=index,
                manual_cut=manual_cut,
                src_lang=src_lang or self.config.src_lang,
                tgt_lang=tgt_lang or self.config.tgt_lang,
                audio=data,
                audio_format=audio_format,
                sample_rate=sample_rate,
                dialect=dialect,
                features=features,
                trace_id=trace_id,
                pipeline=pipeline,
            )

        self._unanswered[index] = build
        await self._send(build)

    # -- rooms (§13) ----------------------------------------------------------------------------------
    # The replies (room_create_ack, room_members, room_error...) come in the event stream.

    async def create_room(self, preferred_lang: str | None = None, display_name: str | None = None) -> None:
        """Create a room with this session as its first member; ``preferred_lang``: the language this member
        receives the others' speech in."""
        msg = p.RoomCreate(client_ts=now_ms(), display_name=display_name, preferred_lang=preferred_lang)
        await self._send(lambda: msg)

    async def join_room(
        self, room_code: str, preferred_lang: str | None = None, display_name: str | None = None
    ) -> None:
        msg = p.RoomJoin(room_code=room_code, display_name=display_name, preferred_lang=preferred_lang)
        await self._send(lambda: msg)

    async def leave_room(self, room_code: str | None = None) -> None:
        """Leave the room (by default the one the session is in)."""
        code = room_code or self.room_code
        if code is None:
            raise SessionClosedError("the session is in no room")
        await self._send(lambda: p.RoomLeave(room_code=code))
        if code == self.room_code:
            self.room_code, self.room_members = None, []

    async def set_raw_voice(self, target_session_id: str, receive: bool) -> None:
        """Whether this member receives the raw (WebRTC) voice of another member."""
        code = self.room_code
        if code is None:
            raise SessionClosedError("the session is in no room")
        msg = p.RoomRawVoicePreference(room_code=code, target_session_id=target_session_id, receive_raw_voice=receive)
        await self._send(lambda: msg)

    async def send_webrtc(self, kind: str, to: str, payload: Any) -> None:
        """WebRTC signalling for another member, relayed by the scheduler: ``kind`` ``"offer"`` or ``"answer"``
        (``payload`` is the RTCSessionDescriptionInit) or ``"ice"`` (the candidate)."""
        code = self.room_code
        if code is None:
            raise SessionClosedError("the session is in no room")
        msg: p.RoomMessage
        if kind == "offer":
            msg = p.WebrtcOffer(room_code=code, to=to, sdp=payload)
        elif kind == "answer":
            msg = p.WebrtcAnswer(room_code=code, to=to, sdp=payload)
        elif kind == "ice":
            msg = p.WebrtcIce(room_code=code, to=to, candidate=payload)
        else:
            raise ValueError(f"kind must be offer, answer or ice, not {kind!r}")
        await self._send(lambda: msg)

    async def _send(self, build: Callable[[], p.Inbound]) -> None:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._state not in ("open", "closing"):
                raise SessionClosedError(f"the session is {self._state}")
            await self._connected.wait()
            link = self._link
            if self._failure is not None or link is None:
                continue
            try:
                await link.ws.send(encode_message(build()))
                return
            except ConnectionClosed:
                # The reader sees the same close and reconnects; wait for it, then send again.
                if self._link is link:
                    self._connected.clear()

    # -- receiving ------------------------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[SessionEvent]:
        return self.events()

    async def events(self) -> AsyncIterator[SessionEvent]:
        """Events until the session is closed. Raises ``ConnectionLostError`` if reconnecting failed."""
        while True:
            try:
                yield await self.recv()
            except _StreamEnded:
                return

    async def recv(self, timeout: float | None = None) -> SessionEvent:
        """The next event. Raises ``TimeoutError`` after ``timeout`` seconds, ``SessionClosedError`` when the
        session is over, and ``ConnectionLostError`` if reconnecting failed."""
        if self._ended:
            raise _StreamEnded("the session is closed and every event was received")
        item = await asyncio.wait_for(self._events.get(), timeout)
        if isinstance(item, _End):
            self._ended = True
            raise _StreamEnded("the session is closed and every event was received")
        if isinstance(item, ClientError):
            self._ended = True
            raise item
        return item

    def _on_frame(self, raw: str) -> None:
        try:
            msg = _decode_server(raw)
        except msgspec.DecodeError as exc:
            kind = None
            with contextlib.suppress(msgspec.DecodeError):
                kind = _decode_type(raw).type
            if kind in _KNOWN_TYPES:
                log.warning("malformed %s from the scheduler (%s): %.200s", kind, exc, raw)
            else:
                log.debug("ignored a %s frame: %.200s", kind, raw)
            return
        if isinstance(msg, p.ServerHeartbeat):
            self.last_server_heartbeat_ms = msg.timestamp
        elif isinstance(msg, p.SessionCloseAck):
            if self._close_ack is not None and not self._close_ack.done() and msg.session_id == self.session_id:
                self._close_ack.set_result(None)
        elif isinstance(msg, p.SessionInitAck):
            log.warning("unexpected session_init_ack for %s", msg.session_id)
        elif isinstance(msg, p.RoomCreateAck | p.RoomMembers | p.RoomExpired):
            if isinstance(msg, p.RoomMembers):
                self.room_members = msg.members
            self.room_code = None if isinstance(msg, p.RoomExpired) else msg.room_code
            self._events.put_nowait(msg)
        elif isinstance(msg, p.UiEvent):
            if self.ui_events:
                self._events.put_nowait(msg)
        elif isinstance(msg, p.ClientAsrPartial):
            if self.asr_partials:
                self._events.put_nowait(msg)
        elif isinstance(msg, p.TranslationResult | p.MissingResult):
            # Outcomes come in index order: every utterance up to this one is answered (a room member's
            # results carry the speaker's session).
            if msg.session_id == self.session_id:
                for index in [i for i in self._unanswered if i <= msg.utterance_index]:
                    del self._unanswered[index]
            # After a resume that follows a scheduler crash, outcomes released just before it may come again
            # (ARCHITECTURE.md, "Delivery marks and crashes"): each slot's outcome is passed on once.
            if self._delivered.add(msg.session_id, msg.utterance_index):
                self._events.put_nowait(msg)
        else:
            self._events.put_nowait(msg)

    async def _read_loop(self) -> None:
        try:
            while True:
                link = self._link
                assert link is not None
                for early in link.extra:
                    self._on_frame(early)
                link.extra.clear()
                with contextlib.suppress(ConnectionClosed):
                    async for frame in link.ws:
                        if isinstance(frame, str):  # binary frames are ignored (F3)
                            self._on_frame(frame)
                if self._state == "closed" or (self._close_ack is not None and self._close_ack.done()):
                    return
                self._connected.clear()
                if self.backoff is None:
                    raise ConnectionLostError(f"the connection to {link.url} was lost")
                log.warning("connection to %s lost; reconnecting", link.url)
                await self._reconnect(link)
        except ClientError as exc:
            self._fail(exc)
        except Exception as exc:  # a bug must not leave callers waiting forever
            log.exception("session client reader failed")
            self._fail(ConnectionLostError(f"the session client failed: {exc}"))

    async def _reconnect(self, old: _Link) -> None:
        assert self.backoff is not None
        previous = old.ack.session_id
        last: ClientError | None = None
        attempts = 0
        for delay in self.backoff.delays():
            attempts += 1
            await asyncio.sleep(delay)
            try:
                link = await self._open(resume=old.ack)
            except ConnectError as exc:
                log.warning("reconnection attempt %d failed: %s", attempts, exc)
                last = exc
                continue
            resumed = link.ack.session_id == previous and link.ack.resumed is not False
            if not resumed:
                self._seq = 0
                self._unanswered.clear()
            self._link = link
            self._events.put_nowait(
                Reconnected(previous_session_id=previous, session_id=link.ack.session_id, resumed=resumed, url=link.url)
            )
            if resumed:
                for index in sorted(self._unanswered):
                    with contextlib.suppress(ConnectionClosed):
                        await link.ws.send(encode_message(self._unanswered[index]()))
            if self._state == "closing":  # close() was waiting for the ack: ask again on the new socket
                with contextlib.suppress(ConnectionClosed):
                    await link.ws.send(
                        encode_message(p.SessionClose(session_id=link.ack.session_id, reason=self._close_reason))
                    )
            self._connected.set()
            return
        raise ConnectionLostError(
            f"the connection to {old.url} was lost and {attempts} reconnection attempts failed: {last}"
        )

    def _fail(self, exc: ClientError) -> None:
        if self._failure is None:
            self._failure = exc
        if self._close_ack is not None and not self._close_ack.done():
            self._close_ack.set_exception(exc)
        self._connected.set()  # wakes blocked senders, which then raise the failure
        self._events.put_nowait(exc)

    async def _heartbeat_loop(self) -> None:
        """``client_heartbeat`` every ``heartbeat_interval`` seconds, as the web client does (§2.4)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            link = self._link
            if link is None or not self.connected:
                continue
            with contextlib.suppress(ConnectionClosed):
                await link.ws.send(
                    encode_message(p.ClientHeartbeat(session_id=link.ack.session_id, timestamp=now_ms()))
                )

    # -- closing --------------------------------------------------------------------------------------

    async def close(self, reason: str = "client_close", timeout: float = 30.0) -> None:
        """End the session the way the mobile app does (§5.6): ``session_close``, then the outstanding outcomes
        (still yielded by the iterator), then ``session_close_ack``; then the socket is closed.

        Raises ``CloseTimeoutError`` if no ack arrives within ``timeout`` seconds (the socket is closed anyway),
        and the connection's failure if it was lost for good.
        """
        if self._state == "new":
            self._state = "closed"
            self._events.put_nowait(_END)
            return
        if self._state != "open":
            return
        self._state = "closing"
        self._close_reason = reason
        self._close_ack = asyncio.get_running_loop().create_future()
        try:
            await self._send(lambda: p.SessionClose(session_id=self.session_id, reason=reason))
            try:
                await asyncio.wait_for(asyncio.shield(self._close_ack), timeout)
            except TimeoutError:
                raise CloseTimeoutError(f"no session_close_ack within {timeout:g}s") from None
        finally:
            await self._shutdown()

    async def abort(self) -> None:
        """Close the socket without ``session_close``, as the web client does; the scheduler discards the
        session and its undelivered outcomes (§6.10), or keeps them for a while for resumption (§18.2)."""
        if self._state in ("open", "closing"):
            await self._shutdown()
        elif self._state == "new":
            self._state = "closed"
            self._events.put_nowait(_END)

    async def _shutdown(self) -> None:
        self._state = "closed"
        reconnecting = not self._connected.is_set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._reader is not None and reconnecting:
            self._reader.cancel()  # waiting out a backoff: nothing more to read
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.ws.close()  # ends the reader's loop
        tasks = {t for t in (self._heartbeat, self._reader) if t is not None}
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=3)  # asyncio.wait never raises the tasks' errors
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._link is not None:  # a reconnection may have opened a socket meanwhile
            with contextlib.suppress(Exception):
                await self._link.ws.close()
        self._connected.clear()
        if self._failure is None:
            self._events.put_nowait(_END)

    async def __aenter__(self) -> SessionClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None and self._failure is None:
            await self.close()
        else:
            await self.abort()


class _StreamEnded(SessionClosedError):
    """Raised by ``recv`` once the event stream is over (ends ``async for``)."""


def _describe(exc: BaseException) -> str:
    """A short reason for a failed connection attempt."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} on the WebSocket upgrade"
    if isinstance(exc, InvalidURI):
        return f"invalid URL ({exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionClosed):
        return "the connection was closed"
    if isinstance(exc, OSError):  # asyncio's strerror repeats the address; the errno's text says what happened
        return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or type(exc).__name__)
    return str(exc) or type(exc).__name__
