"""``dragoman serve`` as a real process: embedded store, graceful stop, restart on the same data directory."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import free_port
from peers import LinguaNode, pcm16


@asynccontextmanager
async def serve(data_dir: Path, port: int, **env: str) -> AsyncIterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | env,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job has
    )
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                try:
                    if (await http.get(f"http://127.0.0.1:{port}/health")).text == "OK":
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(process.wait, 20)


async def wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    for _ in range(int(seconds / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_serve_prints_urls_and_stops_gracefully_on_sigterm(data_dir: Path) -> None:
    port = free_port()
    async with serve(data_dir, port) as process:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 20)
        output = process.stdout.read() if process.stdout else ""
    assert code == 0, output
    assert f"ws://127.0.0.1:{port}/ws/session" in output and f"ws://127.0.0.1:{port}/ws/node" in output
    assert (data_dir / "appendonlydir").is_dir()  # the embedded store persisted with its append-only file
    assert not (data_dir / "valkey.sock").exists()  # and was stopped with the scheduler


async def test_second_serve_on_the_same_data_dir_is_refused(data_dir: Path) -> None:
    async with serve(data_dir, free_port()):
        second = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "dragoman",
            "serve",
            "--port",
            str(free_port()),
            "--data-dir",
            str(data_dir),
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(second.communicate(), 20)
        assert second.returncode == 1
        assert b"in use by another dragoman" in err and b"Traceback" not in err


async def test_restart_keeps_unfinished_jobs_and_they_carry_on(data_dir: Path) -> None:
    port = free_port()
    body = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(200)).decode()}
    env = {"DRAGOMAN_PENDING_TIMEOUT_MS": "60000", "DRAGOMAN_INSTANCE_TTL_MS": "2000"}
    async with (
        serve(data_dir, port, **env),
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http,
        LinguaNode(f"ws://127.0.0.1:{port}/ws/node") as node,
    ):
        await node.start()
        created = (await http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "survivor"})).json()
        first = await node.next_job()
        assert first["job_id"] == created["job_id"]
    # Stopped with the job unanswered. A new process on the same data directory still has it.
    async with serve(data_dir, port, **env), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        status = (await http.get(f"/api/v1/jobs/{created['job_id']}")).json()
        assert status["status"] in ("dispatched", "pending")
        replay = await http.post("/api/v1/jobs", json=body, headers={"Idempotency-Key": "survivor"})
        assert replay.json()["job_id"] == created["job_id"]  # the binding survived too
        async with LinguaNode(f"ws://127.0.0.1:{port}/ws/node") as fresh:  # a restarted node: a new id
            await fresh.start()
            retry = await fresh.next_job(timeout=15)
            assert retry["job_id"] == created["job_id"] and retry["attempt_id"] == 2
            await fresh.result(retry, text_translated="survived")
            done = (await http.get(f"/api/v1/jobs/{created['job_id']}", params={"wait": 5})).json()
            assert done["status"] == "completed" and done["result"]["text_translated"] == "survived"


def serve_once(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``dragoman serve`` with these arguments, expected to give up by itself."""
    command = [sys.executable, "-m", "dragoman", "serve", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("redis://127.0.0.1:{free}", "Connection refused"),  # unreachable
        ("redis://127.0.0.1:notaport", "Port could not be cast"),  # malformed
        ("http://127.0.0.1:{free}", "unsupported"),  # not a store's scheme
        ("localhost:6379", "unsupported"),  # no scheme at all
    ],
)
def test_a_store_url_that_cannot_be_used_is_one_line_naming_the_setting(url: str, cause: str, data_dir: Path) -> None:
    url = url.format(free=free_port())
    done = serve_once("--port", str(free_port()), "--redis-url", url, "--data-dir", str(data_dir))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("dragoman: redis_url "), done.stderr
    assert cause in done.stderr and "serving" not in done.stdout


def test_a_password_in_the_store_url_is_not_printed(data_dir: Path) -> None:
    done = serve_once("--port", str(free_port()), "--redis-url", f"redis://me:s3cret@127.0.0.1:{free_port()}")
    assert done.returncode == 1 and "s3cret" not in done.stderr and "me:***@" in done.stderr


def test_a_busy_port_is_one_line_and_no_banner(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_once("--port", str(port), "--data-dir", str(data_dir))
    assert done.returncode == 1
    assert done.stderr == f"dragoman: port {port}: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert "serving" not in done.stdout
    assert not (data_dir / "appendonlydir").exists()  # it failed before starting the embedded store


@pytest.mark.parametrize("port", ["70000", "65536", "0", "-1"])
def test_a_port_out_of_range_is_refused_naming_the_setting(port: str, data_dir: Path) -> None:
    done = serve_once(f"--port={port}", "--data-dir", str(data_dir), timeout=30)
    assert done.returncode == 2
    assert done.stderr == f"dragoman: port: must be 1-65535, got {port}\n"
    env = os.environ | {"DRAGOMAN_PORT": port}
    command = [sys.executable, "-m", "dragoman", "serve", "--data-dir", str(data_dir)]
    by_env = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert by_env.returncode == 2 and "port: must be 1-65535" in by_env.stderr


async def test_ctrl_c_in_a_terminal_stops_the_embedded_store_once_and_in_order(data_dir: Path) -> None:
    port = free_port()
    async with serve(data_dir, port) as process:
        os.killpg(process.pid, signal.SIGINT)  # what a Ctrl-C does: SIGINT to the whole foreground process group
        code = await asyncio.to_thread(process.wait, 20)
        output = process.stdout.read() if process.stdout else ""
    assert code == 0, output
    assert "exited" not in output and "restarting" not in output, output
    # The store got no SIGINT of its own: it ran until dragoman, done with it, stopped it with SIGTERM.
    store_log = (data_dir / "valkey.log").read_text()
    assert "Received SIGTERM" in store_log and "SIGINT" not in store_log, store_log[-2000:]


async def test_the_embedded_store_is_not_restarted_once_the_shutdown_began(data_dir: Path) -> None:
    port = free_port()
    body = {"src_lang": "zh", "tgt_lang": "en", "audio": base64.b64encode(pcm16(200)).decode()}
    async with serve(data_dir, port) as process, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        job_id = (await http.post("/api/v1/jobs", json=body)).json()["job_id"]  # no node: it waits
        # A long-poll in flight holds the graceful shutdown open (for up to 5 s).
        poll = asyncio.create_task(http.get(f"/api/v1/jobs/{job_id}", params={"wait": 30}))
        [store] = psutil.Process(process.pid).children()
        await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)  # the shutdown has begun
        store.kill()
        code = await asyncio.to_thread(process.wait, 20)
        output = process.stdout.read() if process.stdout else ""
        with contextlib.suppress(httpx.HTTPError):
            await poll
    assert code == 0, output
    assert "restarting" not in output, output


async def test_after_a_clean_stop_the_next_start_has_nothing_to_take_over(data_dir: Path) -> None:
    port = free_port()
    async with serve(data_dir, port) as first, LinguaNode(f"ws://127.0.0.1:{port}/ws/node") as node:
        await node.start()  # a node on it until the stop closes its socket
        first.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 20) == 0
    async with serve(data_dir, port, DRAGOMAN_TICK_INTERVAL_MS="50") as second:
        await asyncio.sleep(1.0)  # many ticks of the new instance
        second.send_signal(signal.SIGTERM)
        await asyncio.to_thread(second.wait, 20)
        output = second.stdout.read() if second.stdout else ""
    assert "is gone" not in output and "taking over" not in output, output


async def test_a_store_left_running_by_a_killed_serve_is_stopped_by_the_next(data_dir: Path) -> None:
    port = free_port()
    async with serve(data_dir, port) as first:
        [orphan] = psutil.Process(first.pid).children()
        first.kill()  # SIGKILL: no chance to stop its store
        first.wait(10)
    try:
        assert orphan.is_running()
        async with serve(data_dir, port) as second:
            assert not orphan.is_running()  # stopped before the new store started
            [store] = psutil.Process(second.pid).children()
            assert store.pid != orphan.pid
            second.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 20) == 0
            output = second.stdout.read() if second.stdout else ""
        assert f"stopping valkey-server {orphan.pid}, left running on" in output
    finally:
        with contextlib.suppress(psutil.Error):
            orphan.kill()


async def test_a_closed_terminal_stops_serve_and_its_store(data_dir: Path) -> None:
    async with serve(data_dir, free_port()) as process:
        [store] = psutil.Process(process.pid).children()
        process.send_signal(signal.SIGHUP)  # the store, in its own session, gets no SIGHUP of its own
        code = await asyncio.to_thread(process.wait, 20)
    try:
        assert code == 0
        assert not store.is_running()
    finally:
        with contextlib.suppress(psutil.Error):
            store.kill()
