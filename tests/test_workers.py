"""``dragoman serve --workers 2``: two instances sharing one port and one embedded store, each a whole instance;
a SIGTERM stops both and the store."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from conftest import free_port
from peers import LinguaNode, LinguaWebClient, pcm16


async def test_two_workers_share_the_port_and_the_store(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"DRAGOMAN_TICK_INTERVAL_MS": "100", "DRAGOMAN_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dragoman", "serve", "--workers", "2", "--port", str(port), "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base) as http:
            instances: list[dict[str, object]] = []
            for _ in range(200):
                try:
                    instances = (await http.get("/api/v1/cluster")).json()["instances"]
                except (httpx.TransportError, ValueError, KeyError):
                    instances = []
                if len([i for i in instances if i["is_online"]]) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len({i["pid"] for i in instances}) == 2, instances  # two processes, two instances
        # Connections spread over both; a session on one and the node on the other still work together.
        async with LinguaNode(f"ws://127.0.0.1:{port}/ws/node") as node:
            await node.start()
            clients = [LinguaWebClient(f"ws://127.0.0.1:{port}/ws/session") for _ in range(8)]
            for client in clients:
                await client.open()
                await client.init(two_way=False)
                await client.utterance(0, pcm16(100))
            for _ in clients:
                await node.result(await node.next_job(), text_translated="ok")
            for client in clients:
                [outcome] = await client.outcomes(1)
                assert outcome["text_translated"] == "ok"
                await client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not (tmp_path / "valkey.sock").exists(), "the embedded store stopped with the workers"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _, err = proc.communicate()
        assert b"Traceback" not in err, err.decode()[-3000:]


def test_workers_must_be_at_least_one() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "dragoman", "serve", "--workers", "0"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "workers: must be at least 1" in run.stderr
