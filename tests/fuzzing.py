"""Seeded mutations of valid lingua frames, and drivers that send them to a running Dragoman.

Shared by the CI fuzz test (tests/test_fuzz.py, a few thousand frames) and the long runs of benchmarks/fuzz.py
(100,000 frames and more per socket). Every mutant starts from a frame that lingua's web client or Electron node
really sends (built with tests/peers.py) and says whether it is *certainly* refused at decoding: those must get
``error INVALID_MESSAGE`` on /ws/session, a log line on /ws/node and a 400/422 from the HTTP API. The others may
be valid and are answered however Dragoman answers them; nothing may close a socket, answer 5xx or log a
traceback (the drivers check the first two, the callers the log).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import string
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

from peers import Frame, LinguaNode, LinguaWebClient, Peer, b64, now_ms, pcm16, voiced_chunk

# Field kinds: a JSON type, or an integer range of PROTOCOL.md §1.5. A trailing "?" marks an optional field
# (null is valid). "any" fields take any JSON value.
U32_MAX, I64_MIN, I64_MAX = 2**32 - 1, -(2**63), 2**63 - 1
INT_RANGES = {"u32": (0, U32_MAX), "u64": (0, I64_MAX), "i64": (I64_MIN, I64_MAX)}
Schema = dict[str, str]

_COMMON_CLIENT: Schema = {"session_id": "str"}
CLIENT_SCHEMAS: dict[str, Schema] = {
    "audio_chunk": {
        **_COMMON_CLIENT,
        "seq": "u64",
        "is_final": "bool",
        "payload": "b64?",
        "client_timestamp_ms": "i64?",
    },
    "utterance": {
        **_COMMON_CLIENT,
        "utterance_index": "u64",
        "manual_cut": "bool",
        "src_lang": "str",
        "tgt_lang": "str",
        "audio": "b64",
        "audio_format": "str",
        "sample_rate": "u32",
        "trace_id": "str?",
        "pipeline": "object?",
        "features": "object?",
    },
    "client_heartbeat": {**_COMMON_CLIENT, "timestamp": "i64"},
    "tts_started": {**_COMMON_CLIENT, "group_id": "str", "ts_start_ms": "u64", "trace_id": "str?"},
    "tts_play_ended": {**_COMMON_CLIENT, "group_id": "str", "ts_end_ms": "u64", "trace_id": "str?"},
    "session_init": {
        "client_version": "str",
        "platform": "str",
        "src_lang": "str",
        "tgt_lang": "str",
        "features": "object?",
        "mode": "str?",
        "lang_a": "str?",
        "lang_b": "str?",
        "auto_langs": "list?",
        "trace_id": "str?",
        "partial_update_interval_ms": "u64?",
    },
    "room_create": {},
}
_JOB_KEYS: Schema = {"job_id": "str", "node_id": "str", "session_id": "str", "trace_id": "str"}
NODE_SCHEMAS: dict[str, Schema] = {
    "node_register": {
        "version": "str",
        "platform": "str",
        "hardware": "object",
        "installed_models": "list",
        "capability_by_type": "list",
        "features_supported": "object",
        "accept_public_jobs": "bool",
        "language_capabilities": "object?",
        "max_concurrent_jobs": "u32?",
    },
    "node_heartbeat": {
        "node_id": "str",
        "timestamp": "i64",
        "resource_usage": "object",
        "installed_services": "list",
        "capability_by_type": "list",
        "rerun_metrics": "object?",
        "language_capabilities": "object?",
        "max_concurrent_jobs": "u32?",
    },
    "job_result": {
        **_JOB_KEYS,
        "attempt_id": "u32",
        "utterance_index": "u64",
        "success": "bool",
        "text_asr": "str?",
        "text_translated": "str?",
        "tts_audio": "str?",
        "extra": "object?",
        "processing_time_ms": "u64?",
        "error": "object?",
        "node_completed_at_ms": "i64?",
        "details": "any",
    },
    "asr_partial": {**_JOB_KEYS, "utterance_index": "u64", "text": "str", "is_final": "bool"},
    "job_ack": {**_JOB_KEYS, "attempt_id": "u32"},
    "job_started": {**_JOB_KEYS, "attempt_id": "u32"},
    "node_error": {"node_id": "str", "code": "str", "message": "str", "details": "any"},
}
HTTP_SCHEMA: Schema = {
    "src_lang": "str",
    "tgt_lang": "str",
    "audio": "b64",
    "audio_format": "str?",  # these two have defaults in a request body
    "sample_rate": "u32?",
    "mode": "str?",
    "pipeline": "object?",
    "features": "object?",
    "trace_id": "str?",
}
UNKNOWN_SESSION = "s-FUZZ0000"  # never a real session's id: 4 flipped characters cannot make one
MUTANT_NODE = "node-MUTANT-REGISTRATION"  # the id of mutated registrations, never the driver's node id
_JSON_TYPES = ("str", "int", "bool", "list", "object", "null")


def _json_type(kind: str) -> str:
    kind = kind.rstrip("?")
    if kind in INT_RANGES:
        return "int"
    return "str" if kind == "b64" else kind


@dataclass(frozen=True)
class Mutant:
    text: str
    mutation: str
    invalid: bool  # certainly refused when decoded


@dataclass
class Mutator:
    """Seeded mutants of lingua frames. ``max_string`` bounds the huge strings (and so the frames)."""

    seed: int
    max_string: int = 64_000
    rng: random.Random = field(init=False)
    _index: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        node = LinguaNode("ws://127.0.0.1:9/ws/node", node_id="node-FUZZ0000")
        self._register = node.register_frame()
        self._heartbeat = node.heartbeat_frame()
        self._chunk_payload = b64(voiced_chunk(packets=4))
        self._utterance_audio = b64(pcm16(60))

    # -- valid frames (PROTOCOL.md §5, §7), as lingua peers send them --

    def client_frame(self, session_id: str) -> Frame:
        kind = self.rng.choices(
            [
                "audio_chunk",
                "utterance",
                "client_heartbeat",
                "tts_started",
                "tts_play_ended",
                "session_init",
                "room_create",
            ],
            weights=[30, 30, 15, 8, 8, 4, 5],
        )[0]
        frame: Frame = {"type": kind, "session_id": session_id}
        if kind == "audio_chunk":
            frame |= {"seq": self._next(), "is_final": self.rng.random() < 0.1, "payload": self._chunk_payload}
        elif kind == "utterance":
            frame |= {
                "utterance_index": self._next(),
                "manual_cut": True,
                "src_lang": "zh",
                "tgt_lang": "en",
                "audio": self._utterance_audio,
                "audio_format": "pcm16",
                "sample_rate": 16000,
                "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": False},
            }
        elif kind == "client_heartbeat":  # for another session: only the drivers' probes get server_heartbeat
            frame |= {"session_id": UNKNOWN_SESSION, "timestamp": now_ms()}
        elif kind in ("tts_started", "tts_play_ended"):
            stamp = "ts_start_ms" if kind == "tts_started" else "ts_end_ms"
            frame |= {"trace_id": str(uuid.uuid4()), "group_id": f"group_{session_id}_1", stamp: now_ms()}
        elif kind == "session_init":
            frame = {
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
                "trace_id": str(uuid.uuid4()),
                "tenant_id": None,
            }
        else:
            frame = {"type": "room_create", "client_ts": now_ms(), "display_name": "A", "preferred_lang": "en"}
        return frame

    def node_frame(self, node_id: str) -> Frame:
        kind = self.rng.choices(list(NODE_SCHEMAS), weights=[10, 25, 35, 8, 8, 6, 8])[0]
        job = {
            "job_id": f"job-{uuid.UUID(int=self.rng.getrandbits(128), version=4)}",
            "node_id": node_id,
            "session_id": UNKNOWN_SESSION,
            "trace_id": str(uuid.uuid4()),
        }
        if kind == "node_register":  # as another node: only the drivers' probes get an ack for node_id
            return {**self._register, "node_id": MUTANT_NODE}
        if kind == "node_heartbeat":
            return {**self._heartbeat, "node_id": node_id, "timestamp": now_ms()}
        if kind == "job_result":
            return {
                "type": "job_result",
                **job,
                "attempt_id": 1,
                "utterance_index": self._next(),
                "success": True,
                "text_asr": "你好",
                "text_translated": "hello",
                "tts_audio": self._chunk_payload,
                "tts_format": "opus",
                "extra": {"emotion": "neutral", "audioBuffered": 1.5},
                "processing_time_ms": 120,
            }
        if kind == "asr_partial":
            return {"type": "asr_partial", **job, "utterance_index": self._next(), "text": "你", "is_final": False}
        if kind in ("job_ack", "job_started"):
            return {"type": kind, **job, "attempt_id": 1}
        return {"type": "node_error", "node_id": node_id, "code": "X", "message": "m", "details": {"k": [1, 2]}}

    def http_body(self) -> Frame:
        return {
            "src_lang": "zh",
            "tgt_lang": "en",
            "audio": self._utterance_audio,
            "audio_format": "pcm16",
            "sample_rate": 16000,
            "pipeline": {"use_asr": True, "use_nmt": True, "use_tts": False},
        }

    def _next(self) -> int:
        self._index += 1
        return self._index

    # -- mutation --

    def mutate(self, frame: Frame, schema: Schema, tagged: bool = True) -> Mutant:
        """One mutant of ``frame``; ``schema`` lists the fields whose kind is known (see the module)."""
        ops: list[tuple[str, Callable[[Frame, Schema], tuple[Any, bool]]]] = [
            ("truncate", self._truncate),
            ("flip", self._flip),
            ("type_swap", self._type_swap),
            ("huge_number", self._huge_number),
            ("negative", self._negative),
            ("deep_nesting", self._deep_nesting),
            ("nesting", self._nesting),
            ("non_ascii_base64", self._non_ascii_base64),
            ("missing_key", self._missing_key),
            ("huge_string", self._huge_string),
            ("not_an_object", self._not_an_object),
            ("extra_keys", self._extra_keys),
            ("valid", lambda f, s: (f, False)),
        ]
        if tagged:
            ops.append(("unknown_type", self._unknown_type))
        name, op = self.rng.choice(ops)
        value, invalid = op(dict(frame), schema)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=self.rng.random() < 0.5)
        return Mutant(text, name, invalid)

    def _fields(self, frame: Frame, schema: Schema, kinds: Callable[[str], bool]) -> list[str]:
        return [k for k, kind in schema.items() if k in frame and kinds(kind)]

    def _truncate(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        text = json.dumps(frame)
        return text[: self.rng.randrange(len(text))], True  # a proper prefix of an object is never JSON

    def _flip(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        chars = list(json.dumps(frame, ensure_ascii=False))
        for _ in range(self.rng.randint(1, 4)):
            i = self.rng.randrange(len(chars))
            chars[i] = self.rng.choice(string.printable + "é你\u2028\x00\x7f")
        return "".join(chars), False

    def _other_value(self, kind: str) -> Any:
        """A JSON value of another type than ``kind`` (never null: null is valid for an optional field)."""
        choices = [t for t in _JSON_TYPES if t not in (_json_type(kind), "null")]
        return {
            "str": "x",
            "int": self.rng.randint(-5, 5),
            "bool": self.rng.random() < 0.5,
            "list": [1, "a"],
            "object": {"k": "v"},
        }[self.rng.choice(choices)]

    def _type_swap(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        typed = self._fields(frame, schema, lambda kind: kind != "any")
        if not typed:
            return frame, False
        key = self.rng.choice(typed)
        frame[key] = self._other_value(schema[key])
        return frame, True

    def _huge_number(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        ints = self._fields(frame, schema, lambda kind: kind.rstrip("?") in INT_RANGES)
        if not ints:
            return frame, False
        key = self.rng.choice(ints)
        high = INT_RANGES[schema[key].rstrip("?")][1]
        frame[key] = self.rng.choice(
            [high + 1, 2**64, 2**64 + self.rng.getrandbits(64), 10 ** self.rng.randint(20, 400)]
        )
        return frame, True

    def _negative(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        ints = self._fields(frame, schema, lambda kind: kind.rstrip("?") in INT_RANGES)
        if not ints:
            return frame, False
        key = self.rng.choice(ints)
        low = INT_RANGES[schema[key].rstrip("?")][0]
        frame[key] = low - self.rng.choice([1, 2, 1000, 2**63])
        return frame, True

    def _deep_nesting(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        # Deeper than any recursion limit of the decoder: refused wherever it sits, even under an unknown key.
        depth = self.rng.randint(1_100, 20_000)
        opener, closer = self.rng.choice([("[", "]"), ('{"a":', "}"), ("[{}, [", "]]")])
        key = self.rng.choice([*frame, "deep"])
        body = json.dumps({k: v for k, v in frame.items() if k != key})
        return body[:-1] + f', "{key}": ' + opener * depth + "1" + closer * depth + "}", True

    def _nesting(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        """Nesting up to about the decoder's limit, where an "any" field or an unknown key may still decode:
        whatever handles the value afterwards (encoding it again, logging it) must cope too."""
        depth = self.rng.randint(2, 1_100)
        key = self.rng.choice([*self._fields(frame, schema, lambda kind: kind in ("any", "object")), "nested"])
        body = json.dumps({k: v for k, v in frame.items() if k != key})
        return body[:-1] + f', "{key}": ' + '{"a":[' * depth + "1" + "]}" * depth + "}", False

    def _non_ascii_base64(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        fields = self._fields(frame, schema, lambda kind: kind.rstrip("?") == "b64")
        if not fields:
            return frame, False
        key = self.rng.choice(fields)
        text = str(frame[key]) or "AAAA"
        i = self.rng.randrange(len(text) + 1)
        frame[key] = text[:i] + self.rng.choice("éü你ＡＡ\u00a0") + text[i:]
        return frame, False  # valid JSON: §5.2 treats the payload as empty, §5.3 answers INTERNAL_ERROR

    def _missing_key(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        required = self._fields(frame, schema, lambda kind: not kind.endswith("?") and kind != "any")
        if not required:
            return frame, False
        del frame[self.rng.choice(required)]
        return frame, True

    def _huge_string(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        key = self.rng.choice([*self._fields(frame, schema, lambda kind: _json_type(kind) == "str"), "pad"])
        size = self.rng.randint(1_000, self.max_string)
        frame[key] = self.rng.choice(["x", "é", "你", "\\", '"']) * size
        return frame, False

    def _not_an_object(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        return self.rng.choice([[frame], "null", "42", '"text"', "true", "", " ", "{}", "[]"]), True

    def _extra_keys(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        for i in range(self.rng.randint(1, 5)):
            frame[f"x{i}_{self.rng.getrandbits(16)}"] = self._other_value("null")
        return frame, False  # F4: unknown keys are ignored

    def _unknown_type(self, frame: Frame, schema: Schema) -> tuple[Any, bool]:
        frame["type"] = "fuzz_" + "".join(self.rng.choices(string.ascii_lowercase, k=self.rng.randint(1, 12)))
        return frame, True


# ---------------------------------------------------------------------------------------------------------
# Drivers: send mutants in batches, each followed by a probe that must be answered


# What a client may get for a mutant: §2.3 and §5 answers, and the failure of a job it made (no node runs).
ANSWER_CODES = frozenset({"INVALID_MESSAGE", "INTERNAL_ERROR", "INVALID_SESSION", "NO_AVAILABLE_NODE"})
MAX_ANSWER_CHARS = 1_000  # an error reply quotes at most an excerpt of the input


@dataclass
class Tally:
    frames: int = 0
    certainly_invalid: int = 0
    errors_answered: int = 0  # error frames (client), 400/422 (HTTP)
    refused_registrations: int = 0  # node sockets closed with 1008 for an invalid node_id (then reconnected)
    by_mutation: dict[str, int] = field(default_factory=dict)

    def count(self, mutant: Mutant) -> None:
        self.frames += 1
        self.certainly_invalid += mutant.invalid
        self.by_mutation[mutant.mutation] = self.by_mutation.get(mutant.mutation, 0) + 1


async def fuzz_client(client: LinguaWebClient, mutator: Mutator, frames: int, batch: int = 25) -> Tally:
    """Send ``frames`` mutants on one session socket (already initialised). After each batch a heartbeat
    must come back; every error before it has a code of §14 and a short message, and there is at least one
    INVALID_MESSAGE per certainly invalid mutant. The socket must never close (§2.3)."""
    assert client.session_id is not None
    tally = Tally()
    while tally.frames < frames:
        expected = 0
        for _ in range(min(batch, frames - tally.frames)):
            base = mutator.client_frame(client.session_id)
            mutant = mutator.mutate(base, CLIENT_SCHEMAS[base["type"]])
            tally.count(mutant)
            expected += mutant.invalid
            await client.send_raw(mutant.text)
        beat = {"type": "client_heartbeat", "session_id": client.session_id, "timestamp": now_ms()}
        await client.send_raw(json.dumps(beat))
        invalid = 0
        while (frame := await client.recv(timeout=15)).get("type") != "server_heartbeat":
            if frame["type"] == "error":
                assert frame["code"] in ANSWER_CODES, frame
                assert len(frame["message"]) < MAX_ANSWER_CHARS, frame["message"][:300]
                tally.errors_answered += 1
                invalid += frame["code"] == "INVALID_MESSAGE"
        assert invalid >= expected, f"{expected} certainly invalid frames, {invalid} INVALID_MESSAGE answers"
        client.received.clear()
    return tally


async def fuzz_node(url: str, node_id: str, mutator: Mutator, frames: int, batch: int = 25) -> tuple[LinguaNode, Tally]:
    """Send ``frames`` mutants on a node socket. Nothing is sent back (§2.3) except to a registration: after
    each batch the node registers again and must get its ack. A mutated registration with an invalid node_id
    closes the socket with 1008 (issue 9, item 7); then the node reconnects, as the Electron node does."""
    tally = Tally()
    node = LinguaNode(url, node_id=node_id)
    await node.open()
    while tally.frames < frames:
        try:
            for _ in range(min(batch, frames - tally.frames)):
                base = mutator.node_frame(node_id)
                mutant = mutator.mutate(base, NODE_SCHEMAS[base["type"]])
                tally.count(mutant)
                await node.send_raw(mutant.text)
            await _register(node, node_id)
        except (AssertionError, ConnectionClosed) as exc:
            ws = node.ws
            if ws is None or ws.close_code != 1008 or "invalid node_id" not in (ws.close_reason or ""):
                raise AssertionError(f"node socket failed: {exc}") from exc
            tally.refused_registrations += 1
            await node.close()
            node = LinguaNode(url, node_id=node_id)
            await node.open()
            await _register(node, node_id)
    return node, tally


async def _register(node: LinguaNode, node_id: str) -> None:
    """Register as ``node_id`` and wait for its ack, passing over the acks of mutated registrations."""
    await node.send({**node.register_frame(), "node_id": node_id})
    await node.expect("node_register_ack", timeout=15, node_id=node_id)
    node.received.clear()
    node.skipped.clear()


async def fuzz_http(http: httpx.AsyncClient, mutator: Mutator, requests: int) -> Tally:
    """POST ``requests`` mutated job bodies (and GET some mutated job ids): never a 5xx, always JSON; a certainly
    invalid body gets 400 or 422, non-ASCII base64 audio too."""
    tally = Tally()
    for _ in range(requests):
        mutant = mutator.mutate(mutator.http_body(), HTTP_SCHEMA, tagged=False)
        tally.count(mutant)
        resp = await http.post(
            "/api/v1/jobs", content=mutant.text.encode(), headers={"content-type": "application/json"}
        )
        assert resp.status_code in (202, 400, 422), (resp.status_code, resp.text[:300], mutant.mutation)
        body = resp.json()
        if resp.status_code != 202:
            tally.errors_answered += 1
            assert body["error"] and len(body["message"]) < MAX_ANSWER_CHARS, body
        refused = mutant.invalid or mutant.mutation == "non_ascii_base64"
        assert resp.status_code != 202 or not refused, (mutant.mutation, mutant.text[:300])
        if mutator.rng.random() < 0.1:
            job_id = mutator.rng.choice([body.get("job_id") or "job-x", "%00", "é" * 300, "x" * 5000])
            wait = mutator.rng.choice(["0", "-1", "nan", "1e400", "0.01", "x"])
            got = await http.get(f"/api/v1/jobs/{job_id}", params={"wait": wait})
            assert got.status_code in (200, 404, 422), (got.status_code, got.text[:300])
    return tally


@contextlib.asynccontextmanager
async def reading(peer: Peer) -> AsyncIterator[None]:
    """Keep reading (and dropping) what ``peer`` is sent while the caller fuzzes elsewhere, as a live client
    does: an unread socket stops answering pings and is closed by the server (1011)."""

    async def read() -> None:
        while True:
            await peer.recv(timeout=3_600)
            peer.received.clear()

    task = asyncio.create_task(read())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # an AssertionError here means the socket was closed


async def round_trip(client: LinguaWebClient, node: LinguaNode, text: str = "after the fuzz") -> None:
    """A normal utterance through the fuzzed sockets: the node registers cleanly, the client closes the fuzzed
    session (it holds the mutants' slots; a socket has one session at a time) and opens a fresh one, and the
    result comes back."""
    node.langs = ["zh", "en"]
    await node.register()
    await node.heartbeat()
    await client.close_session()
    await client.expect("session_close_ack", timeout=30)
    await client.init(two_way=False)
    audio = pcm16(200)
    await client.utterance(0, audio)
    for _ in range(1_000):  # jobs of mutants may come first: failing them frees the node's capacity
        job = await node.next_job(timeout=10)
        if job["session_id"] == client.session_id:
            break
        await node.fail(job)
    assert job["session_id"] == client.session_id and base64.b64decode(job["audio"]) == audio
    await node.result(job, text_asr=text)
    [outcome] = await client.outcomes(1, timeout=10)
    assert outcome["type"] == "translation_result" and outcome["text_asr"] == text, outcome


def rss_bytes(pid: int | str = "self") -> tuple[int, int]:
    """Current and peak resident set size of a process (Linux /proc), in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]
