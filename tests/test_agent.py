"""The node agent (``dragoman node``) against a real Dragoman and against a scripted scheduler.

The scripted scheduler is a real ``websockets`` server on 127.0.0.1 that the test drives frame by frame: it is
how the cases a real scheduler never produces (a job before the ack, a repeated job id, a dropped socket at a
chosen moment) are exercised.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from dragoman import protocol as p
from dragoman.agent import AgentConfig, EngineConfig, NodeAgent, load_engine
from dragoman.agent.agent import Backoff, with_token
from dragoman.agent.cli import ConfigError, build_parser, resolve
from dragoman.agent.engines import (
    EchoEngine,
    EngineError,
    EngineResult,
    PartialSink,
    UnknownEngine,
    available_engines,
)
from dragoman.agent.ledger import Outbox, RecentSet

from conftest import StartDragoman, free_port
from peers import LinguaWebClient, pcm16, voiced_chunk

Frame = dict[str, Any]
SRC = Path(__file__).resolve().parents[1] / "src"

# ----------------------------------------------------------------------------------------------------
# A scripted scheduler
# ----------------------------------------------------------------------------------------------------


def check_wire(frame: Any, raw: str | bytes) -> Frame:
    """What a strict scheduler accepts: a JSON object in a text frame, a ``type``, no ``null`` except the first
    registration's ``node_id`` (F5/F6), integers where the protocol says int (F8)."""
    assert isinstance(raw, str), "node sent a binary frame (F3)"
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), raw[:200]
    nulls = [k for k, v in frame.items() if v is None and not (k == "node_id" and frame["type"] == "node_register")]
    assert not nulls, f"null values for {nulls}: {raw[:200]}"
    for key in ("attempt_id", "utterance_index", "processing_time_ms", "node_completed_at_ms", "timestamp"):
        if key in frame:
            assert type(frame[key]) is int, f"{key} is not an int: {raw[:200]}"
    return frame


class Link:
    """One node connection to the scripted scheduler."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.path = ws.request.path if ws.request else ""
        self.frames: list[Frame] = []
        self.closed = asyncio.Event()

    async def recv(self, timeout: float = 5.0) -> Frame:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame = check_wire(json.loads(raw), raw)
        self.frames.append(frame)
        return frame

    async def expect(self, type_: str, timeout: float = 5.0, **match: Any) -> Frame:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout)
                if frame["type"] == type_ and all(frame.get(k) == v for k, v in match.items()):
                    return frame

    async def expect_no(self, type_: str, timeout: float) -> None:
        """No ``type_`` frame within ``timeout`` seconds (other frames are recorded and passed over)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    frame = await self.recv(timeout)
                    assert frame["type"] != type_, f"unexpected {type_}: {frame}"

    async def send(self, frame: Frame | p.Outbound) -> None:
        data = p.encode(frame).decode() if isinstance(frame, p.Outbound) else json.dumps(frame)
        await self.ws.send(data)

    async def register(self, node_id: str = "node-TEST0001") -> Frame:
        """Read ``node_register``, acknowledge it with ``node_id`` (or the node's own), return the register frame."""
        reg = await self.expect("node_register")
        await self.send(p.NodeRegisterAck.new(reg["node_id"] or node_id))
        return reg

    async def close(self) -> None:
        await self.ws.close()
        self.closed.set()


def job(
    index: int = 0,
    *,
    job_id: str | None = None,
    session_id: str = "s-TEST0001",
    audio: bytes | None = None,
    audio_format: str = "pcm16",
    **over: Any,
) -> p.JobAssign:
    """A ``job_assign`` as Dragoman sends it on the utterance path."""
    data = pcm16(200) if audio is None else audio
    fields: dict[str, Any] = {
        "attempt_id": 1,
        "job_id": job_id or p.new_job_id(),
        "session_id": session_id,
        "utterance_index": index,
        "src_lang": "zh",
        "tgt_lang": "en",
        "pipeline": p.DEFAULT_PIPELINE,
        "audio": base64.b64encode(data).decode(),
        "audio_format": audio_format,
        "sample_rate": 16000,
        "trace_id": "trace-1",
        "enable_streaming_asr": True,
        "partial_update_interval_ms": 1000,
        "is_manual_cut": True,
        "turn_id": str(uuid.uuid4()),
    }
    fields.update(over)
    return p.JobAssign(**fields)


class FakeScheduler:
    """A real WebSocket server on 127.0.0.1 whose node connections the test receives as :class:`Link`\\ s."""

    def __init__(self) -> None:
        self.links: asyncio.Queue[Link] = asyncio.Queue()
        self.server: Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/node"

    async def _handler(self, ws: ServerConnection) -> None:
        link = Link(ws)
        await self.links.put(link)
        await ws.wait_closed()

    async def __aenter__(self) -> FakeScheduler:
        self.server = await serve(self._handler, "127.0.0.1", 0, max_size=None)
        self.port = next(iter(self.server.sockets)).getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def accept(self, timeout: float = 5.0) -> Link:
        return await asyncio.wait_for(self.links.get(), timeout)


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Wait until ``condition()`` holds (polling; the agent's state changes as frames arrive)."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"condition still false after {timeout} s")


# ----------------------------------------------------------------------------------------------------
# Agents
# ----------------------------------------------------------------------------------------------------

StartAgent = Callable[..., Awaitable[NodeAgent]]


@pytest.fixture
async def agents() -> AsyncIterator[StartAgent]:
    """``await agents(urls, engine=..., echo_delay_ms=..., **AgentConfig fields)`` runs an agent in-process."""
    running: list[tuple[NodeAgent, asyncio.Task[None]]] = []

    async def start(
        urls: str | list[str], engine: Any = None, langs: tuple[str, ...] = ("zh", "en"), **kw: Any
    ) -> NodeAgent:
        engine_kw = {k: kw.pop(k) for k in list(kw) if k.startswith("echo_")}
        kw.setdefault("heartbeat_interval_s", 0.2)
        kw.setdefault("backoff_initial_s", 0.05)
        kw.setdefault("backoff_max_s", 0.2)
        config = AgentConfig(scheduler_urls=tuple([urls] if isinstance(urls, str) else urls), **kw)
        engine = engine or EchoEngine(EngineConfig(langs=langs, **engine_kw))
        agent = NodeAgent(config, engine)
        running.append((agent, asyncio.create_task(agent.run())))
        return agent

    yield start
    for agent, task in running:
        agent.stop()
        await asyncio.wait_for(task, 5)


class ProbeEngine(EchoEngine):
    """The echo engine, counting how many jobs run at once (a real subclass, not a mock)."""

    def __init__(self, config: EngineConfig) -> None:
        super().__init__(config)
        self.active = 0
        self.peak = 0
        self.started: list[str] = []

    async def run(self, job: p.JobAssign, partial: PartialSink) -> EngineResult:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.started.append(job.job_id)
        try:
            return await super().run(job, partial)
        finally:
            self.active -= 1


# ----------------------------------------------------------------------------------------------------
# Against a real Dragoman
# ----------------------------------------------------------------------------------------------------


async def test_utterance_through_dragoman_gets_the_echo_result(dragoman: StartDragoman, agents: StartAgent) -> None:
    d = await dragoman()
    agent = await agents(d.node_url)
    await asyncio.wait_for(agent.registered.wait(), 5)
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False, src_lang="zh", tgt_lang="en")
        audio = pcm16(1000)
        await client.utterance(0, audio)
        [result] = await client.outcomes(1)
    assert result["type"] == "translation_result", result
    assert result["text_asr"] == "echo: 32000 bytes, 1000 ms, pcm16"
    assert result["text_translated"] == "[en] echo: 32000 bytes, 1000 ms, pcm16"
    assert base64.b64decode(result["tts_audio"]) == audio and result["tts_format"] == "pcm16"
    assert "total_ms" in result["service_timings"]
    assert agent.node_id is not None and agent.node_id.startswith("node-")


async def test_streamed_chunks_through_dragoman_get_a_partial_and_the_echo_result(
    dragoman: StartDragoman, agents: StartAgent
) -> None:
    d = await dragoman()
    agent = await agents(d.node_url, echo_delay_ms=100)
    await asyncio.wait_for(agent.registered.wait(), 5)
    async with LinguaWebClient(d.session_url) as client:
        await client.init()  # the web client's two-way session
        chunks = [voiced_chunk(), voiced_chunk(), voiced_chunk()]
        for chunk in chunks:
            await client.chunk(chunk)
        await client.chunk(b"", is_final=True)
        [result] = await client.outcomes(1)
    text = "echo: 39 packets, 780 ms, opus"
    assert (result["text_asr"], result["text_translated"]) == (text, f"[en] {text}")
    assert base64.b64decode(result["tts_audio"]) == b"".join(chunks) and result["tts_format"] == "opus"
    partials = client.skipped_of("asr_partial")
    assert [f["text"] for f in partials] == [text] and partials[0]["job_id"] == result["job_id"]


async def test_dragoman_and_agent_keep_to_max_jobs(dragoman: StartDragoman, agents: StartAgent) -> None:
    d = await dragoman()
    probe = ProbeEngine(EngineConfig(langs=("zh", "en"), echo_delay_ms=150))
    agent = await agents(d.node_url, engine=probe, max_jobs=1)
    await asyncio.wait_for(agent.registered.wait(), 5)
    async with LinguaWebClient(d.session_url) as client:
        await client.init(two_way=False)
        for i in range(3):
            await client.utterance(i, pcm16(100 * (i + 1)))
        results = await client.outcomes(3, timeout=10)
    assert [r["utterance_index"] for r in results] == [0, 1, 2]
    assert [r["text_asr"] for r in results] == [
        f"echo: {3200 * (i + 1)} bytes, {100 * (i + 1)} ms, pcm16" for i in range(3)
    ]
    assert probe.peak == 1


# ----------------------------------------------------------------------------------------------------
# Against the scripted scheduler
# ----------------------------------------------------------------------------------------------------


async def test_registers_like_the_electron_node_and_heartbeats(agents: StartAgent) -> None:
    async with FakeScheduler() as sched:
        await agents(sched.url, max_jobs=3)
        link = await sched.accept()
        reg = await link.expect("node_register")
        assert reg["node_id"] is None and "node_id" in reg  # first registration: null, as the Electron node
        assert reg["platform"] in ("linux", "windows", "macos") and isinstance(reg["version"], str)
        hw = reg["hardware"]
        assert type(hw["cpu_cores"]) is int and type(hw["memory_gb"]) is int and hw["gpus"] == []
        assert reg["installed_models"] == [] and reg["features_supported"] == {} and reg["accept_public_jobs"] is True
        assert {s["type"] for s in reg["installed_services"]} == {"asr", "nmt", "tts"}
        assert {c["type"] for c in reg["capability_by_type"]} == {"asr", "nmt", "tts"}
        assert all(c["ready"] is False and c["reason"] == "only_cpu_running" for c in reg["capability_by_type"])
        langs = reg["language_capabilities"]
        assert langs["asr_languages"] == langs["semantic_languages"] == langs["tts_languages"] == ["zh", "en"]
        assert reg["max_concurrent_jobs"] == 3

        early = job(0)
        await link.send(early)  # before the ack: dropped, as the Electron node does (N3)
        await link.send(p.NodeRegisterAck.new("node-ABCDEF01"))
        first = await link.recv()
        assert first["type"] == "node_heartbeat"  # at once after the ack
        assert first["node_id"] == "node-ABCDEF01"
        usage = first["resource_usage"]
        assert set(usage) == {"cpu_percent", "mem_percent", "running_jobs"} and usage["running_jobs"] == 0
        assert first["max_concurrent_jobs"] == 3 and first["language_capabilities"] == langs
        await link.expect("node_heartbeat", timeout=2)  # and again after the interval

        late = job(1)
        await link.send(late)
        result = await link.expect("job_result", job_id=late.job_id)
        assert result["node_id"] == "node-ABCDEF01" and result["success"] is True
        assert (result["attempt_id"], result["session_id"], result["utterance_index"], result["trace_id"]) == (
            1,
            "s-TEST0001",
            1,
            "trace-1",
        )
        assert result["tts_format"] == "pcm16" and type(result["processing_time_ms"]) is int
        assert "total_ms" in result["extra"]["service_timings"]
        assert all(f.get("job_id") != early.job_id for f in link.frames if f["type"] == "job_result")


async def test_repeated_job_id_and_utterance_index_are_rejected_like_lingua(agents: StartAgent) -> None:
    async with FakeScheduler() as sched:
        await agents(sched.url)
        link = await sched.accept()
        await link.register()
        first = job(0)
        await link.send(first)
        ok = await link.expect("job_result", job_id=first.job_id)
        assert ok["success"] is True

        await link.send(job(0, job_id=first.job_id, attempt_id=2))  # the same job again (a failover to us)
        dup = await link.expect("job_result", job_id=first.job_id, attempt_id=2)
        assert dup["success"] is False and dup["error"]["code"] == "PROCESSING_ERROR"
        assert dup["error"]["message"].startswith("DUPLICATE_JOB_ID")

        other = job(0)  # another job for the same (session_id, utterance_index)
        await link.send(other)
        dup2 = await link.expect("job_result", job_id=other.job_id)
        assert dup2["success"] is False and dup2["error"]["code"] == "PROCESSING_ERROR"
        assert dup2["error"]["message"].startswith("DUPLICATE_UTTERANCE_INDEX")

        fresh = job(0, session_id="s-OTHER001")  # same index, other session: fine
        await link.send(fresh)
        assert (await link.expect("job_result", job_id=fresh.job_id))["success"] is True


async def test_job_cancel_cancels_the_running_job_and_sends_no_result(agents: StartAgent) -> None:
    async with FakeScheduler() as sched:
        agent = await agents(sched.url, echo_delay_ms=600)
        link = await sched.accept()
        await link.register()
        doomed, kept = job(0), job(1)
        await link.send(doomed)
        await link.send(kept)
        await until(lambda: agent.running_jobs == 2)
        await link.send(p.JobCancel(job_id=doomed.job_id, trace_id="trace-1", reason="job_timeout"))
        result = await link.expect("job_result", timeout=3)
        assert result["job_id"] == kept.job_id and result["success"] is True
        await link.expect_no("job_result", timeout=0.8)  # well past the cancelled job's 600 ms
        assert agent.cancelled == 1 and agent.running_jobs == 0 and agent.pending_results == 0


async def test_max_jobs_queues_the_extra_jobs(agents: StartAgent) -> None:
    probe = ProbeEngine(EngineConfig(langs=("zh", "en"), echo_delay_ms=300))
    async with FakeScheduler() as sched:
        agent = await agents(sched.url, engine=probe, max_jobs=2)
        link = await sched.accept()
        await link.register()
        jobs = [job(i) for i in range(5)]
        for j in jobs:
            await link.send(j)
        await until(lambda: agent.running_jobs == 5)  # all accepted...
        assert probe.active == 2  # ...two running, three queued
        results = [await link.expect("job_result", timeout=3) for _ in jobs]
        assert sorted(r["job_id"] for r in results) == sorted(j.job_id for j in jobs)
        assert all(r["success"] for r in results) and probe.peak == 2


async def test_reconnects_with_the_same_node_id_and_sends_results_finished_meanwhile(agents: StartAgent) -> None:
    async with FakeScheduler() as sched:
        agent = await agents(sched.url, echo_delay_ms=300)
        link = await sched.accept()
        await link.register("node-5EC0DD01")
        await link.expect("node_heartbeat")
        work = job(0)
        await link.send(work)
        await until(lambda: agent.running_jobs == 1)
        await link.close()  # the scheduler goes away while the job runs

        link2 = await sched.accept(timeout=5)
        reg = await link2.expect("node_register")
        assert reg["node_id"] == "node-5EC0DD01"
        await until(lambda: agent.pending_results == 1)  # the job finished before the ack: its result waits
        await link2.send(p.NodeRegisterAck.new("node-5EC0DD01"))
        assert (await link2.recv())["type"] == "node_heartbeat"
        result = await link2.expect("job_result", timeout=2)
        assert result["job_id"] == work.job_id and result["node_id"] == "node-5EC0DD01" and result["success"]
        assert agent.registrations == 2 and agent.pending_results == 0


async def test_fails_over_to_the_next_scheduler_url_and_sends_the_token(agents: StartAgent) -> None:
    dead = f"ws://127.0.0.1:{free_port()}/ws/node"  # nothing listens there
    async with FakeScheduler() as sched:
        agent = await agents([dead, sched.url], token="s3cret t")
        link = await sched.accept(timeout=5)
        assert link.path == "/ws/node?token=s3cret+t"
        await link.register()
        await asyncio.wait_for(agent.registered.wait(), 2)
        await link.close()
        link2 = await sched.accept(timeout=5)  # after trying the dead URL again, back here
        reg = await link2.register()
        assert reg["node_id"] == "node-TEST0001"


async def test_agent_stops_promptly_with_jobs_running() -> None:
    async with FakeScheduler() as sched:
        config = AgentConfig(scheduler_urls=(sched.url,), heartbeat_interval_s=0.2)
        agent = NodeAgent(config, EchoEngine(EngineConfig(langs=("en",), echo_delay_ms=10_000)))
        task = asyncio.create_task(agent.run())
        link = await sched.accept()
        await link.register()
        await link.send(job(0))
        await until(lambda: agent.running_jobs == 1)
        agent.stop()
        await asyncio.wait_for(task, 2)
        with pytest.raises(ConnectionClosed):
            await link.expect("job_result", timeout=2)


# ----------------------------------------------------------------------------------------------------
# Engines, registry, bounded state
# ----------------------------------------------------------------------------------------------------


async def _no_partial(text: str, is_final: bool) -> None:
    return None


async def test_echo_rates_are_seeded_and_formats_checked() -> None:
    async def kinds(seed: int) -> list[str]:
        engine = EchoEngine(EngineConfig(langs=("en",), echo_fail_rate=0.3, echo_empty_rate=0.3, echo_seed=seed))
        out = []
        for i in range(30):
            try:
                result = await engine.run(job(i), _no_partial)
            except EngineError as exc:
                out.append(f"error {exc.code}")
                continue
            out.append("empty" if result.extra.get("reason") == "ASR_EMPTY" else "result")
        return out

    first, again, other = await kinds(7), await kinds(7), await kinds(8)
    assert first == again and first != other
    assert set(first) == {"result", "empty", "error PROCESSING_ERROR"}

    engine = EchoEngine(EngineConfig(langs=("en",)))
    with pytest.raises(EngineError, match="unsupported audio_format 'wav'"):
        await engine.run(job(0, audio_format="wav"), _no_partial)
    resampled = await engine.run(job(0, audio=pcm16(500, 8000), sample_rate=8000), _no_partial)
    assert resampled.text_asr == "echo: 8000 bytes, 500 ms, pcm16"
    assert len(base64.b64decode(resampled.tts_audio)) == 16000  # 500 ms at 16 kHz
    text_only = p.PipelineConfig(use_asr=True, use_nmt=False, use_tts=False)
    no_tts = await engine.run(job(1, pipeline=text_only), _no_partial)
    assert no_tts.text_asr and no_tts.text_translated == "" and no_tts.tts_audio == ""


def test_engine_registry_has_builtins_and_finds_entry_point_plugins(tmp_path: Path) -> None:
    assert {"echo", "http"} <= set(available_engines())
    assert isinstance(load_engine("echo", EngineConfig(langs=("en",))), EchoEngine)
    with pytest.raises(UnknownEngine, match=r"available: .*echo"):
        load_engine("nope", EngineConfig(langs=("en",)))

    # A third-party engine installed as a distribution with a ``dragoman.engines`` entry point.
    (tmp_path / "loud_engine.py").write_text(
        textwrap.dedent(
            """
            from dragoman.agent.engines import EchoEngine

            class LoudEngine(EchoEngine):
                name = "loud"
            """
        )
    )
    dist = tmp_path / "loud_engine-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: loud-engine\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[dragoman.engines]\nloud = loud_engine:LoudEngine\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert available_engines()["loud"] == "loud_engine:LoudEngine"
        engine = load_engine("loud", EngineConfig(langs=("en",)))
        assert type(engine).__name__ == "LoudEngine" and engine.name == "loud"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("loud_engine", None)


def test_bounded_state() -> None:
    seen: RecentSet[str] = RecentSet(3)
    for key in "abcd":
        seen.add(key)
    assert "a" not in seen and all(k in seen for k in "bcd") and len(seen) == 3
    box: Outbox[int] = Outbox(2)
    for i in range(3):
        box.put(i)
    assert list(box) == [1, 2] and box.dropped == 1
    assert box.pop() == 1
    box.push_front(1)
    assert list(box) == [1, 2]

    backoff = Backoff(0.5, 30)
    delays = [backoff.next() for _ in range(10)]
    assert 0.25 <= delays[0] <= 0.5 and 15 <= delays[-1] <= 30
    backoff.reset()
    assert backoff.next() <= 0.5
    assert with_token("ws://h:1/ws/node", "a&b") == "ws://h:1/ws/node?token=a%26b"
    assert with_token("ws://h:1/ws/node?x=1", "t") == "ws://h:1/ws/node?x=1&token=t"


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def test_flags_win_over_environment_variables() -> None:
    env = {
        "DRAGOMAN_NODE_ENGINE": "echo",
        "DRAGOMAN_NODE_LANGS": "zh, en",
        "DRAGOMAN_NODE_SCHEDULER": "ws://10.0.0.1:5010/ws/node,ws://10.0.0.2:5010/ws/node",
        "DRAGOMAN_NODE_MAX_JOBS": "7",
        "DRAGOMAN_NODE_ID": "node-ENV00001",
        "DRAGOMAN_NODE_ECHO_DELAY_MS": "25",
        "DRAGOMAN_NODE_TTS_VOICE": "en=en_GB-alan,zh=zh_CN-huayan-medium",
    }
    opts = resolve(build_parser().parse_args([]), env)
    assert opts.engine == "echo" and opts.engine_config.langs == ("zh", "en")
    assert opts.agent.scheduler_urls == ("ws://10.0.0.1:5010/ws/node", "ws://10.0.0.2:5010/ws/node")
    assert (opts.agent.max_jobs, opts.agent.node_id, opts.engine_config.echo_delay_ms) == (7, "node-ENV00001", 25)
    assert opts.engine_config.tts_voices == {"en": "en_GB-alan", "zh": "zh_CN-huayan-medium"}

    args = build_parser().parse_args(
        [
            "--langs",
            "ja",
            "--max-jobs",
            "2",
            "--scheduler",
            "ws://127.0.0.1:1/ws/node",
            "--scheduler",
            "ws://127.0.0.1:2/ws/node",
        ]
    )
    opts = resolve(args, env)
    assert opts.engine_config.langs == ("ja",) and opts.agent.max_jobs == 2
    assert opts.agent.scheduler_urls == ("ws://127.0.0.1:1/ws/node", "ws://127.0.0.1:2/ws/node")

    defaults = resolve(build_parser().parse_args(["--engine", "echo", "--langs", "en"]), {})
    assert defaults.agent.scheduler_urls == ("ws://127.0.0.1:5010/ws/node",) and defaults.agent.max_jobs == 4
    for bad in (["--langs", "en"], ["--engine", "echo"], ["--engine", "echo", "--langs", "en", "--max-jobs", "x"]):
        with pytest.raises(ConfigError):
            resolve(build_parser().parse_args(bad), {})
    with pytest.raises(ConfigError, match="not a ws"):
        resolve(build_parser().parse_args(["--engine", "echo", "--langs", "en", "--scheduler", "http://x"]), {})


def _agent_process(*args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAGOMAN_NODE_")}
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.Popen(
        [sys.executable, "-m", "dragoman.agent", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_command_runs_a_node_and_exits_cleanly_on_sigterm() -> None:
    helper = _agent_process("--help")
    out, _ = await asyncio.to_thread(helper.communicate, timeout=20)
    assert helper.returncode == 0 and "TEST engine" in out and "DRAGOMAN_NODE_LANGS" in out
    missing = _agent_process("--engine", "echo")
    _, err = await asyncio.to_thread(missing.communicate, timeout=20)
    assert missing.returncode == 2 and "--langs is required" in err

    async with FakeScheduler() as sched:
        proc = _agent_process("--engine", "echo", "--langs", "zh,en", "--scheduler", sched.url, "--max-jobs", "2")
        try:
            link = await sched.accept(timeout=20)
            reg = await link.register()
            assert reg["max_concurrent_jobs"] == 2
            work = job(0)
            await link.send(work)
            result = await link.expect("job_result", job_id=work.job_id)
            assert result["text_asr"] == "echo: 6400 bytes, 200 ms, pcm16"
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
            assert proc.returncode == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            await asyncio.to_thread(proc.communicate, timeout=10)
