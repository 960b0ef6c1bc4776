"""The named contract between the Lua scripts and Python: every script reply, every action it returns and
every message between instances is a versioned msgpack map decoded into one of these typed records.

A script's header comment names the fields it sends; the records below name what the code reads.
"""

from __future__ import annotations

from typing import Literal

import msgspec

VERSION = 1  # of script replies and inbox entries; a reply of another version fails to decode


class Assign(msgspec.Struct, frozen=True, tag_field="a", tag="assign"):
    """Send attempt ``attempt`` of the job to ``node`` (held by ``instance``)."""

    job_id: str
    node: str
    instance: str
    attempt: int
    session: str
    owner: str
    pair: str = ""
    conn: str = ""  # the token of the socket that held the node when it was chosen
    frame: str | None = None  # the stored job_assign after its attempt id; None: the caller has it


class Cancel(msgspec.Struct, frozen=True, tag_field="a", tag="cancel"):
    """Tell ``node`` to stop working on the job (best effort: N11)."""

    job_id: str
    node: str
    instance: str
    trace: str
    reason: str


class Outcome(msgspec.Struct, frozen=True, tag_field="a", tag="outcome"):
    """The job's single outcome. ``detail`` is the node's raw job_result, or Dragoman's error code;
    None in a reply to the call that sent the result (the caller has it)."""

    job_id: str
    state: Literal["completed", "empty", "failed", "timed_out"]
    session: str
    index: int
    owner: str
    trace: str
    created_ms: int
    dispatched_ms: int | None = None
    detail: str | None = msgspec.field(default=None, name="data")


class DropNode(msgspec.Struct, frozen=True, tag_field="a", tag="drop_node"):
    """The node's liveness ran out: close its socket if this instance holds it."""

    node: str
    instance: str


class Notify(msgspec.Struct, frozen=True, tag_field="a", tag="notify"):
    """A ``ui_event`` for a session held by another instance (sent between instances, not by scripts)."""

    session: str
    job_id: str
    event: str
    error_code: str | None = None


class Partial(msgspec.Struct, frozen=True, tag_field="a", tag="partial"):
    """A node's raw ``asr_partial`` for a session held by another instance."""

    session: str
    raw: str


class RoomFrame(msgspec.Struct, frozen=True, tag_field="a", tag="room_frame"):
    """A frame for room members held by another instance, one post for all of them (room_members,
    room_expired, a WebRTC relay, a room result). ``room``: the room as this frame leaves it for the members
    (its id, code, version and members, as JSON), "" when they are no longer in a room, None when it does not
    change. ``only_in``: a room id; a member no longer in that room when the frame arrives does not get it
    (a room result, a relay)."""

    sessions: list[str]
    frame: str
    room: str | None = None
    only_in: str = ""


Action = Assign | Cancel | Outcome | DropNode  # what scripts return
Routed = Assign | Cancel | Outcome | DropNode | Notify | Partial | RoomFrame  # what one instance may post to another


class Envelope(msgspec.Struct, frozen=True):
    """One inbox entry: a versioned message for the instance that reads the inbox. ``hops`` counts how
    often it was posted on (an outcome follows its session to a new owner once)."""

    v: int
    message: Routed
    hops: int = 0


# -- script replies ---------------------------------------------------------------------------------


class _Reply(msgspec.Struct, frozen=True):
    v: Literal[1]


class ActionsReply(_Reply, frozen=True):
    actions: list[Action] = []


class StaleMove(msgspec.Struct, frozen=True):
    job_id: str
    cell: int  # the cell it was moving to


class TickReply(_Reply, frozen=True):
    actions: list[Action] = []
    waiting: list[str] = []  # pairs with waiting jobs (with several cells)
    moves: list[StaleMove] = []


class ProbeReply(_Reply, frozen=True):
    pairs: list[str] = []


class TakeReply(_Reply, frozen=True):
    found: bool
    job: dict[str, str] = {}


class AdoptReply(_Reply, frozen=True):
    status: Literal["created", "existing", "no_room"]
    actions: list[Action] = []


class FinishReply(_Reply, frozen=True):
    done: bool
    actions: list[Action] = []


class CreateReply(_Reply, frozen=True):
    status: Literal["created", "existing", "no_room"]
    job_id: str
    cell: int  # where the job is; -1: its home cell bound it but has not placed it (yet)
    state: str  # dispatched | pending | a resolved state | '' when not known here
    actions: list[Action] = []


class ResultReply(_Reply, frozen=True):
    verdict: Literal["accepted", "unknown", "stale", "resolved"]
    actions: list[Action] = []


class HeartbeatReply(_Reply, frozen=True):
    ok: bool
    actions: list[Action] = []


class RegisterReply(_Reply, frozen=True):
    previous_conn: str
    previous_instance: str
    refused: bool = False  # the node id belongs to another node token


class MarkReply(_Reply, frozen=True):
    found: bool
    session: str = ""
    owner: str = ""


class SettleReply(_Reply, frozen=True):
    settled: bool


class Repair(msgspec.Struct, frozen=True):
    node: str
    counted: int
    actual: int


class ReconcileReply(_Reply, frozen=True):
    repairs: list[Repair] = []


class AnnounceReply(_Reply, frozen=True):
    was_present: bool
    removed: bool = False  # leaving: nothing was left to take over, so the instance is gone at once


class TakenInstance(msgspec.Struct, frozen=True):
    instance: str
    nodes: list[str] = []


class TakeInstancesReply(_Reply, frozen=True):
    taken: list[TakenInstance] = []


class ClaimReply(_Reply, frozen=True):
    claimed: bool
    previous_owner: str


class RoomReply(_Reply, frozen=True):
    """The reply of every room script (room_*.lua): what happened, the room's code, its members as JSON."""

    status: Literal[
        "created",
        "exists",
        "joined",
        "not_found",
        "already",
        "full",
        "left",
        "deleted",
        "not_member",
        "updated",
        "touched",
        "expired",
        "active",
    ]
    code: str
    members: list[str] = []
    active_ms: int = 0
    version: int = 0  # counts the room's changes


class JoinBudgetReply(_Reply, frozen=True):
    """room_join_budget.lua: whether a client key may try a room code now, else in how many ms."""

    allowed: bool
    retry_after_ms: int = 0


class ReleasedReply(_Reply, frozen=True):
    released: bool


class RoomMember(msgspec.Struct, frozen=True, omit_defaults=True):
    """A room member as the store keeps it: lingua's Participant fields (§3) plus the instance that holds
    the member's socket (where its frames go)."""

    session_id: str
    joined_at: str
    instance: str
    display_name: str | None = None
    preferred_lang: str | None = None
    raw_voice_preferences: dict[str, bool] = {}


class RoomState(msgspec.Struct, frozen=True):
    """A room script's outcome, members decoded."""

    status: str
    room_id: str
    code: str
    members: list[RoomMember]
    active_ms: int = 0
    version: int = 0


# -- what the store hands to the scheduler ------------------------------------------------------------


class JobSpec(msgspec.Struct, frozen=True):
    """What create-or-get needs to know about a job."""

    session: str
    index: int
    tgt: str
    job_id: str  # proposed: used only if the slot has no job yet
    pair: str  # "src:tgt" after normalisation, "" when no node can be eligible
    pair2: str  # the reverse pair a two-way job also needs, or ""
    turn: str
    trace: str
    owner: str  # instance that delivers the outcome, "" for HTTP API jobs
    body: bytes
    result_ttl_ms: int
    prefer: tuple[str, ...] = ()  # preferred nodes, in order: the turn's (MUST), the session's (SHOULD)
    guard: bool = False  # the utterance has several jobs (a room): they go to pairwise different nodes (N5)
    room: bool = False  # delivered to a room's listeners, not to the session (so not kept for a resume)


class Created(msgspec.Struct, frozen=True):
    status: Literal["created", "existing"]
    job_id: str
    cell: int  # -1: not placed anywhere (its creator died before placing it)
    state: str
    actions: list[Action]


class JobRecord(msgspec.Struct, frozen=True):
    """A job as the HTTP API and a resumed session read it."""

    job_id: str
    cell: int
    state: str
    attempt: int
    node: str
    session: str
    index: int
    tgt: str
    pair: str
    owner: str
    trace: str
    created_ms: int
    dispatched_ms: int | None
    detail: str  # the job_assign while unresolved, the outcome once resolved

    @property
    def resolved(self) -> bool:
        return self.state in ("completed", "empty", "failed", "timed_out")

    def outcome(self) -> Outcome:
        assert self.resolved
        return Outcome(
            job_id=self.job_id,
            state=self.state,  # type: ignore[arg-type]
            session=self.session,
            index=self.index,
            owner=self.owner,
            trace=self.trace,
            created_ms=self.created_ms,
            dispatched_ms=self.dispatched_ms,
            detail=self.detail,
        )


class SessionSnapshot(msgspec.Struct, frozen=True):
    init: bytes  # the session's first session_init (its language settings)
    trace: str
    delivered: int  # outcomes up to this index were delivered
    jobs: list[tuple[int, str, JobRecord | None]]  # (index, job id, record or None if gone) past ``delivered``
    room: str = ""  # the room it was in when its socket closed ("" = none)
    member: bytes = b""  # its RoomMember record there (JSON), to rejoin with


class NodeRecord(msgspec.Struct, frozen=True):
    """A registered node as the HTTP views show it."""

    node_id: str
    cell: int
    instance: str
    status: str
    capacity: int
    inflight: int
    info: bytes  # register JSON
    load: bytes  # heartbeat JSON
    registered_ms: int
    heartbeat_ms: int


class InstanceRecord(msgspec.Struct, frozen=True):
    instance_id: str
    online: bool
    description: bytes | None
