"""A client session's actor: one asyncio task owns all of the session's local state.

It cuts streamed audio into utterances (``Segmenter``), numbers them, orders one-shot ``utterance``
messages, creates jobs, and releases each slot's single outcome in ``utterance_index`` order with a
bounded wait for a missing one (PROTOCOL.md §10-§12). Others talk to it only through its queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from dragoman import logs
from dragoman import protocol as p
from dragoman.scheduler import frames, jobs, metrics
from dragoman.scheduler.ordering import Ordered, Slot
from dragoman.scheduler.rooms import Membership, RoomEvent
from dragoman.scheduler.segmenter import PADDING_MS, PAUSE_CUTS, Cut, CutReason, Segmenter
from dragoman.scheduler.store import Outcome, SessionSnapshot, assigned_node, now_ms

if TYPE_CHECKING:
    from dragoman.scheduler.instance import Connection, Scheduler

log = logging.getLogger(__name__)


def _mono_ms() -> float:
    return time.monotonic() * 1000


@dataclass(slots=True)
class _Group:
    group_id: str
    parts: int = 0
    closed: bool = False
    play_end_ms: int | None = None


# Events on the actor's queue.
@dataclass(slots=True)
class _Message:
    msg: p.Inbound
    received: float


@dataclass(slots=True)
class _Resolved:
    outcome: Outcome


@dataclass(slots=True)
class _Partial:
    msg: p.NodeAsrPartial


class _Wake:
    pass


class _SocketClosed:
    pass


MAX_HELD_UTTERANCES = 256  # out-of-order utterance messages held at once, waiting for lower indexes

_WAKE = _Wake()
_SOCKET_CLOSED = _SocketClosed()


class SessionActor:
    def __init__(
        self,
        scheduler: Scheduler,
        conn: Connection,
        init: p.SessionInit,
        session_id: str,
        token: str,
        resumed: SessionSnapshot | None = None,
        resume_digest: str = "",
    ) -> None:
        self.scheduler = scheduler
        self.settings = scheduler.settings
        self.conn = conn
        self.id = session_id
        self.init = init
        self.token = token  # names this actor in the session's record (a resume may race it)
        self.resume_digest = resume_digest  # of the token a resume must present (kept in the record)
        self.trace_id = resumed.trace if resumed else (init.trace_id or p.new_uuid())
        # Whether this session gets ui_events: its session_init says so (extension), or the setting does.
        self.ui_events = init.ui_events if init.ui_events is not None else self.settings.ui_events
        self.delivered = -1  # outcomes up to this index have been sent
        self.segmenter = Segmenter(self.settings)
        self.next_index = 0  # the next utterance index (§10.2, §11.3)
        self.slots = Ordered(_mono_ms())  # the unreleased slots
        self._by_job: dict[str, int] = {}
        self._held: dict[int, tuple[p.Utterance, float]] = {}  # utterance messages waiting for lower indices
        self.held_bytes = 0  # their audio, bounded by max_held_bytes_per_session and (all sessions) max_held_bytes
        self._held_since: float | None = None
        self._resumed_below = 0  # utterance indexes a resumed session had taken before it was resumed
        self._group: _Group | None = None
        self._affinity = jobs.Affinity()  # the nodes its next job should prefer
        self._closing_until: float | None = None
        self._closed = False
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.room = Membership(self, resumed)
        if resumed is not None:
            self._restore(resumed)
        self.task = asyncio.create_task(self._run(resumed is None), name=f"session {session_id}")

    def _restore(self, snapshot: SessionSnapshot) -> None:
        """Carry on a resumed session: its numbering, and a slot for every job past what it delivered."""
        self.delivered = snapshot.delivered
        self.next_index = max([snapshot.delivered, *(index for index, _, _ in snapshot.jobs)]) + 1
        self._resumed_below = self.next_index
        now = _mono_ms()
        for index, job_id, record in snapshot.jobs:
            slot = Slot(
                index, job_id, record.cell if record else -1, True, record.pair if record else "", self.trace_id, None
            )
            if record is None:  # its record expired (or was never placed): nothing to deliver but the gap
                slot.frames, slot.resolved_at = [self._missing(slot, "gap_timeout")], now
            elif record.resolved:
                slot.outcome = record.outcome()
                slot.resolved_at = now
            self.slots.add(slot, now)
            self._by_job[job_id] = index

    # -- the actor's inbox (called from other tasks) ----------------------------------------------

    def submit(self, msg: p.Inbound, received: float) -> None:
        self._queue.put_nowait(_Message(msg, received))

    def resolve(self, outcome: Outcome) -> None:
        self._queue.put_nowait(_Resolved(outcome))

    def partial(self, msg: p.NodeAsrPartial) -> None:
        self._queue.put_nowait(_Partial(msg))

    def socket_closed(self) -> None:
        self._queue.put_nowait(_SOCKET_CLOSED)

    def room_event(self, event: RoomEvent) -> None:
        self._queue.put_nowait(event)

    def notify(self, job_id: str, event: str, error_code: str | None = None) -> None:
        """A ui_event for one of this session's unresolved jobs, sent at once (any task may call this)."""
        slot = self._slot(job_id)
        if slot is not None and slot.resolved_at is None:
            self._send_ui(slot, event, error_code=error_code)

    # -- the actor ----------------------------------------------------------------------------------

    async def _run(self, new: bool) -> None:
        logs.bind(session_id=self.id, trace_id=self.trace_id)  # on every line this session's task logs
        if new:
            try:  # the session's record: who holds it (routing), and what resuming it needs (§18.2)
                init = msgspec.json.encode(self.init)
                await self.scheduler.store.open_session(
                    self.id, self.scheduler.instance_id, self.token, init, self.trace_id, self.resume_digest
                )
            except Exception as exc:
                self.scheduler.store_failed(exc)
        else:
            await self.room.rejoin()
            await self._release()  # what the session missed while it was away
        while not self._closed:
            event = await self._queue.get()
            try:
                await self._handle(event)
            except Exception as exc:  # principle 3: report, go on, never wedge
                log.exception("session %s: failed to handle %s", self.id, type(event).__name__)
                if isinstance(event, _Message):
                    await self.send(
                        p.encode(p.Error(code="INTERNAL_ERROR", message=f"Failed to process message: {exc}"))
                    )
            if not self._closed:
                self._rearm()

    async def _handle(self, event: Any) -> None:
        if isinstance(event, _Message):
            await self._on_message(event.msg, event.received)
        elif isinstance(event, _Resolved):
            self._on_outcome(event.outcome)
        elif isinstance(event, _Partial):
            self._on_partial(event.msg)
        elif isinstance(event, _Wake):
            await self._on_wake()
        elif isinstance(event, _SocketClosed):
            await self._detach()
        elif isinstance(event, RoomEvent):
            await self.room.on_event(event)
        await self._release()

    def _rearm(self) -> None:
        deadlines = [self.segmenter.timer_deadline(), self._gap_deadline(), self.room.deadline(), self._closing_until]
        if self._held_since is not None:
            deadlines.append(self._held_since + self.settings.utterance_reorder_ms)
        due = min((d for d in deadlines if d is not None), default=None)
        if due == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = None
        if due is not None:
            delay = max(0.0, (due - _mono_ms()) / 1000)
            self._timer = asyncio.get_running_loop().call_later(delay, self._wake)

    def _wake(self) -> None:
        self._timer = self._timer_at = None
        self._queue.put_nowait(_WAKE)

    async def _on_wake(self) -> None:
        now = _mono_ms()
        for cut in self.segmenter.on_timer(now):
            await self._create_from_cut(cut, now)
        if self._held_since is not None and now >= self._held_since + self.settings.utterance_reorder_ms:
            await self._dispatch_held(force=True)
        gap = self._gap_deadline()
        if gap is not None and now >= gap:
            head = self.slots.head()
            assert head is not None  # a gap deadline is the head's
            metrics.GAP_TIMEOUTS.inc()
            await self._give_up([head], "gap_timeout")
        await self.room.on_wake(now)
        if self._closing_until is not None and now >= self._closing_until:
            await self._give_up(self.slots.unresolved() + self.room.unresolved(), "session_close")

    # -- client messages ----------------------------------------------------------------------------

    async def _on_message(self, msg: p.Inbound, received: float) -> None:
        if isinstance(msg, p.AudioChunk):
            payload = p.decode_base64(msg.payload) if msg.payload else b""
            if payload is None:
                log.warning("session %s: undecodable audio_chunk payload (seq %s) treated as empty", self.id, msg.seq)
                payload = b""
            now = _mono_ms()
            for cut in self.segmenter.on_chunk(payload, msg.is_final, now, msg.client_timestamp_ms):
                await self._create_from_cut(cut, received)
        elif isinstance(msg, p.Utterance):
            await self._on_utterance(msg, received)
        elif isinstance(msg, p.TtsStarted):
            self.segmenter.on_tts_started(_mono_ms())
        elif isinstance(msg, p.TtsPlayEnded):
            self.segmenter.on_tts_ended(_mono_ms())
            if self._group is not None and self._group.group_id == msg.group_id:
                self._group.play_end_ms = msg.ts_end_ms
        elif isinstance(msg, p.SessionClose):
            await self._on_close()
        elif isinstance(msg, p.RoomMessage):
            await self.room.handle(msg)

    async def _on_utterance(self, msg: p.Utterance, received: float) -> None:
        i = msg.utterance_index
        if i < self._resumed_below:
            return  # a resumed client sends again what it had no outcome for: accepted before the resume
        if i < self.next_index or i in self._held:
            await self.send(p.encode(p.Error(code="INVALID_MESSAGE", message=f"utterance_index {i} already used")))
            return
        audio = p.decode_base64(msg.audio)
        if not audio:
            await self.send(
                p.encode(p.Error(code="INTERNAL_ERROR", message="Failed to process message: Audio decode failed"))
            )
            return
        if i != self.next_index and (refused := self._over_held_budget(len(msg.audio))):
            message = f"Failed to process message: utterance_index {i} not held: {refused}"
            await self.send(p.encode(p.Error(code="INTERNAL_ERROR", message=message)))
            return
        if len(self._held) >= MAX_HELD_UTTERANCES:  # bounded: a client far ahead waits no longer
            await self._dispatch_held(force=True)
        self._held[i] = (msg, received)
        self.held_bytes += len(msg.audio)
        if self._held_since is None:
            self._held_since = _mono_ms()
        await self._dispatch_held(force=False)

    def _over_held_budget(self, size: int) -> str | None:
        """Why an out-of-order utterance of ``size`` bytes cannot be held (it is refused, not dropped: the
        client may send it again, or send the lower indexes first)."""
        s = self.settings
        if self.held_bytes + size > s.max_held_bytes_per_session:
            return (
                f"this session holds {self.held_bytes} bytes of out-of-order utterances "
                f"waiting for lower indexes (max_held_bytes_per_session {s.max_held_bytes_per_session})"
            )
        held = sum(actor.held_bytes for actor in self.scheduler.sessions.values())  # rare path: no counter to drift
        if held + size > s.max_held_bytes:
            return (
                f"the scheduler holds {held} bytes of out-of-order utterances waiting for lower indexes "
                f"(max_held_bytes {s.max_held_bytes})"
            )
        return None

    async def _dispatch_held(self, force: bool) -> None:
        """Dispatch held utterances in index order: the contiguous ones, or all of them when forced (§11.3)."""
        while self._held:
            low = min(self._held)
            if low != self.next_index and not force:
                break
            msg, received = self._held.pop(low)
            self.held_bytes -= len(msg.audio)
            await self._create_from_utterance(msg, received)
        self._held_since = _mono_ms() if self._held else None

    async def _on_close(self) -> None:
        for cut in self.segmenter.flush():
            await self._create_from_cut(cut, _mono_ms())
        await self._dispatch_held(force=True)
        if self._group is not None:
            self._group.closed = True
        await self.room.leave()
        self._closing_until = _mono_ms() + self.settings.close_grace_ms

    async def _finish_close(self) -> None:
        await self.send(p.encode(p.SessionCloseAck(session_id=self.id)))
        self._stop()
        with contextlib.suppress(Exception):
            await self.scheduler.store.close_session(self.id)

    async def _detach(self) -> None:
        """The socket is gone without session_close. The session stays resumable for ``resume_grace_ms``
        (§18.2): buffered audio is cut and held utterances dispatched, so nothing accepted is lost; running
        jobs go on and their outcomes wait in the store for a resume."""
        for cut in self.segmenter.flush():
            await self._create_from_cut(cut, _mono_ms())
        await self._dispatch_held(force=True)
        self._stop()
        await self.room.leave(for_resume=True)
        await self.room.cancel_all("session_closed")
        try:
            await self.scheduler.store.keep_sessions([(self.id, self.delivered)])
            await self.scheduler.store.claim_session(self.id, self.token, "", "")
        except Exception as exc:  # the record expires by itself
            self.scheduler.store_failed(exc)

    def supersede(self) -> None:
        """The session was resumed by another actor: stop without touching its record."""
        self._stop()
        self._queue.put_nowait(_WAKE)

    def _stop(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.scheduler.sessions.get(self.id) is self:
            del self.scheduler.sessions[self.id]

    # -- jobs -----------------------------------------------------------------------------------------

    def _take_index(self) -> int:
        index = self.next_index
        self.next_index += 1
        return index

    async def _create_from_cut(self, cut: Cut, received: float) -> None:
        s = self.init
        await self._create(
            self._take_index(),
            received,
            src_lang=s.src_lang,
            tgt_lang=s.tgt_lang,
            trace=self.trace_id,
            turn=cut.turn_id,
            streaming=True,
            client_ts=cut.client_timestamp_ms,
            pipeline=p.DEFAULT_PIPELINE,
            audio=base64.b64encode(cut.audio).decode(),
            audio_format="opus",
            sample_rate=16000,
            dialect=s.dialect,
            features=s.features,
            padding_ms=PADDING_MS[cut.reason],
            is_manual_cut=cut.reason in (CutReason.IS_FINAL, CutReason.SESSION_CLOSE),
            is_timeout_triggered=cut.reason in PAUSE_CUTS,
            is_max_duration_triggered=cut.reason is CutReason.MAX_DURATION,
            cut=(cut.reason.value, cut.duration_ms),
        )
        await self._dispatch_held(force=False)  # an utterance message may be waiting for this index

    async def _create_from_utterance(self, msg: p.Utterance, received: float) -> None:
        self.next_index = max(self.next_index, msg.utterance_index + 1)
        await self._create(
            msg.utterance_index,
            received,
            src_lang=msg.src_lang,
            tgt_lang=msg.tgt_lang,
            trace=msg.trace_id or self.trace_id,
            turn=p.new_uuid(),
            streaming=False,
            client_ts=None,
            pipeline=msg.pipeline or p.DEFAULT_PIPELINE,
            audio=msg.audio,
            audio_format=msg.audio_format,
            sample_rate=msg.sample_rate,
            dialect=msg.dialect or self.init.dialect,
            features=msg.features or self.init.features,
            is_manual_cut=True,  # each utterance is a whole turn: without it the node would hold the audio (§11.2)
            cut=("utterance", None),
        )

    async def _create(
        self,
        index: int,
        received: float,
        *,
        src_lang: str,
        tgt_lang: str,
        trace: str,
        turn: str,
        streaming: bool,
        client_ts: int | None,
        cut: tuple[str, int | None],
        **fields: Any,
    ) -> None:
        """Create the jobs of one utterance (``fields``: the job_assign fields of its path, §11.2): its own job,
        or in a room with others one per language of the other members (§11.1), delivered to them. ``cut``:
        why the utterance ended and its audio length, for its trace."""
        targets = self.room.targets()
        if targets is None:
            slot = Slot(index, "", -1, streaming, "", trace, client_ts)
            self.slots.add(slot, _mono_ms())
            node = await self._create_job(
                slot, received, src_lang, tgt_lang, turn, self._affinity.prefer(turn), fields, cut
            )
            if node is not None:
                self._affinity.placed(turn, node)
            return
        for lang in targets:
            slot = Slot(index, p.new_job_id(), -1, streaming, "", trace, client_ts)
            prefer = self.room.add(lang, slot, turn)
            proposed = slot.job_id
            node = await self._create_job(
                slot, received, src_lang, lang, turn, prefer, fields, cut, guard=len(targets) > 1, room=True
            )
            self.room.placed(lang, slot, proposed, node, turn)

    async def _create_job(
        self,
        slot: Slot,
        received: float,
        src_lang: str,
        tgt_lang: str,
        turn: str,
        prefer: tuple[str, ...],
        fields: dict[str, Any],
        cut: tuple[str, int | None],
        guard: bool = False,
        room: bool = False,
    ) -> str | None:
        """Create-or-get the job of one slot and target language; returns the node it went to, if any. A
        failure resolves the slot as failed (B1): the session goes on."""
        if not slot.job_id:
            slot.job_id = p.new_job_id()
        assign = jobs.session_assign(
            self.init, self.id, slot.index, slot.job_id, slot.trace, src_lang, tgt_lang, turn, fields
        )
        spec = jobs.job_spec(
            assign,
            tgt=tgt_lang,
            owner=self.scheduler.instance_id,
            result_ttl_ms=self.settings.session_result_ttl_ms,
            prefer=prefer,
            guard=guard,
            room=room,
        )
        slot.pair = spec.pair
        if not room:
            self._by_job[slot.job_id] = slot.index
        try:
            created = await self.scheduler.create_job(spec)
        except Exception as exc:  # B1: the slot fails, the session goes on
            log.warning("session %s: job creation for index %d failed: %s", self.id, slot.index, exc)
            self.scheduler.store_failed(exc)
            slot.frames = [
                p.encode(p.Error(code="SCHEDULER_DEPENDENCY_DOWN", message=f"Scheduler store unavailable: {exc}"))
            ]
            slot.resolved_at = _mono_ms()
            return None
        if created.job_id != slot.job_id:  # the slot already had a job (a retry): follow that one
            if not room:
                del self._by_job[slot.job_id]
                self._by_job[created.job_id] = slot.index
            slot.job_id = created.job_id
        slot.cell = created.cell
        finalized_ms = now_ms() - round(_mono_ms() - received)
        self.scheduler.traces.cut(self.id, slot.index, slot.job_id, slot.cell, slot.trace, finalized_ms, *cut)
        metrics.dispatched((_mono_ms() - received) / 1000)
        return assigned_node(created.actions, created.job_id)

    async def _give_up(self, slots: list[Slot], reason: str) -> None:
        """Resolve slots as timed out on Dragoman's side (gap timeout, close grace) and cancel their jobs."""
        if not slots:
            return
        for slot in slots:
            slot.outcome = None
            slot.frames = [self._missing(slot, "gap_timeout")]
            slot.resolved_at = _mono_ms()
        await self.scheduler.cancel_jobs([(s.job_id, s.cell) for s in slots], reason)

    # -- outcomes -------------------------------------------------------------------------------------

    def _slot(self, job_id: str) -> Slot | None:
        """The unreleased slot of a job: the session's own, or one of its room streams'."""
        index = self._by_job.get(job_id)
        return self.slots.get(index) if index is not None else self.room.slot(job_id)

    def _on_outcome(self, outcome: Outcome) -> None:
        slot = self._slot(outcome.job_id)
        if slot is None or slot.outcome is not None or slot.frames:
            return  # already resolved here (gap timeout, close): exactly one outcome per slot
        slot.outcome = outcome
        slot.resolved_at = _mono_ms()
        elapsed = max(0, now_ms() - outcome.created_ms)
        if outcome.state == "completed":
            result = slot.result()
            if result.text_asr:
                self._send_ui(slot, "ASR_FINAL", elapsed_ms=elapsed)
            if result.text_translated:
                self._send_ui(slot, "NMT_DONE", elapsed_ms=elapsed)
        elif outcome.state == "failed":
            code = frames.failure(outcome)[0]
            self._send_ui(slot, "ERROR", error_code=code if code in p.ERROR_CODES else None)
        elif outcome.state == "timed_out":
            self._send_ui(slot, "ERROR", error_code="JOB_TIMEOUT")

    def _on_partial(self, msg: p.NodeAsrPartial) -> None:
        slot = self._slot(msg.job_id)
        if slot is None or slot.outcome is not None or slot.frames:
            return
        self._send_nowait(
            p.encode(
                p.ClientAsrPartial(
                    session_id=self.id,
                    utterance_index=slot.index,
                    job_id=slot.job_id,
                    text=msg.text,
                    is_final=msg.is_final,
                    trace_id=slot.trace,
                )
            )
        )
        self._send_ui(slot, "ASR_PARTIAL")

    def _gap_deadline(self) -> float | None:
        """When the head slot, unresolved while a later one waits behind it, is given up (§12.3)."""
        return self.slots.gap_deadline(self.settings.gap_timeout_ms)

    async def _release(self) -> None:
        """Send every resolved slot at the head, in index order."""
        while (slot := self.slots.pop_released(_mono_ms())) is not None:
            self._by_job.pop(slot.job_id, None)
            for frame in slot.frames or self._outcome_frames(slot):
                await self.send(frame)
            self.scheduler.traces.delivered(slot.job_id, slot.cell, slot.index)
            self.delivered = slot.index
            self.scheduler.delivered_dirty.add(self.id)
        await self.room.release()
        if self._closing_until is not None and not self.slots and self.room.idle() and not self._closed:
            await self._finish_close()

    def _outcome_frames(self, slot: Slot) -> list[bytes]:
        outcome = slot.outcome
        assert outcome is not None
        metrics.job_resolved(outcome.job_id, outcome.state, outcome.created_ms, outcome.dispatched_ms)
        now = now_ms()
        if outcome.state == "completed":
            result = slot.result()
            group = self._group_part(now) if result.text_asr else (None, None)
            return [frames.translation_result(self.id, slot.index, outcome, result, slot.client_ts, group, now)]
        if outcome.state == "empty":
            return [self._missing(slot, "silence_detected")]
        if outcome.state == "failed":
            return [frames.failure_error(outcome, slot.pair, slot.streaming)]
        return [self._missing(slot, "gap_timeout")]

    def _group_part(self, now: int) -> tuple[str, int]:
        """The TTS group and part of the next result with text (§12.5): a new group once the last closed, or
        its playback ended more than ``group_window_ms`` ago."""
        g = self._group
        if g is None or g.closed or (g.play_end_ms is not None and now - g.play_end_ms > self.settings.group_window_ms):
            g = self._group = _Group(f"group_{self.id}_{now}")
        g.parts += 1
        return g.group_id, g.parts - 1

    def _missing(self, slot: Slot, reason: Any) -> bytes:
        return frames.missing_result(self.id, slot.index, slot.trace, reason, now_ms())

    def _send_ui(self, slot: Slot, event: str, **extra: Any) -> None:
        """A ``ui_event``, to a session that takes them (``ui_events``): the web client ignores them."""
        if self.ui_events:
            self._send_nowait(frames.ui_event(self.id, slot.index, slot.job_id, slot.trace, event, **extra))

    # -- the socket -----------------------------------------------------------------------------------

    async def send(self, frame: bytes) -> None:
        await self.conn.send(frame)

    def _send_nowait(self, frame: bytes) -> None:
        self.conn.send_nowait(frame)
