"""Unit tests of dragoman.protocol: lingua's exact frames in, lingua-acceptable frames out (PROTOCOL.md §2-§8)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from dragoman import protocol as p

from peers import LinguaNode


def _raw(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, ensure_ascii=False).encode()


def _nulls(value: Any, path: str = "") -> list[str]:
    """Every key whose value is null, at any depth (F6)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else key
            if item is None:
                found.append(sub)
            found += _nulls(item, sub)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _nulls(item, f"{path}[{i}]")
    return found


def _node(node_id: str | None = "node-0A1B2C3D") -> LinguaNode:
    """The scripted Electron node, used only for its frame builders (no socket is opened)."""
    return LinguaNode("ws://127.0.0.1:9/ws/node", node_id=node_id)


# ---------------------------------------------------------------------------------------------------------
# Decoding: /ws/session (§5)

WEB_INIT = {
    "type": "session_init",
    "client_version": "web-client-v1.0",
    "platform": "web",
    "src_lang": "auto",
    "tgt_lang": "en",
    "dialect": None,
    "features": {},
    "pairing_code": None,
    "mode": "two_way_auto",
    "lang_a": "zh",
    "lang_b": "en",
    "auto_langs": ["zh", "en"],
    "trace_id": "0b6f2a44-1f5e-4c3e-9a0a-5b1e1f7e2d11",
    "tenant_id": None,
}


def test_web_client_session_init_with_nulls() -> None:
    msg = p.decode_client(_raw(WEB_INIT))
    assert isinstance(msg, p.SessionInit)
    assert (msg.client_version, msg.platform, msg.src_lang, msg.tgt_lang) == ("web-client-v1.0", "web", "auto", "en")
    assert msg.dialect is None and msg.pairing_code is None and msg.tenant_id is None  # F5: null means no value
    assert msg.features == p.FeatureFlags()
    assert (msg.mode, msg.lang_a, msg.lang_b, msg.auto_langs) == ("two_way_auto", "zh", "en", ["zh", "en"])
    assert msg.trace_id == WEB_INIT["trace_id"]
    assert msg.resume_session_id is None


def test_one_way_session_init_without_optional_keys() -> None:
    frame = {
        "type": "session_init",
        "client_version": "android-1.2",
        "platform": "android",
        "src_lang": "zh",
        "tgt_lang": "en",
    }
    msg = p.decode_client(_raw(frame))
    assert isinstance(msg, p.SessionInit)
    assert msg.mode is None and msg.lang_a is None and msg.features is None and msg.trace_id is None


def test_session_init_accepts_str_input_and_ignores_unknown_keys_and_feature_flags() -> None:
    frame = {
        **WEB_INIT,
        "features": {"emotion_detection": True, "streaming_asr": True, "kv_cache": 1},  # old script keys
        "some_future_key": {"nested": [1, 2, 3]},
        "enable_streaming_asr": None,
        "partial_update_interval_ms": None,
    }
    msg = p.decode_client(json.dumps(frame))
    assert isinstance(msg, p.SessionInit)
    assert msg.features == p.FeatureFlags(emotion_detection=True)
    assert msg.enable_streaming_asr is None and msg.partial_update_interval_ms is None


def test_web_client_audio_chunk_final_frame_and_null_payload() -> None:
    final = p.decode_client(
        _raw({"type": "audio_chunk", "session_id": "s-1", "seq": 7, "is_final": True, "payload": ""})
    )
    assert final == p.AudioChunk(session_id="s-1", seq=7, is_final=True, payload="")
    nothing = p.decode_client(
        _raw({"type": "audio_chunk", "session_id": "s-1", "seq": 8, "is_final": False, "payload": None})
    )
    assert isinstance(nothing, p.AudioChunk) and nothing.payload is None and nothing.client_timestamp_ms is None
    absent = p.decode_client(_raw({"type": "audio_chunk", "session_id": "s-1", "seq": 9, "is_final": False}))
    assert isinstance(absent, p.AudioChunk) and absent.payload is None


def test_utterance_with_pipeline_nulls_and_ignored_keys() -> None:
    frame = {
        "type": "utterance",
        "session_id": "s-1",
        "utterance_index": 3,
        "manual_cut": False,
        "src_lang": "zh",
        "tgt_lang": "en",
        "audio": "AAAA",
        "audio_format": "pcm16",
        "sample_rate": 16000,
        "dialect": None,
        "features": None,
        "trace_id": None,
        "mode": "one_way",  # ignored on this path (§5.3)
        "enable_streaming_asr": False,
        "pipeline": {"use_asr": True, "use_nmt": False, "use_tts": True, "use_semantic": None, "use_phonetic": True},
    }
    msg = p.decode_client(_raw(frame))
    assert isinstance(msg, p.Utterance)
    assert msg.utterance_index == 3 and msg.manual_cut is False and msg.sample_rate == 16000
    assert msg.pipeline == p.PipelineConfig(use_asr=True, use_nmt=False, use_tts=True)
    assert msg.pipeline is not None and msg.pipeline.use_semantic is False and msg.pipeline.use_tone is False
    assert msg.dialect is None and msg.features is None and msg.trace_id is None


def test_other_client_messages_decode() -> None:
    beat = p.decode_client(_raw({"type": "client_heartbeat", "session_id": "s-1", "timestamp": 1767000000000}))
    assert beat == p.ClientHeartbeat(session_id="s-1", timestamp=1767000000000)
    started = p.decode_client(
        _raw({"type": "tts_started", "session_id": "s-1", "trace_id": "t", "group_id": "g", "ts_start_ms": 5})
    )
    assert started == p.TtsStarted(session_id="s-1", group_id="g", ts_start_ms=5, trace_id="t")
    ended = p.decode_client(
        _raw({"type": "tts_play_ended", "session_id": "s-1", "trace_id": "t", "group_id": "g", "ts_end_ms": 6})
    )
    assert ended == p.TtsPlayEnded(session_id="s-1", group_id="g", ts_end_ms=6, trace_id="t")
    close = p.decode_client(_raw({"type": "session_close", "session_id": "s-1", "reason": "user"}))
    assert close == p.SessionClose(session_id="s-1", reason="user")


@pytest.mark.parametrize(
    ("type_", "cls", "fields"),
    [
        ("room_create", p.RoomCreate, {"client_ts": 1, "display_name": "A", "preferred_lang": "en"}),
        ("room_join", p.RoomJoin, {"room_code": "482913", "display_name": None, "preferred_lang": "zh"}),
        ("room_leave", p.RoomLeave, {"room_code": "482913"}),
        (
            "room_raw_voice_preference",
            p.RoomRawVoicePreference,
            {"room_code": "482913", "target_session_id": "s-2", "receive_raw_voice": False},
        ),
        ("webrtc_offer", p.WebrtcOffer, {"room_code": "482913", "to": "s-2", "sdp": {"type": "offer"}}),
        ("webrtc_answer", p.WebrtcAnswer, {"room_code": "482913", "to": "s-2", "sdp": {"type": "answer"}}),
        ("webrtc_ice", p.WebrtcIce, {"room_code": "482913", "to": "s-2", "candidate": {"candidate": "a"}}),
    ],
)
def test_room_messages_decode_as_room_messages(type_: str, cls: type, fields: dict[str, Any]) -> None:
    msg = p.decode_client(_raw({"type": type_, **fields}))
    assert isinstance(msg, cls) and isinstance(msg, p.RoomMessage)
    with pytest.raises(p.ProtocolError):  # each has a required key (R)
        p.decode_client(_raw({"type": type_}))


# ---------------------------------------------------------------------------------------------------------
# Decoding: /ws/node (§7)


def test_electron_node_register_with_extra_keys() -> None:
    node = _node(node_id=None)
    node.max_concurrent_jobs = 2
    frame = node.register_frame()
    assert frame["node_id"] is None and frame["capability_by_type"][0]["devices"]  # the real shapes, extras included
    msg = p.decode_node(_raw(frame))
    assert isinstance(msg, p.NodeRegister)
    assert msg.node_id is None  # a restarted node process registers with null (§2.4)
    assert (msg.version, msg.platform, msg.capability_schema_version) == ("2.0.0", "linux", "2.0")
    assert msg.hardware["memory_gb"] == 32 and msg.installed_models == []
    assert msg.accept_public_jobs is True and msg.features_supported == {}
    assert msg.language_capabilities == p.LanguageCapabilities(
        asr_languages=["zh", "en"],
        semantic_languages=["zh", "en"],
        tts_languages=["zh", "en"],
        semantic_core_ready=True,
    )
    assert msg.max_concurrent_jobs == 2


def test_node_register_without_installed_services_and_with_unknown_top_level_keys() -> None:
    node = _node(node_id="node-PREVIOUS")
    node.services = []  # the node omits installed_services when empty
    frame = {**node.register_frame(), "advanced_features": ["x"], "future": True}
    assert "installed_services" not in frame
    msg = p.decode_node(_raw(frame))
    assert isinstance(msg, p.NodeRegister)
    assert msg.node_id == "node-PREVIOUS" and msg.installed_services is None and msg.max_concurrent_jobs is None


def test_electron_node_heartbeat_with_extra_keys() -> None:
    frame = _node().heartbeat_frame()
    assert frame["resource_usage"]["gpu_queue_length"] == 1 and "installed_models" not in frame
    msg = p.decode_node(_raw(frame))
    assert isinstance(msg, p.NodeHeartbeat)
    assert msg.node_id == "node-0A1B2C3D" and isinstance(msg.timestamp, int)
    assert msg.resource_usage["gpu_queue_length"] == 1  # kept as given (a stored dict)
    assert msg.installed_models is None
    assert msg.rerun_metrics is not None and msg.rerun_metrics["totalReruns"] == 0
    assert msg.processing_metrics == {
        "serviceEfficiencies": {"faster-whisper-vad": 12.5, "nmt-m2m100": 85.0, "piper-tts": 8.25}
    }
    assert msg.language_capabilities is not None and msg.language_capabilities.asr_languages == ["zh", "en"]


def test_heartbeat_with_wrongly_cased_enum_values_is_not_dropped() -> None:
    """F7: values lingua dropped whole messages for (``"ASR"``, ``"GPU"``, ``"Running"``) must decode."""
    frame = _node().heartbeat_frame()
    frame["installed_services"] = [{"service_id": "x", "type": "ASR", "device": "GPU", "status": "Running"}]
    frame["capability_by_type"] = [{"type": "Asr", "ready": True, "reason": None, "ready_impl_ids": None}]
    frame["asr_metrics"] = {"processingEfficiency": None}
    msg = p.decode_node(_raw(frame))
    assert isinstance(msg, p.NodeHeartbeat) and msg.installed_services[0]["type"] == "ASR"


def _job_result(**fields: Any) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "job_result",
        "job_id": "job-1",
        "attempt_id": 1,
        "node_id": "node-0A1B2C3D",
        "session_id": "s-1",
        "utterance_index": 0,
        "success": True,
        "text_asr": "你好",
        "text_translated": "hello",
        "tts_audio": "AAAA",
        "tts_format": "opus",
        "extra": {
            "audioBuffered": 1.5,
            "pendingEmptyJobs": [],
            "detected_src_lang": "zh",
            "raw_asr_text": "你好",
            "emotion": "neutral",
            "language_probability": 0.98,
        },
        "processing_time_ms": 120,
        "trace_id": "t",
        "group_id": None,
        "part_index": None,
    }
    frame.update(fields)
    return frame


def test_electron_node_job_result_with_extra_keys() -> None:
    msg = p.decode_node(_raw({**_job_result(), "unknown_top_level": {"a": 1}}))
    assert isinstance(msg, p.JobResult)
    assert (msg.job_id, msg.attempt_id, msg.node_id, msg.session_id, msg.utterance_index) == (
        "job-1",
        1,
        "node-0A1B2C3D",
        "s-1",
        0,
    )
    assert msg.success is True and msg.error is None and msg.group_id is None and msg.part_index is None
    assert msg.text_asr == "你好" and msg.tts_format == "opus" and msg.processing_time_ms == 120
    assert not msg.is_empty


def test_failed_job_result_with_model_details() -> None:
    details = {"service_id": "nmt-m2m100", "service_version": "1.0.0", "reason": "not installed"}
    frame = {
        "type": "job_result",
        "job_id": "job-1",
        "attempt_id": 2,
        "node_id": "n",
        "session_id": "s-1",
        "utterance_index": 4,
        "success": False,
        "processing_time_ms": 3,
        "error": {"code": "MODEL_NOT_AVAILABLE", "message": "missing model", "details": details},
        "trace_id": "t",
    }
    msg = p.decode_node(_raw(frame))
    assert isinstance(msg, p.JobResult)
    assert msg.error == p.JobError(code="MODEL_NOT_AVAILABLE", message="missing model", details=details)


def test_other_node_messages_decode() -> None:
    common = {"job_id": "job-1", "node_id": "n", "session_id": "s-1", "trace_id": "t"}
    partial = p.decode_node(
        _raw({"type": "asr_partial", **common, "utterance_index": 2, "text": "你", "is_final": False})
    )
    assert isinstance(partial, p.NodeAsrPartial) and partial.text == "你" and partial.utterance_index == 2
    ack = p.decode_node(_raw({"type": "job_ack", **common, "attempt_id": 1}))
    assert isinstance(ack, p.JobAck) and ack.attempt_id == 1
    started = p.decode_node(_raw({"type": "job_started", **common, "attempt_id": 1}))
    assert isinstance(started, p.JobStarted)
    error = p.decode_node(_raw({"type": "node_error", "node_id": "n", "code": "X", "message": "m"}))
    assert error == p.NodeError(node_id="n", code="X", message="m")


# ---------------------------------------------------------------------------------------------------------
# Malformed input (§2.3)


@pytest.mark.parametrize(
    ("raw", "detail_has"),
    [
        pytest.param('{"type": "session_init",', "", id="invalid-json"),
        pytest.param("", "", id="empty"),
        pytest.param("[1, 2]", "array", id="array"),
        pytest.param('"session_init"', "", id="string"),
        pytest.param("null", "", id="null"),
        pytest.param('{"type": "nope"}', "nope", id="unknown-type"),
        pytest.param('{"type": "Session_Init"}', "Session_Init", id="wrongly-cased-type"),
        pytest.param('{"session_id": "s-1"}', "type", id="no-type"),
        pytest.param('{"type": 5}', "type", id="non-string-type"),
        pytest.param('{"type": "audio_chunk", "session_id": "s-1", "is_final": true}', "seq", id="missing-key"),
        pytest.param(
            '{"type": "audio_chunk", "session_id": "s-1", "seq": "x", "is_final": true}', "seq", id="wrong-type"
        ),
        pytest.param(
            '{"type": "audio_chunk", "session_id": null, "seq": 1, "is_final": true}', "session_id", id="null-required"
        ),
        pytest.param(
            '{"type": "audio_chunk", "session_id": "s-1", "seq": 1, "is_final": "yes"}', "is_final", id="string-bool"
        ),
        pytest.param(
            '{"type": "audio_chunk", "session_id": "s-1", "seq": 1, "is_final": true, "payload": 5}',
            "payload",
            id="wrong-optional-type",
        ),
        pytest.param(
            '{"type": "session_init", "client_version": "v", "platform": "web", "src_lang": "zh", "tgt_lang": "en",'
            ' "features": {"emotion_detection": "yes"}}',
            "features.emotion_detection",
            id="nested-wrong-type",
        ),
        pytest.param(
            '{"type": "utterance", "session_id": "s", "utterance_index": 0, "manual_cut": true, "src_lang": "zh",'
            ' "tgt_lang": "en", "audio": "", "audio_format": "pcm16", "sample_rate": 16000,'
            ' "pipeline": {"use_asr": true}}',
            "use_nmt",
            id="nested-missing-key",
        ),
    ],
)
def test_malformed_client_frames_raise_protocol_error(raw: str, detail_has: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client(raw)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.wrong_direction is False
    assert err.detail and str(err) == err.detail
    assert detail_has in err.detail


@pytest.mark.parametrize(
    "raw",
    [
        "{",
        "[]",
        '{"type": "nope"}',
        '{"type": "node_heartbeat", "node_id": "n", "timestamp": 1}',  # lacks resource_usage and more
        '{"type": "job_result", "job_id": "j", "attempt_id": "1", "node_id": "n", "session_id": "s",'
        ' "utterance_index": 0, "success": true, "trace_id": "t"}',
    ],
)
def test_malformed_node_frames_raise_protocol_error(raw: str) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_node(raw)
    assert info.value.wrong_direction is False and info.value.detail


def test_missing_key_detail_names_the_key() -> None:
    frame = _node().heartbeat_frame()
    del frame["installed_services"]  # R in node_heartbeat (§7.2)
    with pytest.raises(p.ProtocolError, match="installed_services"):
        p.decode_node(_raw(frame))
    with pytest.raises(p.ProtocolError, match="attempt_id"):
        p.decode_node(_raw(_job_result(attempt_id="1")))


# Every type of PROTOCOL.md that a client never sends: Dragoman's own (§6, §8, §13.2) and the node's (§7).
_NOT_FROM_CLIENT = [
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
    "node_register_ack",
    "job_assign",
    "job_cancel",
    "node_control",
    "node_register",
    "node_heartbeat",
    "job_result",
    "asr_partial",
    "job_ack",
    "job_started",
    "node_error",
]


def _flagged_by_client_decoder(type_: str) -> bool:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client(_raw({"type": type_, "session_id": "s-1", "job_id": "j"}))
    return info.value.wrong_direction


@pytest.mark.parametrize("type_", _NOT_FROM_CLIENT)
def test_client_sending_a_known_type_of_the_wrong_direction_is_flagged(type_: str) -> None:
    assert _flagged_by_client_decoder(type_) is True


# Every type of PROTOCOL.md that a node never sends.
_NOT_FROM_NODE = [
    "node_register_ack",
    "job_assign",
    "job_cancel",
    "node_control",
    "error",
    "session_init_ack",
    "translation_result",
    "ui_event",
    "server_heartbeat",
    "session_init",
    "audio_chunk",
    "utterance",
    "client_heartbeat",
    "tts_started",
    "tts_play_ended",
    "session_close",
    "room_create",
    "room_join",
    "room_leave",
    "room_raw_voice_preference",
    "webrtc_offer",
    "webrtc_answer",
    "webrtc_ice",
]


def _flagged_by_node_decoder(type_: str) -> bool:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_node(_raw({"type": type_, "node_id": "n", "job_id": "j"}))
    return info.value.wrong_direction


@pytest.mark.parametrize("type_", _NOT_FROM_NODE)
def test_node_sending_a_known_type_of_the_wrong_direction_is_flagged(type_: str) -> None:
    assert _flagged_by_node_decoder(type_) is True


def test_wrong_direction_flag_needs_valid_json_with_a_string_type() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client('{"type": "ui_event", ')
    assert info.value.wrong_direction is False
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client('{"type": ["ui_event"]}')
    assert info.value.wrong_direction is False


# ---------------------------------------------------------------------------------------------------------
# Encoding (§6, §8; F6, F8)


def _enc(msg: Any) -> dict[str, Any]:
    out = json.loads(p.encode(msg))
    assert isinstance(out, dict)
    return out


def test_session_init_ack_has_every_always_present_key() -> None:
    raw = p.encode(p.SessionInitAck.new("s-A8C1BDE4", "trace-1"))
    assert json.loads(raw) == {
        "type": "session_init_ack",
        "session_id": "s-A8C1BDE4",
        "message": "session created",
        "trace_id": "trace-1",
        "protocol_version": "1.0",
        "use_binary_frame": False,  # F3: sent although false
        "negotiated_codec": "opus",
        "negotiated_audio_format": "opus",
        "negotiated_sample_rate": 16000,
        "negotiated_channel_count": 1,
    }
    assert b'"negotiated_sample_rate":16000,' in raw and b'"negotiated_channel_count":1' in raw  # F8
    assert b"null" not in raw and b"assigned_node_id" not in raw
    assert _enc(p.SessionInitAck.new("s-1", "t", resumed=True))["resumed"] is True
    assert _enc(p.SessionInitAck.new("s-1", "t", resumed=False))["resumed"] is False


def test_node_register_ack_has_every_always_present_key() -> None:
    assert _enc(p.NodeRegisterAck.new("node-3F09A1C2")) == {
        "type": "node_register_ack",
        "node_id": "node-3F09A1C2",
        "message": "Node registered successfully",
        "status": "registering",
    }


def test_outbound_optional_keys_are_omitted_not_null() -> None:
    assert _enc(p.Error(code="INVALID_SESSION", message="Session does not exist")) == {
        "type": "error",
        "code": "INVALID_SESSION",
        "message": "Session does not exist",
    }
    assert _enc(p.Error(code="X", message="m", details={"a": [1]}))["details"] == {"a": [1]}
    assert _enc(p.JobCancel(job_id="job-1")) == {"type": "job_cancel", "job_id": "job-1"}
    missing = _enc(p.MissingResult(session_id="s-1", utterance_index=2, reason="gap_timeout", created_at_ms=5))
    assert missing == {
        "type": "missing_result",
        "session_id": "s-1",
        "utterance_index": 2,
        "reason": "gap_timeout",
        "created_at_ms": 5,
    }
    ui = _enc(p.UiEvent(trace_id="t", session_id="s-1", job_id="j", utterance_index=0, event="DISPATCHED", status="ok"))
    assert set(ui) == {"type", "trace_id", "session_id", "job_id", "utterance_index", "event", "status"}
    result = p.TranslationResult(
        session_id="s-1",
        utterance_index=0,
        job_id="j",
        text_asr="",
        text_translated="",
        tts_audio="",
        tts_format="pcm16",
        trace_id="t",
        scheduler_sent_at_ms=1767000000000,
        network_timings=p.NetworkTimings(scheduler_to_node_ms=3),
    )
    out = _enc(result)
    assert _nulls(out) == []
    assert out["text_asr"] == "" and out["tts_audio"] == ""  # always-present keys, even when empty
    assert out["network_timings"] == {"scheduler_to_node_ms": 3}
    for key in ("extra", "group_id", "part_index", "service_timings", "asr_quality_level", "segments_meta"):
        assert key not in out
    assert _enc(p.ServerHeartbeat(session_id="s-1", timestamp=1767000000000))["timestamp"] == 1767000000000
    assert _enc(p.SessionCloseAck(session_id="s-1")) == {"type": "session_close_ack", "session_id": "s-1"}


def _assign(**fields: Any) -> p.JobAssign:
    values: dict[str, Any] = {
        "attempt_id": 1,
        "job_id": "job-0b6f2a44-1f5e-4c3e-9a0a-5b1e1f7e2d11",
        "session_id": "s-A8C1BDE4",
        "utterance_index": 12,
        "src_lang": "auto",
        "tgt_lang": "en",
        "pipeline": p.DEFAULT_PIPELINE,
        "audio": "AAAA",
        "audio_format": "opus",
        "sample_rate": 16000,
        "trace_id": "t",
    }
    values.update(fields)
    return p.JobAssign(**values)


def test_job_assign_omits_optional_keys_and_false_flags() -> None:
    out = _enc(_assign())
    assert out == {
        "type": "job_assign",
        "attempt_id": 1,
        "job_id": "job-0b6f2a44-1f5e-4c3e-9a0a-5b1e1f7e2d11",
        "session_id": "s-A8C1BDE4",
        "utterance_index": 12,
        "src_lang": "auto",
        "tgt_lang": "en",
        "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": True, "use_semantic": False, "use_tone": False},
        "audio": "AAAA",
        "audio_format": "opus",
        "sample_rate": 16000,
        "trace_id": "t",
    }
    full = _enc(
        _assign(
            features=p.FeatureFlags(),
            padding_ms=280,
            is_manual_cut=True,
            is_timeout_triggered=False,
            enable_streaming_asr=True,
            partial_update_interval_ms=1000,
            turn_id="turn",
        )
    )
    assert full["features"] == {} and full["padding_ms"] == 280 and full["is_manual_cut"] is True
    assert "is_timeout_triggered" not in full and "is_max_duration_triggered" not in full  # omit-false
    assert full["partial_update_interval_ms"] == 1000 and full["turn_id"] == "turn"


def test_pipeline_with_nulls_is_sent_with_all_five_booleans() -> None:
    pipeline = msgspec.json.decode(
        b'{"use_asr":true,"use_nmt":true,"use_tts":false,"use_tone":null}', type=p.PipelineConfig
    )
    assert json.loads(p.encode(pipeline)) == {
        "use_asr": True,
        "use_nmt": True,
        "use_tts": False,
        "use_semantic": False,
        "use_tone": False,
    }


def test_ints_are_encoded_as_json_integers() -> None:
    raw = p.encode(_assign(sample_rate=16000, padding_ms=220, utterance_index=2**40))
    assert b'"sample_rate":16000,' in raw and b'"padding_ms":220' in raw and b'"utterance_index":1099511627776' in raw
    assert b"16000.0" not in raw and b"e+" not in raw


@pytest.mark.parametrize("attempt", [1, 2, 9, 10, 4294967295])
def test_assign_body_and_frame_splice_the_attempt_id(attempt: int) -> None:
    assign = _assign(is_manual_cut=True, padding_ms=280, turn_id="turn-1", attempt_id=7)
    body = p.assign_body(assign)
    assert b"attempt_id" not in body and b'"job_id":"job-0b6f2a44' in body
    frame = p.assign_frame(body, attempt)
    assert frame == p.encode(msgspec.structs.replace(assign, attempt_id=attempt))  # byte for byte
    decoded = json.loads(frame)
    assert decoded["type"] == "job_assign" and decoded["attempt_id"] == attempt
    assert list(decoded)[:3] == ["type", "attempt_id", "job_id"]
    assert msgspec.json.decode(frame, type=p.JobAssign) == msgspec.structs.replace(assign, attempt_id=attempt)


def test_assign_frames_of_different_attempts_differ_only_in_attempt_id() -> None:
    body = p.assign_body(_assign())
    one, two = json.loads(p.assign_frame(body, 1)), json.loads(p.assign_frame(body, 2))
    assert one.pop("attempt_id") == 1 and two.pop("attempt_id") == 2
    assert one == two


def test_identifier_formats() -> None:
    sid, nid, jid = p.new_session_id(), p.new_node_id(), p.new_job_id()
    assert sid.startswith("s-") and len(sid) == 10 and sid[2:] == sid[2:].upper()
    int(sid[2:], 16)
    assert nid.startswith("node-") and len(nid) == 13 and nid[5:] == nid[5:].upper()
    int(nid[5:], 16)
    assert jid.startswith("job-") and len(jid) == 40 and jid == jid.lower()
    assert p.new_job_id() != jid and p.new_session_id() != sid


# ---------------------------------------------------------------------------------------------------------
# JobResult helpers (§3 ExtraResult, §6.2, §12.1)


def _result(**fields: Any) -> p.JobResult:
    values: dict[str, Any] = {
        "job_id": "job-1",
        "attempt_id": 1,
        "node_id": "n",
        "session_id": "s-1",
        "utterance_index": 0,
        "success": True,
        "trace_id": "t",
    }
    values.update(fields)
    return p.JobResult(**values)


@pytest.mark.parametrize(
    ("fields", "empty"),
    [
        ({}, True),
        ({"text_asr": "", "text_translated": "", "tts_audio": ""}, True),
        ({"text_asr": "你好"}, False),
        ({"text_translated": "hello"}, False),
        ({"tts_audio": "AAAA"}, False),
        ({"text_asr": "", "text_translated": "", "tts_audio": "", "extra": {"reason": "ASR_EMPTY"}}, True),
        ({"text_asr": "late", "extra": {"reason": "NO_TEXT_ASSIGNED"}}, True),  # the reason marks it (N9)
        ({"text_asr": "x", "extra": {"reason": "asr_empty"}}, False),  # exact spelling only (F7)
        ({"text_asr": "", "extra": {"filtered": True, "reason": "low energy"}}, True),
        ({"text_asr": "x", "extra": {"reason": None}}, False),
    ],
)
def test_is_empty(fields: dict[str, Any], empty: bool) -> None:
    assert _result(**fields).is_empty is empty


def test_forwarded_extra_keeps_only_extra_result_keys() -> None:
    extra = {
        "audioBuffered": 1.5,
        "pendingEmptyJobs": [],
        "detected_src_lang": "zh",
        "raw_asr_text": "x",
        "emotion": "happy",
        "speech_rate": 1.25,
        "voice_style": "calm",
        "service_timings": {"asr_ms": 10},
        "language_probability": 0.9,
        "language_probabilities": {"zh": 0.9, "en": 0.1},
        "reason": "ASR_EMPTY",
    }
    assert _result(extra=extra).forwarded_extra() == {
        "emotion": "happy",
        "speech_rate": 1.25,
        "voice_style": "calm",
        "service_timings": {"asr_ms": 10},
        "language_probability": 0.9,
        "language_probabilities": {"zh": 0.9, "en": 0.1},
        "reason": "ASR_EMPTY",
    }
    assert _result(extra={"audioBuffered": 2}).forwarded_extra() is None
    assert _result(extra={}).forwarded_extra() is None
    assert _result().forwarded_extra() is None


def test_forwarded_extra_drops_null_values() -> None:
    extra = {"emotion": None, "language_probability": None, "speech_rate": 1.0}
    assert _result(extra=extra).forwarded_extra() == {"speech_rate": 1.0}
    assert _result(extra={"reason": None}).forwarded_extra() is None


def test_service_timings() -> None:
    timings = {"asr_ms": 40, "nmt_ms": 30, "tts_ms": 20, "total_ms": 95}
    assert _result(extra={"service_timings": timings}, processing_time_ms=120).service_timings() == timings
    assert _result(processing_time_ms=120).service_timings() == {"total_ms": 120}
    assert _result(processing_time_ms=0).service_timings() == {"total_ms": 0}
    assert _result(extra={"service_timings": None}, processing_time_ms=7).service_timings() == {"total_ms": 7}
    assert _result(extra={"emotion": "x"}).service_timings() is None
    assert _result().service_timings() is None


def test_decoded_job_result_helpers_agree_with_the_frame() -> None:
    msg = p.decode_node(_raw(_job_result()))
    assert isinstance(msg, p.JobResult)
    assert msg.forwarded_extra() == {"emotion": "neutral", "language_probability": 0.98}
    assert msg.service_timings() == {"total_ms": 120}
    empty = p.decode_node(
        _raw(_job_result(text_asr="", text_translated="", tts_audio="", extra={"reason": "NO_TEXT_ASSIGNED"}))
    )
    assert isinstance(empty, p.JobResult) and empty.is_empty


# ---------------------------------------------------------------------------------------------------------
# Bad input: nesting, integer ranges, base64, node ids, excerpts (issue 9, items 7-11)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(
    ("decode", "template", "detail"),
    [
        pytest.param(
            p.decode_client, '{"type":"client_heartbeat","session_id":"s","timestamp":1,"x":$}', p.TOO_DEEP, id="skip"
        ),
        pytest.param(
            p.decode_node,
            '{"type":"node_error","node_id":"n","code":"c","message":"m","details":$}',
            p.TOO_DEEP,
            id="any",
        ),
        # msgspec may see the wrong type before it nests too deep: either answer is a clear one
        pytest.param(p.decode_client, '{"type":"client_heartbeat","session_id":$,"timestamp":1}', "", id="wrong-type"),
        pytest.param(p.decode_node, '{"type":$}', "", id="tag"),
    ],
)
def test_deep_nesting_is_a_protocol_error_not_a_recursion_error(
    decode: Any, template: str, detail: str, depth: int
) -> None:
    with pytest.raises(p.ProtocolError) as info:
        decode(template.replace("$", _nested(depth)))
    assert detail in info.value.detail and not info.value.wrong_direction


def test_decode_json_reports_deep_nesting_as_a_decode_error() -> None:
    decoder = msgspec.json.Decoder()
    assert p.decode_json(decoder, _nested(50)) == eval(_nested(50))  # a literal of lists
    with pytest.raises(msgspec.DecodeError, match=p.TOO_DEEP):
        p.decode_json(decoder, _nested(5_000))


def test_wrong_direction_check_survives_deep_nesting() -> None:
    # The type is known but of the wrong direction; reading it alone (the second decode) nests too deep.
    with pytest.raises(p.ProtocolError) as info:
        p.decode_client('{"type":"job_assign","job_id":1,"x":' + _nested(5_000) + "}")
    assert "job_assign" in info.value.detail and not info.value.wrong_direction


_UTTERANCE = {
    "type": "utterance",
    "session_id": "s-1",
    "utterance_index": 0,
    "manual_cut": True,
    "src_lang": "zh",
    "tgt_lang": "en",
    "audio": "AAAA",
    "audio_format": "pcm16",
    "sample_rate": 16000,
}
_CHUNK = {"type": "audio_chunk", "session_id": "s-1", "seq": 0, "is_final": False}
U32_MAX, I64_MIN, I64_MAX = 2**32 - 1, -(2**63), 2**63 - 1

# (frame, field, smallest accepted, largest accepted): §1.5 ranges (u64 stops at the int64 maximum).
_RANGED: list[tuple[Any, dict[str, Any], str, int, int]] = [
    (p.decode_client, _UTTERANCE, "utterance_index", 0, I64_MAX),
    (p.decode_client, _UTTERANCE, "sample_rate", 0, U32_MAX),
    (p.decode_client, _CHUNK, "seq", 0, I64_MAX),
    (p.decode_client, {**_CHUNK, "client_timestamp_ms": 0}, "client_timestamp_ms", I64_MIN, I64_MAX),
    (p.decode_client, {"type": "client_heartbeat", "session_id": "s"}, "timestamp", I64_MIN, I64_MAX),
    (p.decode_client, {"type": "tts_started", "session_id": "s", "group_id": "g"}, "ts_start_ms", 0, I64_MAX),
    (p.decode_client, {"type": "tts_play_ended", "session_id": "s", "group_id": "g"}, "ts_end_ms", 0, I64_MAX),
    (p.decode_client, WEB_INIT, "partial_update_interval_ms", 0, I64_MAX),
    (p.decode_node, _job_result(), "attempt_id", 0, U32_MAX),
    (p.decode_node, _job_result(), "utterance_index", 0, I64_MAX),
    (p.decode_node, _job_result(), "processing_time_ms", 0, I64_MAX),
    (p.decode_node, _job_result(), "part_index", 0, I64_MAX),
    (p.decode_node, _job_result(), "rerun_count", 0, U32_MAX),
    (p.decode_node, _job_result(), "node_completed_at_ms", I64_MIN, I64_MAX),
    (
        p.decode_node,
        {"type": "job_ack", "job_id": "j", "node_id": "n", "session_id": "s", "trace_id": "t"},
        "attempt_id",
        0,
        U32_MAX,
    ),
    (p.decode_node, _node().register_frame(), "max_concurrent_jobs", 0, U32_MAX),
    (p.decode_node, _node().heartbeat_frame(), "timestamp", I64_MIN, I64_MAX),
    (p.decode_node, _node().heartbeat_frame(), "max_concurrent_jobs", 0, U32_MAX),
]


@pytest.mark.parametrize(
    ("decode", "frame", "field", "low", "high"), _RANGED, ids=[f"{f['type']}.{k}" for _, f, k, _, _ in _RANGED]
)
def test_int_fields_accept_their_range_and_reject_the_rest(
    decode: Any, frame: dict[str, Any], field: str, low: int, high: int
) -> None:
    for value in (low, high):
        assert getattr(decode(_raw({**frame, field: value})), field) == value
    for value in (low - 1, high + 1, 2**64, -(2**64), 10**400):
        with pytest.raises(p.ProtocolError) as info:
            decode(_raw({**frame, field: value}))
        assert f"$.{field}" in info.value.detail and not info.value.wrong_direction


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("AAAA", b"\0\0\0"),
        ("", b""),
        ("QUJ", None),  # bad padding: binascii.Error
        ("%%%%", None),  # outside the alphabet
        ("AAAé", None),  # non-ASCII: a plain ValueError
        ("ＡＡＡＡ", None),  # full-width letters
        ("AA\nAA", None),
    ],
)
def test_decode_base64_is_strict_and_never_raises(text: str, decoded: bytes | None) -> None:
    assert p.decode_base64(text) == decoded


@pytest.mark.parametrize(
    ("node_id", "valid"),
    [
        ("node-3F09A1C2", True),
        ("gpu-box_1.lab:0", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("node 1", False),
        ("node\t1", False),
        ("node-1\n", False),
        ("nöde", False),
        ("node/1", False),
    ],
)
def test_valid_node_id(node_id: str, valid: bool) -> None:
    assert p.valid_node_id(node_id) is valid
    assert p.valid_node_id(p.new_node_id())


def test_excerpt_cuts_long_input_and_says_how_much() -> None:
    assert p.excerpt("short") == "short"
    assert p.excerpt("x" * p.EXCERPT_CHARS) == "x" * p.EXCERPT_CHARS
    cut = p.excerpt("y" * 8_000_000)
    assert cut.startswith("y" * p.EXCERPT_CHARS) and cut.endswith("... (7999800 more characters)")
    assert p.excerpt({"k": "v" * 1000}, 20) == "{'k': 'vvvvvvvvvvvvv... (989 more characters)"
    assert p.excerpt(None) == "None"


def test_protocol_error_detail_quoting_input_is_cut() -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_node(_raw({"type": "t" * 1_000_000}))
    assert len(info.value.detail) < p.EXCERPT_CHARS + 40


def test_excerpt_of_a_value_too_deep_to_repr_says_so() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    assert p.excerpt(deep) == "(list nested too deeply to show)"
