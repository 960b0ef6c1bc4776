"""Security: each attack of issue 10, tried from outside against a real instance, is refused; lingua's peers
still work with authentication on (README "Security")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from websockets.exceptions import ConnectionClosed

from dragoman import protocol as p
from dragoman.agent.agent import AgentConfig, NodeAgent
from dragoman.agent.engines import EchoEngine, EngineConfig
from dragoman.cli import main as cli_main
from dragoman.client.endpoints import tls_context
from dragoman.client.session import SessionClient, SessionConfig
from dragoman.client.status import fetch_status
from dragoman.config import ConfigError, Settings, load_settings
from dragoman.scheduler import metrics
from dragoman.scheduler.app import create_app
from dragoman.scheduler.auth import Auth, exposure_problem
from dragoman.scheduler.instance import Scheduler
from dragoman.scheduler.store import Store
from dragoman.scheduler.transport import uvicorn_options
from test_serve import serve

from conftest import Running, StartDragoman, free_port, serve_app
from peers import LinguaNode, LinguaWebClient, pcm16

NODE_TOKENS = ("alice:alice-secret", "bob:bob-secret")
CLIENT_KEYS = ("app:app-key", "other:other-key")
ADMIN_KEYS = ("ops:ops-key",)
WEB_ORIGIN = "https://translate.example.org"
AUTH: dict[str, Any] = {
    "node_tokens": NODE_TOKENS,
    "client_keys": CLIENT_KEYS,
    "admin_keys": ADMIN_KEYS,
    "allowed_origins": (WEB_ORIGIN,),
}


def close_reason(peer: LinguaNode | LinguaWebClient) -> str:
    assert peer.ws is not None
    return str(peer.ws.close_reason)


async def refused(peer: LinguaNode | LinguaWebClient) -> tuple[int | None, str]:
    """Open the socket and wait for the server to close it: (code, reason)."""
    await peer.open()
    code = await peer.wait_closed()
    return code, close_reason(peer)


def node(d: Running, token: str | None = None, **kw: Any) -> LinguaNode:
    return LinguaNode(d.node_url + (f"?token={token}" if token else ""), **kw)


def client(d: Running, key: str | None = None) -> LinguaWebClient:
    return LinguaWebClient(d.session_url + (f"?key={key}" if key else ""))


# -- nodes ------------------------------------------------------------------------------------------


async def test_a_node_without_a_valid_token_is_closed_before_any_job(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    assert await refused(node(d)) == (1008, "node token required (?token= or Authorization: Bearer)")
    assert await refused(node(d, "guess")) == (1008, "node token not valid")
    assert not d.scheduler.nodes
    # A session's utterance reaches no refused socket: it waits for a node, and the one that comes gets it.
    async with client(d, "app-key") as user:
        await user.init(two_way=False)
        await user.utterance(0, pcm16(600))
        good = node(d, "alice-secret")
        await good.start()
        job = await good.next_job()
        assert job["session_id"] == user.session_id
        await good.close()


async def test_electron_style_node_with_token_in_its_url_and_a_bearer_node(dragoman: StartDragoman) -> None:
    """lingua's Electron node takes any URL: ``?token=`` in it is all it needs; the agent may send a header."""
    d = await dragoman(**AUTH)
    electron = node(d, "alice-secret")
    await electron.start()
    async with client(d, "app-key") as user:
        await user.init(two_way=False)
        await user.utterance(0, pcm16(600))
        await electron.result(await electron.next_job(), text_translated="hello")
        [outcome] = await user.outcomes(1)
        assert outcome["type"] == "translation_result" and outcome["text_translated"] == "hello"
    bearer = LinguaNode(d.node_url)
    bearer.headers = {"Authorization": "Bearer bob-secret"}
    await bearer.start()
    assert d.scheduler.nodes[str(bearer.node_id)].owner == "bob"
    await electron.close()
    await bearer.close()


async def test_a_node_id_belongs_to_the_token_that_first_registered_it(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    victim = node(d, "alice-secret", node_id="gpu-1")
    await victim.start()
    thief = node(d, "bob-secret", node_id="gpu-1")
    await thief.open()
    await thief.send(thief.register_frame())
    assert await thief.wait_closed() == 1008
    assert close_reason(thief) == "node id gpu-1 is registered with another token"
    # The victim keeps its socket and its jobs.
    assert d.scheduler.nodes["gpu-1"].owner == "alice"
    await victim.heartbeat()
    async with client(d, "app-key") as user:
        await user.init(two_way=False)
        await user.utterance(0, pcm16(600))
        await victim.next_job()
    # Its own token may register it again (a reconnect), even while the record lives on.
    await victim.close()
    again = node(d, "alice-secret", node_id="gpu-1")
    assert await again.start() == "gpu-1"
    await again.close()


# -- clients and Origins ------------------------------------------------------------------------------


async def test_clients_need_a_key_or_an_allowed_origin(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    assert await refused(client(d)) == (1008, "client key required (?key= or Authorization: Bearer)")
    assert await refused(client(d, "nope")) == (1008, "client key not valid")
    # lingua's web client sends no key: a browser page of an allowed origin is admitted by its Origin.
    web = client(d)
    web.headers = {"Origin": WEB_ORIGIN}
    await web.open()
    ack = await web.init()
    assert ack["session_id"].startswith("s-")
    await web.close()
    async with client(d, "app-key") as keyed:
        await keyed.init(two_way=False)


async def test_a_disallowed_origin_is_refused_on_both_sockets(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    page = client(d, "app-key")  # even with a key: the page is not one of ours
    page.headers = {"Origin": "https://evil.example"}
    assert await refused(page) == (1008, "origin not allowed")
    rogue = node(d, "alice-secret")
    rogue.headers = {"Origin": "https://evil.example"}
    assert await refused(rogue) == (1008, "origin not allowed")
    assert metrics.REFUSED.get("session", "origin not allowed") >= 1


async def test_without_auth_everything_works_as_before(dragoman: StartDragoman) -> None:
    d = await dragoman()
    web = LinguaWebClient(d.session_url)
    web.headers = {"Origin": "http://localhost:3000"}
    async with web:
        await web.init()
    async with LinguaNode(d.node_url) as n:
        await n.register()
    async with httpx.AsyncClient(base_url=d.http) as http:
        assert (await http.get("/api/v1/stats")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


# -- sessions -----------------------------------------------------------------------------------------


async def test_a_message_naming_another_session_changes_nothing_and_reveals_nothing(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    gpu = node(d, "alice-secret")
    await gpu.start()
    async with client(d, "app-key") as owner, client(d, "other-key") as attacker:
        await owner.init(two_way=False)
        await attacker.init(two_way=False)
        target = owner.session_id
        assert target is not None
        answers = []
        for session_id in (target, "s-" + "0" * 32):  # a live session of another socket, and none at all
            for frame in (
                {"type": "client_heartbeat", "session_id": session_id, "timestamp": 1},
                {"type": "utterance", "session_id": session_id, "utterance_index": 0, "manual_cut": True}
                | {"audio": "AAAA", "audio_format": "pcm16", "sample_rate": 16000},
                {"type": "audio_chunk", "session_id": session_id, "seq": 0, "is_final": True, "payload": "AAAA"},
                {"type": "session_close", "session_id": session_id, "reason": "user"},
            ):
                await attacker.send(frame)
                error = await attacker.expect("error")
                answers.append((error["code"], error["message"].replace(session_id, "<id>")))
        half = len(answers) // 2
        assert answers[:half] == answers[half:]  # the same answers: nothing tells the live one from none
        assert answers[0] == ("INVALID_SESSION", "Session does not exist")
        await gpu.expect_nothing(0.3, types={"job_assign"})
        assert (await owner.heartbeat())["session_id"] == target  # the session is untouched
        await owner.utterance(0, pcm16(600))
        assert (await gpu.next_job())["session_id"] == target
    await gpu.close()


async def test_a_resume_needs_the_sessions_resume_token(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    gpu = node(d, "alice-secret")
    await gpu.start()
    owner = client(d, "app-key")
    await owner.open()
    ack = await owner.init(two_way=False)
    session_id, token = ack["session_id"], ack["resume_token"]
    assert len(token) >= 43  # 256 random bits
    await owner.utterance(0, pcm16(600))
    job = await gpu.next_job()
    for tried in ({}, {"resume_token": "wrong"}, {"resume_token": token + "x"}):
        async with client(d, "other-key") as thief:
            stolen = await thief.init(two_way=False, resume_session_id=session_id, **tried)
            assert stolen["session_id"] != session_id and stolen["resumed"] is False
    await gpu.result(job, text_translated="for the owner only")
    [outcome] = await owner.outcomes(1)  # the owner still gets its outcome
    assert outcome["text_translated"] == "for the owner only"
    await owner.close()
    async with client(d, "app-key") as back:
        resumed = await back.init(two_way=False, resume_session_id=session_id, resume_token=token)
        assert (resumed["session_id"], resumed["resumed"], resumed["resume_token"]) == (session_id, True, token)
    await gpu.close()


# -- HTTP jobs and operator endpoints -----------------------------------------------------------------


def _job_body() -> dict[str, Any]:
    import base64

    return {"audio": base64.b64encode(pcm16(600)).decode(), "src_lang": "zh", "tgt_lang": "en"}


async def test_http_jobs_belong_to_their_client_key(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    app, other = {"Authorization": "Bearer app-key"}, {"Authorization": "Bearer other-key"}
    async with httpx.AsyncClient(base_url=d.http) as http:
        assert (await http.post("/api/v1/jobs", json=_job_body())).status_code == 401
        wrong = await http.post("/api/v1/jobs", json=_job_body(), headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.json()["message"] == "client key not valid"
        created = await http.post("/api/v1/jobs", json=_job_body(), headers=app | {"Idempotency-Key": "k1"})
        assert created.status_code == 202
        job_id = created.json()["job_id"]
        assert (await http.get(f"/api/v1/jobs/{job_id}", headers=app)).status_code == 200
        assert (await http.get(f"/api/v1/jobs/{job_id}", headers=other)).status_code == 404
        # The same Idempotency-Key under another key is another job; under the same key, the same one.
        theirs = await http.post("/api/v1/jobs", json=_job_body(), headers=other | {"Idempotency-Key": "k1"})
        assert theirs.json()["job_id"] != job_id and "Idempotent-Replayed" not in theirs.headers
        replay = await http.post("/api/v1/jobs", json=_job_body(), headers=app | {"Idempotency-Key": "k1"})
        assert replay.json()["job_id"] == job_id and replay.headers["Idempotent-Replayed"] == "true"
        assert (await http.get("/openapi.json")).status_code == 200  # the description stays public


async def test_without_client_keys_idempotency_is_global_as_before(dragoman: StartDragoman) -> None:
    d = await dragoman()
    async with httpx.AsyncClient(base_url=d.http) as http:
        first = await http.post("/api/v1/jobs", json=_job_body(), headers={"Idempotency-Key": "same"})
        again = await http.post("/api/v1/jobs", json=_job_body(), headers={"Idempotency-Key": "same"})
        assert first.json()["job_id"] == again.json()["job_id"]
        assert (await http.get(f"/api/v1/jobs/{first.json()['job_id']}")).status_code == 200


async def test_operator_endpoints_need_an_admin_key_when_auth_is_on(dragoman: StartDragoman) -> None:
    d = await dragoman(**AUTH)
    async with httpx.AsyncClient(base_url=d.http) as http:
        for path in ("/api/v1/cluster", "/api/v1/stats", "/metrics"):
            assert (await http.get(path)).status_code == 401
            assert (await http.get(path, headers={"Authorization": "Bearer app-key"})).status_code == 401
            assert (await http.get(path, headers={"Authorization": "Bearer ops-key"})).status_code == 200
        assert (await http.get("/health")).status_code == 200
        # A browser cannot set headers: the dashboard takes the admin key in its URL, and passes it on.
        assert (await http.get("/dashboard")).status_code == 401
        assert (await http.get("/dashboard", params={"key": "ops-key"})).status_code == 200
        assert (await http.get("/api/v1/jobs/job-x/trace", params={"key": "app-key"})).status_code == 401
        assert (await http.get("/static/dashboard.js")).status_code == 200  # the page's files hold no data
    opened = await dragoman(**AUTH, open_operator_endpoints=True)
    async with httpx.AsyncClient(base_url=opened.http) as http:
        assert (await http.get("/api/v1/cluster")).status_code == 200


# -- limits ---------------------------------------------------------------------------------------------


async def test_messages_per_second_are_limited_per_socket(dragoman: StartDragoman) -> None:
    d = await dragoman(max_messages_per_s=5)
    before = metrics.LIMITED.get("messages_per_s")
    async with LinguaWebClient(d.session_url) as flood, LinguaWebClient(d.session_url) as calm:
        await flood.init(two_way=False)
        await calm.init(two_way=False)
        for _ in range(30):
            await flood.send({"type": "client_heartbeat", "session_id": flood.session_id, "timestamp": 1})
        limited = 0
        for _ in range(30):
            frame = await flood.recv()
            if frame["type"] == "error":
                assert frame["code"] == "RATE_LIMITED" and "messages per second" in frame["message"]
                limited += 1
        assert 10 <= limited < 30  # the burst passed, the rest were dropped
        assert (await calm.heartbeat())["session_id"] == calm.session_id  # other sockets are not affected
        await asyncio.sleep(1.0)
        assert (await flood.heartbeat())["session_id"] == flood.session_id  # and the socket recovers
    assert metrics.LIMITED.get("messages_per_s") - before == limited


async def test_audio_faster_than_the_allowed_factor_of_real_time_is_refused(dragoman: StartDragoman) -> None:
    d = await dragoman(max_audio_speed=1, max_message_bytes=400_000)  # a burst of 300,000 bytes of audio
    gpu = LinguaNode(d.node_url)
    await gpu.start()
    async with LinguaWebClient(d.session_url) as fast:
        await fast.init(two_way=False)
        await fast.utterance(0, pcm16(9000))  # 9 s at once: within the burst of one frame of the largest size
        await gpu.next_job()
        await fast.utterance(1, pcm16(9000))  # another 9 s at once: beyond real time
        error = await fast.expect("error")
        assert error["code"] == "RATE_LIMITED" and "1x real time" in error["message"]
        await gpu.expect_nothing(0.3, types={"job_assign"})
    await gpu.close()


async def test_open_connections_per_peer_address_are_limited(dragoman: StartDragoman) -> None:
    d = await dragoman(max_connections_per_peer=3)
    held = [LinguaWebClient(d.session_url), LinguaWebClient(d.session_url), LinguaNode(d.node_url)]
    for peer in held:
        await peer.open()
    assert await refused(LinguaWebClient(d.session_url)) == (1013, "over 3 open connections from your address")
    await held[0].close()
    await asyncio.sleep(0.2)
    async with LinguaWebClient(d.session_url) as next_one:  # a closed socket frees its place
        await next_one.init()
    for peer in held[1:]:
        await peer.close()


async def test_sessions_per_instance_are_limited(dragoman: StartDragoman) -> None:
    d = await dragoman(max_sessions=2)
    async with LinguaWebClient(d.session_url) as one, LinguaWebClient(d.session_url) as two:
        await one.init()
        await two.init()
        third = LinguaWebClient(d.session_url)
        await third.open()
        await third.send({"type": "session_init", "client_version": "x", "platform": "web"} | _langs())
        assert await third.wait_closed() == 1013
        assert close_reason(third) == "this instance holds its maximum of 2 sessions"
        assert (await one.heartbeat())["session_id"] == one.session_id


def _langs() -> dict[str, str]:
    return {"src_lang": "zh", "tgt_lang": "en"}


# -- audit ------------------------------------------------------------------------------------------------


async def test_registrations_and_refusals_are_audited_and_refusals_rate_limited(
    dragoman: StartDragoman, caplog: pytest.LogCaptureFixture
) -> None:
    d = await dragoman(**AUTH)
    caplog.set_level(logging.INFO)
    for _ in range(5):
        await refused(node(d, "guess"))
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == ["node socket from 127.0.0.1 refused: node token not valid"]  # a flood stays one line
    good = node(d, "bob-secret", node_id="gpu-9")
    await good.start()
    assert any(r.getMessage().startswith("node gpu-9 registered from 127.0.0.1 (token bob,") for r in caplog.records)
    await good.close()


# -- configuration and secure-by-default ---------------------------------------------------------------------


def test_secrets_from_lists_files_and_the_environment(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# the GPU pool\nrack1:first-secret\n\nrack2 : second-secret\n")
    settings = load_settings(
        environ={"DRAGOMAN_NODE_TOKENS_FILE": str(tokens), "DRAGOMAN_CLIENT_KEYS": "web:k1, bare-key"}
    )
    assert settings.client_keys == ("web:k1", "bare-key")
    auth = Auth(settings)
    assert auth.nodes.name_of("first-secret") == "rack1" and auth.nodes.name_of("second-secret") == "rack2"
    assert auth.nodes.name_of("rack1:first-secret") is None and auth.nodes.name_of("") is None
    assert auth.clients.name_of("k1") == "web" and str(auth.clients.name_of("bare-key")).startswith("key-")
    tokens.write_text("rack3:third\n")
    auth.reload()  # what SIGHUP does
    assert auth.nodes.name_of("first-secret") is None and auth.nodes.name_of("third") == "rack3"
    tokens.write_text("rack4:\n")
    with pytest.raises(ConfigError, match="empty secret"):
        auth.reload()
    assert auth.nodes.name_of("third") == "rack3"  # a bad file changes nothing
    with pytest.raises(ConfigError, match="expected a list of strings"):
        load_settings({"node_tokens": 5})


def test_a_non_loopback_host_needs_authentication() -> None:
    exposed = Settings(host="0.0.0.0")
    problem = exposure_problem(exposed, Auth(exposed))
    assert problem is not None and "node_tokens" in problem and "client_keys" in problem and "--insecure" in problem
    only_nodes = exposed.replace(node_tokens=("n:t",))
    assert "node_tokens" not in str(exposure_problem(only_nodes, Auth(only_nodes)))
    secured = only_nodes.replace(allowed_origins=(WEB_ORIGIN,))
    assert exposure_problem(secured, Auth(secured)) is None
    assert exposure_problem(exposed.replace(insecure=True), Auth(exposed)) is None
    for loopback in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_problem(Settings(host=loopback), Auth(Settings())) is None


# -- TLS ------------------------------------------------------------------------------------------------------


@pytest.fixture
async def tls_dragoman(store_url: str, tmp_path: Path) -> AsyncIterator[tuple[Running, Path]]:
    """An instance serving wss:// and https:// with a certificate of a CA of its own (trustme); yields it and
    the CA file that clients must trust."""
    ca = trustme.CA()
    server_pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    settings = Settings(key_prefix=f"t-{uuid.uuid4().hex[:10]}", log_level="warning", **AUTH)
    store = Store(settings, store_url)
    await store.open()
    scheduler = Scheduler(settings, store)
    await scheduler.start()
    tls = {"ssl_certfile": str(server_pem), "ssl_keyfile": str(server_pem)}
    port, server, task = await serve_app(create_app(scheduler), **uvicorn_options(settings), **tls)
    running = Running(port, scheduler, store, server, task)
    yield running, ca_pem
    await running.stop()


async def test_tls_round_trip_with_the_node_agent_and_the_client_tools(tls_dragoman: tuple[Running, Path]) -> None:
    d, ca_file = tls_dragoman
    base = f"127.0.0.1:{d.port}"
    untrusting = NodeAgent(
        AgentConfig(scheduler_urls=(f"wss://{base}/ws/node",), token="alice-secret", backoff_max_s=0.2),
        EchoEngine(EngineConfig(langs=("zh", "en"))),
    )
    with pytest.raises(ssl.SSLCertVerificationError):  # the certificate is checked: without the CA, no trust
        await untrusting._connection(f"wss://{base}/ws/node")
    agent = NodeAgent(
        AgentConfig(scheduler_urls=(f"wss://{base}/ws/node",), token="alice-secret", ca_file=str(ca_file)),
        EchoEngine(EngineConfig(langs=("zh", "en"))),
    )
    running = asyncio.create_task(agent.run())
    try:
        await asyncio.wait_for(agent.registered.wait(), 10)
        session = SessionClient(
            f"wss://{base}/ws/session", SessionConfig.one_way("zh", "en"), key="app-key", ca_file=str(ca_file)
        )
        await session.connect()
        await session.send_utterance(0, pcm16(600))
        result = await session.recv(timeout=10)
        while isinstance(result, p.ClientAsrPartial):
            result = await session.recv(timeout=10)
        assert isinstance(result, p.TranslationResult) and result.text_asr.startswith("echo:")
        await session.close(timeout=5)
        cluster, _ = await fetch_status(f"https://{base}", key="ops-key", ca_file=str(ca_file))
        assert [n.node_id for n in cluster.nodes] == [agent.node_id]
    finally:
        agent.stop()
        await asyncio.wait_for(running, 5)


# -- dragoman serve as a process --------------------------------------------------------------------------------


def test_serve_on_a_non_loopback_host_without_auth_refuses_to_start(data_dir: Path) -> None:
    command = [sys.executable, "-m", "dragoman", "serve", "--host", "0.0.0.0", "--port", str(free_port())]
    done = subprocess.run([*command, "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("dragoman: host '0.0.0.0' is not loopback and node_tokens")
    assert "client_keys" in done.stderr and "--insecure" in done.stderr and "serving" not in done.stdout
    assert not data_dir.exists()  # refused before anything started


async def test_sighup_rereads_the_token_file_and_secrets_are_never_logged(
    store_url: str, data_dir: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "node-tokens"
    tokens.write_text("rack1:first-secret\n")
    port = free_port()
    # With the access log on, uvicorn writes each WebSocket's path with its query: the secrets must be masked.
    env = {"DRAGOMAN_REDIS_URL": store_url, "DRAGOMAN_NODE_TOKENS_FILE": str(tokens), "DRAGOMAN_ACCESS_LOG": "true"}
    async with serve(data_dir, port, DRAGOMAN_KEY_PREFIX=f"t-{uuid.uuid4().hex[:10]}", **env) as process:
        url = f"ws://127.0.0.1:{port}/ws/node?token="
        async with LinguaNode(url + "first-secret") as first:
            await first.register()
        tokens.write_text("rack2:second-secret\n")
        process.send_signal(signal.SIGHUP)
        for _ in range(100):  # the signal is handled between two events of the server's loop
            old = LinguaNode(url + "first-secret")
            await old.open()
            try:
                await old.send(old.register_frame())
                ack = await old.recv()
            except (AssertionError, ConnectionClosed):  # closed: the token is no longer valid
                break
            finally:
                await old.close()
            assert ack["type"] == "node_register_ack"
            await asyncio.sleep(0.05)
        assert await refused(LinguaNode(url + "first-secret")) == (1008, "node token not valid")
        async with LinguaNode(url + "second-secret") as second:
            await second.register()
        assert process.poll() is None  # SIGHUP with a token file reloads; it does not stop the server
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 20) == 0
        output = process.stdout.read() if process.stdout else ""
    assert "SIGHUP: secrets re-read (1 node tokens" in output
    assert "node socket from 127.0.0.1 refused: node token not valid" in output
    assert "/ws/node?token=***" in output and "first-secret" not in output and "second-secret" not in output


async def test_the_status_command_with_and_without_an_admin_key(
    dragoman: StartDragoman, capsys: pytest.CaptureFixture[str]
) -> None:
    d = await dragoman(**AUTH)
    assert await asyncio.to_thread(cli_main, ["status", "--scheduler", d.http, "--json"]) == 3
    err = capsys.readouterr().err
    assert "HTTP 401: unauthorized: admin key required" in err and err.count("\n") == 1
    assert await asyncio.to_thread(cli_main, ["status", "--scheduler", d.http, "--json", "--key", "ops-key"]) == 0
    assert '"nodes"' in capsys.readouterr().out
    missing_ca = ["status", "--scheduler", d.http, "--ca-file", str(Path("/nonexistent/ca.pem"))]
    assert await asyncio.to_thread(cli_main, missing_ca) == 2
    assert "CA file /nonexistent/ca.pem" in capsys.readouterr().err


def _serve_once(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "dragoman", "serve", "--port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_tls_files_that_cannot_be_used_are_one_line(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    done = _serve_once("--ssl-certfile", missing, "--ssl-keyfile", missing, "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1 and done.stderr == f"dragoman: ssl_certfile {missing}: No such file or directory\n"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    done = _serve_once("--ssl-certfile", str(garbage), "--ssl-keyfile", str(garbage), "--data-dir", str(tmp_path / "d"))
    assert done.returncode == 1 and done.stderr.startswith("dragoman: ssl_certfile/ssl_keyfile: cannot use them")
    assert done.stderr.count("\n") == 1
    done = _serve_once("--ssl-certfile", str(garbage))
    assert done.returncode == 2 and "ssl_certfile and ssl_keyfile: give both" in done.stderr


async def test_serve_with_tls_serves_https_and_wss(store_url: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_pem, ca_pem = tmp_path / "server.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    port = free_port()
    tls = ["--ssl-certfile", str(server_pem), "--ssl-keyfile", str(server_pem)]
    command = [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--redis-url", store_url, *tls]
    env = os.environ | {"DRAGOMAN_KEY_PREFIX": f"t-{uuid.uuid4().hex[:10]}", "DRAGOMAN_NODE_TOKENS": "n:t"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        async with httpx.AsyncClient(verify=tls_context(str(ca_pem))) as https:
            for _ in range(200):
                with contextlib.suppress(httpx.TransportError):
                    if (await https.get(f"https://127.0.0.1:{port}/health")).text == "OK":
                        break
                assert process.poll() is None
                await asyncio.sleep(0.05)
        node = LinguaNode(f"wss://127.0.0.1:{port}/ws/node?token=t")
        node.ssl = tls_context(str(ca_pem))
        await node.start()
        await node.close()
    finally:
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 20)
    output = process.stdout.read() if process.stdout else ""
    assert f"clients  wss://127.0.0.1:{port}/ws/session" in output and f"health   https://127.0.0.1:{port}" in output


def test_workers_on_a_non_loopback_host_without_auth_refuse_once(data_dir: Path) -> None:
    done = _serve_once("--workers", "2", "--host", "0.0.0.0", "--data-dir", str(data_dir))
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr  # the parent, before any child
    assert done.stderr.startswith("dragoman: host '0.0.0.0' is not loopback") and not data_dir.exists()


async def test_workers_pass_sighup_on_so_that_each_rereads_the_token_file(store_url: str, tmp_path: Path) -> None:
    tokens = tmp_path / "node-tokens"
    tokens.write_text("rack1:first-secret\n")
    port = free_port()
    command = [sys.executable, "-m", "dragoman", "serve", "--workers", "2", "--port", str(port)]
    env = os.environ | {
        "DRAGOMAN_REDIS_URL": store_url,
        "DRAGOMAN_KEY_PREFIX": f"t-{uuid.uuid4().hex[:10]}",
        "DRAGOMAN_NODE_TOKENS_FILE": str(tokens),
        "DRAGOMAN_ADMIN_KEYS": "ops:ops-key",
        "DRAGOMAN_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    url = f"ws://127.0.0.1:{port}/ws/node?token="
    try:
        async with httpx.AsyncClient(headers={"Authorization": "Bearer ops-key"}) as http:
            for _ in range(300):  # until both workers announced themselves
                with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                    cluster = (await http.get(f"http://127.0.0.1:{port}/api/v1/cluster")).json()
                    if sum(i["is_online"] for i in cluster["instances"]) == 2:
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the two workers did not come up")
        tokens.write_text("rack2:second-secret\n")
        process.send_signal(signal.SIGHUP)
        await asyncio.sleep(1.0)
        for _ in range(8):  # the kernel spreads the sockets over both workers: every one refuses the old token
            assert await refused(LinguaNode(url + "first-secret")) == (1008, "node token not valid")
            async with LinguaNode(url + "second-secret") as node:
                await node.register()
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
    assert code == 0
