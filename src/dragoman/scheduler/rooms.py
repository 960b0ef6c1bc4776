"""Rooms (PROTOCOL.md §13): multi-party translated conversations and WebRTC signalling, any member on any
instance.

A room lives in the store under a tag of its own (``{room:<id>}``: its record and members), each change one
script (store/lua/room_*.lua); its code is looked up through ``{roomcode:<code>}``, claimed with SET NX. A
member's frames go to its socket if this instance holds it, else to the inbox of the instance named in its
member record (``RoomFrame``).

Each member's actor keeps a ``Membership``: its view of the room (the members as the last ``room_members``
told it), the WebRTC relay, and the delivery streams of its own speech: one per target language of the other
members (§12.3), each releasing its outcomes in utterance order, with the gap timeout, to the members of that
language at release time. The speaker gets none of them (§11.1).
"""

from __future__ import annotations

import logging
import secrets
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import msgspec

from dragoman import protocol as p
from dragoman.scheduler import metrics
from dragoman.scheduler.jobs import Affinity
from dragoman.scheduler.ordering import Ordered, Slot
from dragoman.scheduler.store import RoomFrame, RoomMember, RoomState, SessionSnapshot
from dragoman.scheduler.store_errors import store_unavailable

if TYPE_CHECKING:
    from dragoman.scheduler.connection import Connection
    from dragoman.scheduler.instance import Scheduler
    from dragoman.scheduler.session import SessionActor

log = logging.getLogger(__name__)

# lingua's texts (§13.2)
NOT_FOUND_TEXT = "房间不存在"  # the room does not exist
ALREADY_TEXT = "已在房间中"  # already in a room
EXPIRED_TEXT = "30分钟无人发言，房间已过期"  # no one spoke for 30 minutes, the room has expired
CODE_ATTEMPTS = 32  # random codes tried for a new room (900,000 values: a clash is rare until rooms are many)
MAX_NAME_CHARS = 128  # a member's display_name (every member gets it with every change of the room)
MAX_LANG_CHARS = 32  # a preferred_lang (a language code)


def _mono_ms() -> float:
    return time.monotonic() * 1000


def joined_at_now() -> str:
    """RFC 3339 UTC with microseconds, as lingua's ``joined_at``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class RoomView(msgspec.Struct, frozen=True):
    """A room as one member last heard of it."""

    room_id: str
    code: str
    members: list[RoomMember]
    version: int  # the room's change count when this view was taken

    @classmethod
    def of(cls, state: RoomState) -> RoomView:
        members = sorted(state.members, key=lambda m: (m.joined_at, m.session_id))
        return cls(state.room_id, state.code, members, state.version)

    def member(self, session: str) -> RoomMember | None:
        return next((m for m in self.members if m.session_id == session), None)

    def frame(self) -> bytes:
        participants = [
            p.Participant(
                participant_id=m.session_id,
                session_id=m.session_id,
                joined_at=m.joined_at,
                display_name=m.display_name,
                preferred_lang=m.preferred_lang,
                raw_voice_preferences=m.raw_voice_preferences or None,
            )
            for m in self.members
        ]
        return p.encode(p.RoomMembers(room_code=self.code, members=participants))


_encode_view = msgspec.json.encode
_decode_view = msgspec.json.Decoder(RoomView).decode


@dataclass(slots=True)
class RoomEvent:
    """A frame for this member (on its actor's queue); ``room`` and ``only_in`` as in ``RoomFrame``. No
    frame: this instance was taken over while it was paused, and the member must join its room again."""

    frame: bytes
    room: str | None
    only_in: str = ""


@dataclass(slots=True)
class _Stream:
    """The delivery stream of one speaker and one target language (§12.3)."""

    slots: Ordered = field(default_factory=lambda: Ordered(_mono_ms()))
    affinity: Affinity = field(default_factory=Affinity)


class JoinLimiter:
    """Failed joins of one socket: at most ``limit`` per ``window_ms`` (room codes are guessable). The sockets
    of one client key also share a budget in the store (``Store.take_join_attempt``)."""

    def __init__(self, limit: int, window_ms: int) -> None:
        self.window_ms = window_ms
        self.limit = limit
        self._failures: deque[float] = deque(maxlen=max(limit, 1))

    def retry_after_ms(self, now: float) -> int:
        while self._failures and self._failures[0] + self.window_ms <= now:
            self._failures.popleft()
        if self.limit and len(self._failures) >= self.limit:
            return int(self._failures[0] + self.window_ms - now) + 1
        return 0

    def failed(self, now: float) -> None:
        self._failures.append(now)


_limiters: weakref.WeakKeyDictionary[Connection, JoinLimiter] = weakref.WeakKeyDictionary()


class Rooms:
    """The instance's side of rooms: frames to members wherever they are held, and the idle sweep."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self._client_keys: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
        metrics.ROOM_MEMBERS.read = lambda: sum(1 for a in scheduler.sessions.values() if a.room.view is not None)

    def admitted_by_key(self, conn: Connection, client_key: str) -> None:
        """``conn`` presented the client key named ``client_key``: its failed joins count against the key too."""
        self._client_keys[conn] = client_key

    def client_key(self, conn: Connection) -> str:
        """The name of the client key ``conn`` was admitted with; "" without one (no authentication, or a
        browser admitted by its Origin: any page may claim one, and a shared budget would let one lock out all)."""
        return self._client_keys.get(conn, "")

    async def send(self, members: list[RoomMember], frame: bytes, room: str | None = None, only_in: str = "") -> int:
        """A frame for members: each one's actor if held here, else one post to each other instance that holds
        some of them. Returns how many could be reached (a member whose socket is gone here cannot).
        ``only_in``: a room id; a member no longer in it when the frame arrives does not get it."""
        remote: dict[str, list[str]] = {}
        reached = 0
        for member in members:
            actor = self.scheduler.sessions.get(member.session_id)
            if actor is not None:
                actor.room.receive(frame, room, only_in)
                reached += 1
            elif member.instance and member.instance != self.scheduler.instance_id:
                remote.setdefault(member.instance, []).append(member.session_id)
        for instance, sessions in remote.items():
            await self.scheduler.store.post(instance, RoomFrame(sessions, frame.decode(), room, only_in))
            reached += len(sessions)
        return reached

    def received(self, message: RoomFrame) -> None:
        """A frame another instance posted for members held here (dropped for those that are gone)."""
        frame = message.frame.encode()
        for session in message.sessions:
            actor = self.scheduler.sessions.get(session)
            if actor is not None:
                actor.room.receive(frame, message.room, message.only_in)

    async def broadcast(self, view: RoomView, skip: str = "") -> None:
        """``room_members`` to every member (but ``skip``), each also learning the room's new state."""
        others = [m for m in view.members if m.session_id != skip]
        await self.send(others, view.frame(), _encode_view(view).decode())

    def rejoin_all(self) -> None:
        """This instance was taken over (paused past its presence) and is back: the taker took its members
        out of their rooms, so each joins its room again (in its own actor)."""
        for actor in list(self.scheduler.sessions.values()):
            if actor.room.view is not None:
                actor.room_event(RoomEvent(b"", None))

    async def instance_gone(self, instance: str) -> None:
        """A dead instance's members are out of their rooms; the others get ``room_members``."""
        for state in await self.scheduler.store.drop_instance_members(instance):
            metrics.ROOM_EVENTS.inc("left")
            await self.broadcast(RoomView.of(state))

    async def sweep(self) -> None:
        """Expire rooms idle for ``room_idle_ms``: their members get ``room_expired`` (§13.3)."""
        for state in await self.scheduler.store.expire_rooms():
            metrics.ROOM_EVENTS.inc("expired")
            frame = p.encode(p.RoomExpired(room_code=state.code, message=EXPIRED_TEXT))
            try:
                await self.send(state.members, frame, "", only_in=state.room_id)
            except Exception as exc:  # best effort: a member that is not told finds the room gone
                log.warning("room %s: room_expired not sent to every member: %s", state.code, exc)


class Membership:
    """One session's part in rooms, owned by its actor (only the actor's task calls it, except ``receive``)."""

    def __init__(self, actor: SessionActor, resumed: SessionSnapshot | None) -> None:
        self.actor = actor
        self.view: RoomView | None = None
        self._left: RoomView | None = None  # the room just left: its listeners still get what is in flight
        self._streams: dict[str, _Stream] = {}
        self._by_job: dict[str, tuple[str, int]] = {}
        self._touched = 0.0
        # (room id, version) of the newest room news this member has: broadcasts of concurrent changes may
        # arrive out of order (from several instances), and an older one is dropped.
        self._known = ("", 0)
        self._rejoin = (resumed.room, resumed.member) if resumed is not None and resumed.room else None

    @property
    def _scheduler(self) -> Scheduler:
        return self.actor.scheduler

    def _send(self, frame: bytes) -> None:
        self.actor.conn.send_nowait(frame)

    def _error(self, code: str, message: str) -> None:
        self._send(p.encode(p.RoomError(code=code, message=message)))

    # -- frames from the room (any task) --------------------------------------------------------------

    def receive(self, frame: bytes, room: str | None, only_in: str = "") -> None:
        self.actor.room_event(RoomEvent(frame, room, only_in))

    async def on_event(self, event: RoomEvent) -> None:
        if not event.frame:
            await self._back_in_room()
            return
        if event.only_in and (self.view is None or self.view.room_id != event.only_in):
            return  # a result, relay or expiry of a room this member has left
        if event.room == "":
            self.view = None
        elif event.room is not None:
            view = _decode_view(event.room)
            if view.room_id == self._known[0] and view.version <= self._known[1]:
                return  # older than what this member knows
            self._learn(view)
            if view.member(self.actor.id) is not None:
                self.view = view
        self._send(event.frame)

    def _learn(self, view: RoomView) -> None:
        if view.room_id != self._known[0] or view.version > self._known[1]:
            self._known = (view.room_id, view.version)

    # -- client messages ------------------------------------------------------------------------------

    async def handle(self, msg: p.RoomMessage) -> None:
        """One room message; a failure is answered with ``room_error INTERNAL_ERROR`` (§13.1)."""
        try:
            if isinstance(msg, p.RoomCreate):
                await self._create(msg)
            elif isinstance(msg, p.RoomJoin):
                await self._join(msg)
            elif isinstance(msg, p.RoomLeave):
                if self.view is None or msg.room_code != self.view.code:
                    self._error("ROOM_NOT_FOUND", NOT_FOUND_TEXT)
                elif not await self.leave():
                    self._error("INTERNAL_ERROR", "room_leave failed: the store is unavailable")
            elif isinstance(msg, p.RoomRawVoicePreference):
                await self._raw_voice(msg)
            elif isinstance(msg, p.WebrtcOffer | p.WebrtcAnswer | p.WebrtcIce):
                await self._relay(msg)
        except Exception as exc:
            if store_unavailable(exc):
                self._scheduler.store_failed(exc)
            else:
                log.exception("session %s: %s failed", self.actor.id, type(msg).__name__)
            self._error("INTERNAL_ERROR", f"room operation failed: {exc}")

    def _refused_member(self, display_name: str | None, preferred_lang: str | None) -> bool:
        """Answer a display name or language too long to be kept in the room (True: refused)."""
        if display_name is not None and len(display_name) > MAX_NAME_CHARS:
            self._error("INTERNAL_ERROR", f"display_name is longer than {MAX_NAME_CHARS} characters")
        elif preferred_lang is not None and len(preferred_lang) > MAX_LANG_CHARS:
            self._error("INTERNAL_ERROR", f"preferred_lang is longer than {MAX_LANG_CHARS} characters")
        else:
            return False
        return True

    def _member(self, display_name: str | None, preferred_lang: str | None) -> RoomMember:
        return RoomMember(
            session_id=self.actor.id,
            joined_at=joined_at_now(),
            instance=self._scheduler.instance_id,
            display_name=display_name,
            preferred_lang=preferred_lang,
        )

    async def _create(self, msg: p.RoomCreate) -> None:
        if not self._may_enter(msg.display_name, msg.preferred_lang):
            return
        store = self._scheduler.store
        room_id = p.new_uuid()
        for _ in range(CODE_ATTEMPTS):
            code = str(100_000 + secrets.randbelow(900_000))
            if await store.claim_room_code(code, room_id):
                break
        else:
            self._error("INTERNAL_ERROR", "no free room code; try again")
            return
        member = self._member(msg.display_name, msg.preferred_lang)
        state = await store.create_room(room_id, code, member)
        if state.status != "created":
            raise RuntimeError(f"room {room_id} exists already")
        metrics.ROOM_EVENTS.inc("created")
        self._send(p.encode(p.RoomCreateAck(room_code=code, room_id=room_id)))
        await self._entered(RoomView.of(state), member)

    def _may_enter(self, display_name: str | None, preferred_lang: str | None) -> bool:
        """Not in a room already, and a member record that can be kept (else the error is sent)."""
        if self.view is not None:
            self._error("ALREADY_IN_ROOM", ALREADY_TEXT)
            return False
        return not self._refused_member(display_name, preferred_lang)

    async def _entered(self, view: RoomView, member: RoomMember) -> None:
        """This session is in ``view`` now: it and every other member get ``room_members``."""
        self.view, self._left = view, None
        self._learn(view)
        self._send(view.frame())
        await self._scheduler.rooms.broadcast(view, skip=self.actor.id)
        await self._scheduler.store.set_session_room(self.actor.id, view.room_id, msgspec.json.encode(member))

    async def _join(self, msg: p.RoomJoin) -> None:
        settings = self.actor.settings
        limiter = _limiters.get(self.actor.conn)
        if limiter is None:
            limiter = JoinLimiter(settings.room_join_failures, settings.room_join_window_ms)
            _limiters[self.actor.conn] = limiter
        now = _mono_ms()
        if wait := limiter.retry_after_ms(now):
            metrics.ROOM_EVENTS.inc("join_limited")
            self._error("INTERNAL_ERROR", f"too many failed room joins from this connection; retry in {wait} ms")
            return
        if not self._may_enter(msg.display_name, msg.preferred_lang):
            return
        store = self._scheduler.store
        # The key's budget is taken before the lookup and given back unless the code was wrong (or the store
        # failed meanwhile): concurrent joins of the key's sockets cannot overrun it.
        client_key = self._scheduler.rooms.client_key(self.actor.conn) if settings.room_join_key_failures else ""
        if client_key:
            budget, window = settings.room_join_key_failures, settings.room_join_window_ms
            if wait := await store.take_join_attempt(client_key, budget, window):
                metrics.ROOM_EVENTS.inc("join_limited")
                self._error("INTERNAL_ERROR", f"too many failed room joins with this client key; retry in {wait} ms")
                return
        room_id = await store.room_of_code(msg.room_code) if msg.room_code.isdigit() else None
        member = self._member(msg.display_name, msg.preferred_lang)
        state = await store.join_room(room_id, member) if room_id else None
        if client_key and state is not None and state.status != "not_found":
            await store.give_back_join_attempt(client_key)
        if state is None or state.status == "not_found":
            limiter.failed(now)
            metrics.ROOM_EVENTS.inc("join_failed")
            self._error("ROOM_NOT_FOUND", NOT_FOUND_TEXT)
        elif state.status == "already":
            self._error("ALREADY_IN_ROOM", ALREADY_TEXT)
        elif state.status == "full":
            metrics.ROOM_EVENTS.inc("full")
            self._error("ROOM_FULL", f"the room is full ({settings.room_max_members} members)")
        else:
            metrics.ROOM_EVENTS.inc("joined")
            # lingua's web client takes a room's code only from room_create_ack: without one a joiner ignores
            # every room_members (and so WebRTC offers) and never shows the room. The ack tells it the code.
            self._send(p.encode(p.RoomCreateAck(room_code=state.code, room_id=state.room_id)))
            await self._entered(RoomView.of(state), member)

    async def leave(self, for_resume: bool = False) -> bool:
        """Leave the room (room_leave, session_close, socket closed); the others get ``room_members``. A
        socket that closed keeps the room in the session's record (``for_resume``): a resume rejoins it.
        False if the store could not be told (the member then goes with the room's expiry)."""
        view = self.view
        if view is None:
            return True
        self.view, self._left = None, view
        store = self._scheduler.store
        try:
            state = await store.leave_room(view.room_id, self.actor.id)
            self._learn(RoomView.of(state))
            if not for_resume:
                await store.set_session_room(self.actor.id, "", b"")
            metrics.ROOM_EVENTS.inc("left")
            if state.status == "left":
                await self._scheduler.rooms.broadcast(RoomView.of(state))
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self._scheduler.store_failed(exc)
            return False
        return True

    async def rejoin(self) -> None:
        """A resumed session goes back into the room its socket left (if the room still exists)."""
        if self._rejoin is None:
            return
        room_id, raw = self._rejoin
        self._rejoin = None
        await self._join_again(room_id, msgspec.json.decode(raw, type=RoomMember))

    async def _back_in_room(self) -> None:
        """This instance was taken over while paused, and its members taken out of their rooms: join again."""
        view = self.view
        me = view.member(self.actor.id) if view is not None else None
        if view is not None and me is not None:
            self.view = None
            await self._join_again(view.room_id, me)

    async def _join_again(self, room_id: str, member: RoomMember) -> None:
        """Join a room this session was in, with its member record (held here now); if the room is gone the
        session is in no room."""
        store = self._scheduler.store
        try:
            member = msgspec.structs.replace(member, instance=self._scheduler.instance_id)
            state = await store.join_room(room_id, member, rejoin=True)
            if state.status == "joined":
                await self._entered(RoomView.of(state), member)
            else:
                await store.set_session_room(self.actor.id, "", b"")
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self._scheduler.store_failed(exc)

    async def _raw_voice(self, msg: p.RoomRawVoicePreference) -> None:
        if self.view is None or msg.room_code != self.view.code:
            self._error("INTERNAL_ERROR", f"not in room {msg.room_code}")
            return
        state = await self._scheduler.store.set_raw_voice(
            self.view.room_id, self.actor.id, msg.target_session_id, msg.receive_raw_voice
        )
        if state.status != "updated":
            self._error("INTERNAL_ERROR", f"raw voice preference not stored: {state.status}")
            return
        self.view = RoomView.of(state)
        self._learn(self.view)
        self._send(self.view.frame())
        await self._scheduler.rooms.broadcast(self.view, skip=self.actor.id)

    async def _relay(self, msg: p.WebrtcOffer | p.WebrtcAnswer | p.WebrtcIce) -> None:
        """Forward WebRTC signalling to another member of the same room, ``to`` rewritten to the sender;
        not forwarded when the receiver muted the sender (§13.1)."""
        if self.view is None or msg.room_code != self.view.code:
            self._error("ROOM_NOT_FOUND", NOT_FOUND_TEXT)
            return
        target = self.view.member(msg.to)
        if target is None or target.session_id == self.actor.id:
            self._error("INTERNAL_ERROR", f"{msg.to} is not another member of room {msg.room_code}")
            return
        if target.raw_voice_preferences.get(self.actor.id) is False:
            metrics.ROOM_EVENTS.inc("relay_muted")
            return
        me = self.actor.id
        frame: p.Outbound
        if isinstance(msg, p.WebrtcOffer):
            frame = p.RelayedOffer(room_code=msg.room_code, to=me, sdp=msg.sdp)
        elif isinstance(msg, p.WebrtcAnswer):
            frame = p.RelayedAnswer(room_code=msg.room_code, to=me, sdp=msg.sdp)
        else:
            frame = p.RelayedIce(room_code=msg.room_code, to=me, candidate=msg.candidate)
        sent = await self._scheduler.rooms.send([target], p.encode(frame), only_in=self.view.room_id)
        metrics.ROOM_EVENTS.inc("relayed" if sent else "relay_offline")

    # -- translation fan-out and delivery (§11.1, §12.3) --------------------------------------------

    def targets(self) -> list[str] | None:
        """The target languages of this session's next utterance: every distinct ``preferred_lang`` of the
        other members; None (its own job, as outside rooms) outside a room, alone in one, or when no other
        member has a ``preferred_lang``, as lingua does (its web client's room page never sends one)."""
        if self.view is None:
            return None
        langs = {m.preferred_lang for m in self.view.members if m.session_id != self.actor.id and m.preferred_lang}
        return sorted(langs) if langs else None

    def add(self, lang: str, slot: Slot, turn: str) -> tuple[str, ...]:
        """A room job's slot in its language's stream; returns the nodes it should prefer."""
        stream = self._streams.setdefault(lang, _Stream())
        stream.slots.add(slot, _mono_ms())
        self._by_job[slot.job_id] = (lang, slot.index)
        return stream.affinity.prefer(turn)

    def placed(self, lang: str, slot: Slot, old_job_id: str, node: str | None, turn: str) -> None:
        """The store answered for the slot's job (maybe another job id: the slot had one), on ``node``."""
        if old_job_id != slot.job_id:
            self._by_job.pop(old_job_id, None)
            self._by_job[slot.job_id] = (lang, slot.index)
        stream = self._streams.get(lang)
        if node is not None and stream is not None:
            stream.affinity.placed(turn, node)

    def slot(self, job_id: str) -> Slot | None:
        where = self._by_job.get(job_id)
        if where is None:
            return None
        stream = self._streams.get(where[0])
        return stream.slots.get(where[1]) if stream is not None else None

    def unresolved(self) -> list[Slot]:
        return [slot for stream in self._streams.values() for slot in stream.slots.unresolved()]

    def idle(self) -> bool:
        return not any(st.slots for st in self._streams.values())

    def deadline(self) -> float | None:
        gap = self.actor.settings.gap_timeout_ms
        due = [d for stream in self._streams.values() if (d := stream.slots.gap_deadline(gap)) is not None]
        return min(due, default=None)

    async def on_wake(self, now: float) -> None:
        gap = self.actor.settings.gap_timeout_ms
        for stream in self._streams.values():
            due = stream.slots.gap_deadline(gap)
            head = stream.slots.head()
            if due is not None and now >= due and head is not None:
                metrics.GAP_TIMEOUTS.inc()
                await self.actor._give_up([head], "gap_timeout")

    async def release(self) -> None:
        """Send each stream's resolved head slots, in index order, to the members of its language."""
        audience = self.view or self._left
        released = False
        for lang, stream in self._streams.items():
            while (slot := stream.slots.pop_released(_mono_ms())) is not None:
                self._by_job.pop(slot.job_id, None)
                frames = slot.frames or self.actor._outcome_frames(slot)
                released = True
                if audience is None:
                    continue
                listeners = [m for m in audience.members if m.preferred_lang == lang and m.session_id != self.actor.id]
                for frame in frames:
                    try:
                        await self._scheduler.rooms.send(listeners, frame, only_in=audience.room_id)
                    except Exception as exc:  # the store is down: the copies for other instances are lost
                        self._scheduler.store_failed(exc)
        self._streams = {lang: st for lang, st in self._streams.items() if st.slots}
        if self.idle():
            self._left = None
        if released and self.view is not None:
            await self._touch(self.view.room_id)

    async def _touch(self, room_id: str) -> None:
        """A delivery is room activity (§13.3): recorded at most every 1/30 of ``room_idle_ms``."""
        now = _mono_ms()
        if now - self._touched < self.actor.settings.room_idle_ms / 30:
            return
        self._touched = now
        try:
            await self._scheduler.store.touch_room(room_id)
        except Exception as exc:
            if not store_unavailable(exc):
                raise
            self._scheduler.store_failed(exc)

    async def cancel_all(self, reason: str) -> None:
        """The speaker's socket closed: its room jobs in flight are for nobody now."""
        slots = self.unresolved()
        self._streams.clear()
        self._by_job.clear()
        if slots:
            await self._scheduler.cancel_jobs([(s.job_id, s.cell) for s in slots], reason)
