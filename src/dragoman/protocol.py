"""lingua's wire protocol: every message Dragoman receives or sends, as msgspec structs.

One place for the shapes of ``PROTOCOL.md``. Inbound structs ignore unknown keys (F4) and accept ``null`` for
optional keys (F5); outbound structs omit optional keys that have no value (F6) because every optional field
defaults to ``None`` (or ``False`` for omit-false flags) and the structs are encoded with ``omit_defaults``.
"""

from __future__ import annotations

import base64
import contextlib
import re
import secrets
import uuid
from typing import Annotated, Any, Final, Generic, Literal, TypeVar

import msgspec

PROTOCOL_VERSION: Final = "1.0"

# The ErrorCode set of PROTOCOL.md §14: the only codes allowed in ui_event.error_code.
ERROR_CODES: Final = frozenset(
    {
        "INVALID_MESSAGE",
        "INTERNAL_ERROR",
        "INVALID_SESSION",
        "SESSION_CLOSED",
        "NODE_UNAVAILABLE",
        "NODE_OVERLOADED",
        "MODEL_NOT_AVAILABLE",
        "MODEL_LOAD_FAILED",
        "UNSUPPORTED_FEATURE",
        "INVALID_PAIRING_CODE",
        "NO_AVAILABLE_NODE",
        "WS_DISCONNECTED",
        "NMT_TIMEOUT",
        "TTS_TIMEOUT",
        "JOB_TIMEOUT",
        "MODEL_VERIFY_FAILED",
        "MODEL_CORRUPTED",
        "NO_GPU_AVAILABLE",
        "NODE_ID_CONFLICT",
        "INVALID_CAPABILITY_SCHEMA",
        "SCHEDULER_DEPENDENCY_DOWN",
    }
)

# Keys of job_result.extra that are forwarded to clients (ExtraResult, §3).
EXTRA_RESULT_KEYS: Final = (
    "emotion",
    "speech_rate",
    "voice_style",
    "service_timings",
    "language_probability",
    "language_probabilities",
    "reason",
)
EMPTY_REASONS: Final = frozenset({"ASR_EMPTY", "NO_TEXT_ASSIGNED"})


# Integer ranges of §1.5, checked when a frame is decoded: out of range is INVALID_MESSAGE like a wrong type.
# msgspec bounds must fit in an int64, so u64 fields stop at 2**63 - 1 (the store keeps indexes as sorted-set
# scores, and the web client as JavaScript numbers, so no real index comes near either bound).
U32 = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
U64 = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
I64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]

# A node id a node may choose (§7.1). The store keeps an attempt's nodes as a space-separated list, and ids
# appear in keys and log lines, so they are short and plain; generated ids (§2.5) match.
NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
NODE_ID_RULE: Final = "1 to 128 characters of A-Z a-z 0-9 . _ : -"


def valid_node_id(node_id: str) -> bool:
    return NODE_ID_PATTERN.fullmatch(node_id) is not None


EXCERPT_CHARS: Final = 200


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` (a ``str``, else its repr) cut to ``limit`` characters: what a log line or an error reply
    shows of input, which can be megabytes long."""
    try:
        text = value if isinstance(value, str) else repr(value)
    except RecursionError:  # nested about as deep as the decoder allows, and shown from deeper in the stack
        text = f"({type(value).__name__} nested too deeply to show)"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def decode_base64(text: str) -> bytes | None:
    """Strict standard base64 (§1.5), or None when ``text`` is not: a non-ASCII character raises a plain
    ``ValueError`` where bad padding raises ``binascii.Error`` (a subclass), so both are caught here."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def new_session_id() -> str:
    """128 random bits: a session id cannot be guessed (lingua's clients expect the ``s-`` prefix)."""
    return "s-" + secrets.token_hex(16).upper()


def new_node_id() -> str:
    return "node-" + uuid.uuid4().hex[:8].upper()


def new_job_id() -> str:
    return f"job-{uuid.uuid4()}"


def new_uuid() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------------------
# Shared types (§3)


class Inbound(msgspec.Struct, tag_field="type"):
    """Base of every message a peer sends; the ``type`` key is the tag."""


class Outbound(msgspec.Struct, tag_field="type", omit_defaults=True):
    """Base of every message Dragoman sends; optional keys without a value are omitted."""


class FeatureFlags(msgspec.Struct, omit_defaults=True, frozen=True):
    emotion_detection: bool | None = None
    voice_style_detection: bool | None = None
    speech_rate_detection: bool | None = None
    speech_rate_control: bool | None = None
    speaker_identification: bool | None = None
    persona_adaptation: bool | None = None


class PipelineConfig(msgspec.Struct, frozen=True):
    use_asr: bool
    use_nmt: bool
    use_tts: bool
    use_semantic: bool | None = False
    use_tone: bool | None = False

    def __post_init__(self) -> None:
        # ``null`` means "no value" (F5); the outbound form always carries all five booleans.
        if self.use_semantic is None:
            msgspec.structs.force_setattr(self, "use_semantic", False)
        if self.use_tone is None:
            msgspec.structs.force_setattr(self, "use_tone", False)


DEFAULT_PIPELINE: Final = PipelineConfig(use_asr=True, use_nmt=True, use_tts=True)


class LanguageCapabilities(msgspec.Struct, frozen=True):
    asr_languages: list[str] | None = None
    semantic_languages: list[str] | None = None
    tts_languages: list[str] | None = None
    semantic_core_ready: bool | None = None


class JobError(msgspec.Struct, frozen=True):
    code: str
    message: str
    details: Any = None


# ---------------------------------------------------------------------------------------------------------
# /ws/session: client -> Dragoman (§5, §13)


class SessionInit(Inbound, tag="session_init"):
    client_version: str
    platform: str
    src_lang: str
    tgt_lang: str
    dialect: str | None = None
    features: FeatureFlags | None = None
    pairing_code: str | None = None
    tenant_id: str | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: U64 | None = None
    trace_id: str | None = None
    resume_session_id: str | None = None
    # Extension (with resume_session_id): the client has every outcome up to this utterance_index, so the
    # resumed session delivers only what follows it (exactly once across an instance crash).
    resume_delivered_index: I64 | None = None
    resume_token: str | None = None  # extension: the token of session_init_ack, required to resume
    ui_events: bool | None = None  # extension: send this session ui_events (None: the ui_events setting)


class AudioChunk(Inbound, tag="audio_chunk"):
    session_id: str
    seq: U64
    is_final: bool
    payload: str | None = None
    client_timestamp_ms: I64 | None = None


class Utterance(Inbound, tag="utterance"):
    session_id: str
    utterance_index: U64
    manual_cut: bool
    src_lang: str
    tgt_lang: str
    audio: str
    audio_format: str
    sample_rate: U32
    dialect: str | None = None
    features: FeatureFlags | None = None
    trace_id: str | None = None
    pipeline: PipelineConfig | None = None


class ClientHeartbeat(Inbound, tag="client_heartbeat"):
    session_id: str
    timestamp: I64


class TtsStarted(Inbound, tag="tts_started"):
    session_id: str
    group_id: str
    ts_start_ms: U64
    trace_id: str | None = None


class TtsPlayEnded(Inbound, tag="tts_play_ended"):
    session_id: str
    group_id: str
    ts_end_ms: U64
    trace_id: str | None = None


class SessionClose(Inbound, tag="session_close"):
    session_id: str
    reason: str


class RoomMessage(Inbound):
    """Room and WebRTC signalling (§13): they act on the socket's current session."""


class RoomCreate(RoomMessage, tag="room_create"):
    client_ts: int
    display_name: str | None = None
    preferred_lang: str | None = None


class RoomJoin(RoomMessage, tag="room_join"):
    room_code: str
    display_name: str | None = None
    preferred_lang: str | None = None


class RoomLeave(RoomMessage, tag="room_leave"):
    room_code: str


class RoomRawVoicePreference(RoomMessage, tag="room_raw_voice_preference"):
    room_code: str
    target_session_id: str
    receive_raw_voice: bool


class WebrtcOffer(RoomMessage, tag="webrtc_offer"):
    room_code: str
    to: str
    sdp: Any


class WebrtcAnswer(RoomMessage, tag="webrtc_answer"):
    room_code: str
    to: str
    sdp: Any


class WebrtcIce(RoomMessage, tag="webrtc_ice"):
    room_code: str
    to: str
    candidate: Any


ClientMessage = (
    SessionInit
    | AudioChunk
    | Utterance
    | ClientHeartbeat
    | TtsStarted
    | TtsPlayEnded
    | SessionClose
    | RoomCreate
    | RoomJoin
    | RoomLeave
    | RoomRawVoicePreference
    | WebrtcOffer
    | WebrtcAnswer
    | WebrtcIce
)

# ---------------------------------------------------------------------------------------------------------
# /ws/node: node -> Dragoman (§7)


class NodeRegister(Inbound, tag="node_register"):
    version: str
    platform: str
    hardware: dict[str, Any]
    installed_models: list[Any]
    capability_by_type: list[Any]
    features_supported: dict[str, Any]
    accept_public_jobs: bool
    node_id: str | None = None
    capability_schema_version: str | None = None
    installed_services: list[Any] | None = None
    advanced_features: list[Any] | None = None
    language_capabilities: LanguageCapabilities | None = None
    max_concurrent_jobs: U32 | None = None


class NodeHeartbeat(Inbound, tag="node_heartbeat"):
    node_id: str
    timestamp: I64
    resource_usage: dict[str, Any]
    installed_services: list[Any]
    capability_by_type: list[Any]
    installed_models: list[Any] | None = None
    rerun_metrics: dict[str, Any] | None = None
    asr_metrics: dict[str, Any] | None = None
    processing_metrics: dict[str, Any] | None = None
    language_capabilities: LanguageCapabilities | None = None
    max_concurrent_jobs: U32 | None = None


class JobResult(Inbound, tag="job_result"):
    job_id: str
    attempt_id: U32
    node_id: str
    session_id: str
    utterance_index: U64
    success: bool
    trace_id: str
    text_asr: str | None = None
    text_translated: str | None = None
    tts_audio: str | None = None
    tts_format: str | None = None
    extra: dict[str, Any] | None = None
    processing_time_ms: U64 | None = None
    error: JobError | None = None
    group_id: str | None = None
    part_index: U64 | None = None
    node_completed_at_ms: I64 | None = None
    asr_quality_level: str | None = None
    reason_codes: list[str] | None = None
    quality_score: float | None = None
    rerun_count: U32 | None = None
    segments_meta: dict[str, Any] | None = None

    def forwarded_extra(self) -> dict[str, Any] | None:
        """``extra`` restricted to the ExtraResult keys that clients get (§3), or None."""
        if not self.extra:
            return None
        return {k: self.extra[k] for k in EXTRA_RESULT_KEYS if self.extra.get(k) is not None} or None

    def service_timings(self) -> dict[str, Any] | None:
        """The node's ``extra.service_timings``, else ``{"total_ms": processing_time_ms}`` (§6.2)."""
        timings = (self.extra or {}).get("service_timings")
        if isinstance(timings, dict):
            return timings
        return {"total_ms": self.processing_time_ms} if self.processing_time_ms is not None else None

    @property
    def is_empty(self) -> bool:
        """An empty result (§12.1 step 4): a marked reason, or nothing at all in text and audio."""
        if (self.extra or {}).get("reason") in EMPTY_REASONS:
            return True
        return not (self.text_asr or self.text_translated or self.tts_audio)


class NodeAsrPartial(Inbound, tag="asr_partial"):
    job_id: str
    node_id: str
    session_id: str
    utterance_index: U64
    text: str
    is_final: bool
    trace_id: str


class JobAck(Inbound, tag="job_ack"):
    job_id: str
    attempt_id: U32
    node_id: str
    session_id: str
    trace_id: str


class JobStarted(Inbound, tag="job_started"):
    job_id: str
    attempt_id: U32
    node_id: str
    session_id: str
    trace_id: str


class NodeError(Inbound, tag="node_error"):
    node_id: str
    code: str
    message: str
    details: Any = None


NodeMessage = NodeRegister | NodeHeartbeat | JobResult | NodeAsrPartial | JobAck | JobStarted | NodeError

# ---------------------------------------------------------------------------------------------------------
# Dragoman -> client (§6)


class SessionInitAck(Outbound, tag="session_init_ack"):
    """Always-present keys have no default (``omit_defaults`` would drop them); ``new`` fills the constants."""

    session_id: str
    trace_id: str
    message: str
    protocol_version: str
    use_binary_frame: bool
    negotiated_codec: str
    negotiated_audio_format: str
    negotiated_sample_rate: int
    negotiated_channel_count: int
    resumed: bool | None = None
    resume_token: str | None = None  # extension: what a session_init resuming this session must present

    @classmethod
    def new(
        cls, session_id: str, trace_id: str, resumed: bool | None = None, resume_token: str | None = None
    ) -> SessionInitAck:
        return cls(
            session_id=session_id,
            trace_id=trace_id,
            message="session created",
            protocol_version=PROTOCOL_VERSION,
            use_binary_frame=False,  # F3: true would switch the web client to a framing Dragoman does not speak
            negotiated_codec="opus",
            negotiated_audio_format="opus",
            negotiated_sample_rate=16000,
            negotiated_channel_count=1,
            resumed=resumed,
            resume_token=resume_token,
        )


class ServiceTimings(msgspec.Struct, omit_defaults=True):
    asr_ms: int | None = None
    nmt_ms: int | None = None
    tts_ms: int | None = None
    total_ms: int | None = None


class NetworkTimings(msgspec.Struct, omit_defaults=True):
    web_to_scheduler_ms: int | None = None
    scheduler_to_node_ms: int | None = None
    node_to_scheduler_ms: int | None = None


class TranslationResult(Outbound, tag="translation_result"):
    session_id: str
    utterance_index: int
    job_id: str
    text_asr: str
    text_translated: str
    tts_audio: str
    tts_format: str
    trace_id: str
    scheduler_sent_at_ms: int
    extra: dict[str, Any] | None = None
    group_id: str | None = None
    part_index: int | None = None
    service_timings: dict[str, Any] | None = None
    network_timings: NetworkTimings | None = None
    asr_quality_level: str | None = None
    reason_codes: list[str] | None = None
    quality_score: float | None = None
    rerun_count: int | None = None
    segments_meta: dict[str, Any] | None = None


class ClientAsrPartial(Outbound, tag="asr_partial"):
    session_id: str
    utterance_index: int
    job_id: str
    text: str
    is_final: bool
    trace_id: str


class MissingResult(Outbound, tag="missing_result"):
    session_id: str
    utterance_index: int
    reason: Literal["silence_detected", "gap_timeout", "pending_overflow_evict"]
    created_at_ms: int
    trace_id: str | None = None


class UiEvent(Outbound, tag="ui_event"):
    trace_id: str
    session_id: str
    job_id: str
    utterance_index: int
    event: str
    status: str
    elapsed_ms: int | None = None
    error_code: str | None = None
    hint: str | None = None


class Error(Outbound, tag="error"):
    code: str
    message: str
    details: Any = None


class ServerHeartbeat(Outbound, tag="server_heartbeat"):
    session_id: str
    timestamp: int


class SessionCloseAck(Outbound, tag="session_close_ack"):
    session_id: str


class Participant(msgspec.Struct, omit_defaults=True):
    """A room member on the wire (§3)."""

    participant_id: str
    session_id: str
    joined_at: str
    display_name: str | None = None
    preferred_lang: str | None = None
    raw_voice_preferences: dict[str, bool] | None = None


class RoomCreateAck(Outbound, tag="room_create_ack"):
    room_code: str
    room_id: str


class RoomMembers(Outbound, tag="room_members"):
    room_code: str
    members: list[Participant]


class RoomError(Outbound, tag="room_error"):
    code: str
    message: str | None = None


class RoomExpired(Outbound, tag="room_expired"):
    room_code: str
    message: str


class RelayedOffer(Outbound, tag="webrtc_offer"):
    """A relayed offer: ``to`` is the sender's session id (§13.2)."""

    room_code: str
    to: str
    sdp: Any


class RelayedAnswer(Outbound, tag="webrtc_answer"):
    room_code: str
    to: str
    sdp: Any


class RelayedIce(Outbound, tag="webrtc_ice"):
    room_code: str
    to: str
    candidate: Any


# ---------------------------------------------------------------------------------------------------------
# Dragoman -> node (§8)


class NodeRegisterAck(Outbound, tag="node_register_ack"):
    node_id: str
    message: str
    status: str

    @classmethod
    def new(cls, node_id: str) -> NodeRegisterAck:
        return cls(node_id=node_id, message="Node registered successfully", status="registering")


class JobAssign(Outbound, tag="job_assign"):
    """``attempt_id`` comes first so that a stored frame can be re-sent with another attempt (``assign_frame``)."""

    attempt_id: int
    job_id: str
    session_id: str
    utterance_index: int
    src_lang: str
    tgt_lang: str
    pipeline: PipelineConfig
    audio: str
    audio_format: str
    sample_rate: int
    trace_id: str
    dialect: str | None = None
    features: FeatureFlags | None = None
    mode: str | None = None
    lang_a: str | None = None
    lang_b: str | None = None
    auto_langs: list[str] | None = None
    enable_streaming_asr: bool | None = None
    partial_update_interval_ms: int | None = None
    padding_ms: int | None = None
    is_manual_cut: bool = False
    is_timeout_triggered: bool = False
    is_max_duration_triggered: bool = False
    turn_id: str | None = None


class JobCancel(Outbound, tag="job_cancel"):
    job_id: str
    trace_id: str | None = None
    reason: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Encoding and decoding

_encoder = msgspec.json.Encoder()
encode = _encoder.encode

_ASSIGN_PREFIX: Final = b'{"type":"job_assign","attempt_id":'


def assign_body(assign: JobAssign) -> bytes:
    """The stored form of a job_assign: everything after its attempt id, so any attempt can be spliced in."""
    raw = encode(msgspec.structs.replace(assign, attempt_id=0))
    return raw[len(_ASSIGN_PREFIX) + 1 :]


def assign_frame(body: bytes, attempt_id: int) -> bytes:
    return _ASSIGN_PREFIX + str(attempt_id).encode() + body


class _TypeOnly(msgspec.Struct):
    type: str


# Types Dragoman sends, or that belong to the other socket: received here they are logged, not answered.
SERVER_TO_CLIENT_TYPES: Final = frozenset(
    {
        "session_init_ack",
        "translation_result",
        "missing_result",
        "ui_event",
        "error",
        "server_heartbeat",
        "session_close_ack",
        "room_create_ack",
        "room_members",
        "room_error",
        "room_expired",
        "backpressure",
        "tts_audio",
        "translation",
        "language_detected",
    }
)
SERVER_TO_NODE_TYPES: Final = frozenset({"node_register_ack", "job_assign", "job_cancel", "node_control"})


class ProtocolError(ValueError):
    """A frame that is not a valid message. ``wrong_direction`` marks a known type sent the wrong way."""

    def __init__(self, detail: str, wrong_direction: bool = False) -> None:
        super().__init__(detail)
        self.detail = detail
        self.wrong_direction = wrong_direction


T = TypeVar("T")

TOO_DEEP: Final = "JSON nested too deeply"


def decode_json(decoder: msgspec.json.Decoder[T], raw: str | bytes) -> T:
    """``decoder.decode(raw)`` for input from outside. msgspec nests as deep as Python's recursion limit
    allows and then raises ``RecursionError`` (a 2.4 KB frame nested 1,000 levels does), which is no
    ``DecodeError``: here it becomes one, so every caller answers it as the bad input it is."""
    try:
        return decoder.decode(raw)
    except RecursionError:
        raise msgspec.DecodeError(TOO_DEEP) from None


_type_only = msgspec.json.Decoder(_TypeOnly)


class _Decoder(Generic[T]):
    def __init__(self, union: Any, wrong_way: frozenset[str]) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(union)
        self._wrong_way = wrong_way

    def __call__(self, raw: str | bytes) -> T:
        try:
            return decode_json(self._decoder, raw)
        except msgspec.DecodeError as exc:
            wrong = False
            if isinstance(exc, msgspec.ValidationError):
                with contextlib.suppress(msgspec.DecodeError):
                    wrong = decode_json(_type_only, raw).type in self._wrong_way
            # The detail can quote input (an unknown type's value): cut it for the reply and the log.
            raise ProtocolError(excerpt(str(exc)), wrong_direction=wrong) from None


def _tags(union: Any) -> frozenset[str]:
    return frozenset(str(t.__struct_config__.tag) for t in union.__args__)


CLIENT_TO_SERVER_TYPES: Final = _tags(ClientMessage)
NODE_TO_SERVER_TYPES: Final = _tags(NodeMessage)
_ALL_TYPES = SERVER_TO_CLIENT_TYPES | SERVER_TO_NODE_TYPES | CLIENT_TO_SERVER_TYPES | NODE_TO_SERVER_TYPES

decode_client: _Decoder[ClientMessage] = _Decoder(ClientMessage, _ALL_TYPES - CLIENT_TO_SERVER_TYPES)
decode_partial = msgspec.json.Decoder(NodeAsrPartial).decode  # a partial another instance received
decode_node: _Decoder[NodeMessage] = _Decoder(NodeMessage, _ALL_TYPES - NODE_TO_SERVER_TYPES)
