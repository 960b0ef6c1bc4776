"""An instance paused for longer than its presence (SIGSTOP: a GC pause, a partition) is taken over by another;
when it runs again it notices, says so, and rejoins: its sessions get their outcomes through its inbox again."""

from __future__ import annotations

import asyncio
import signal
import tempfile
import uuid

from test_resume import serve, wait_healthy

from conftest import free_port
from peers import LinguaNode, LinguaWebClient, pcm16


async def test_a_paused_instance_rejoins_and_its_sessions_get_their_outcomes(store_url: str) -> None:
    prefix = f"pause-{uuid.uuid4().hex[:8]}"
    port_a, port_b = free_port(), free_port()
    with tempfile.TemporaryFile() as log_a, tempfile.TemporaryFile() as log_b:
        timers = {"DRAGOMAN_INSTANCE_TTL_MS": "1000", "DRAGOMAN_LOG_LEVEL": "info"}
        a = serve(store_url, prefix, port_a, log_a.fileno(), **timers)
        b = serve(store_url, prefix, port_b, log_b.fileno(), **timers)
        try:
            await wait_healthy(port_a)
            await wait_healthy(port_b)
            # The session on A, its node on B: every outcome reaches A through A's inbox.
            async with (
                LinguaNode(f"ws://127.0.0.1:{port_b}/ws/node") as node,
                LinguaWebClient(f"ws://127.0.0.1:{port_a}/ws/session") as client,
            ):
                await node.start()
                await client.init(two_way=False, src_lang="zh", tgt_lang="en")
                await client.utterance(0, pcm16(100))
                await node.result(await node.next_job(), text_translated="before")
                assert (await client.outcomes(1))[0]["text_translated"] == "before"

                a.send_signal(signal.SIGSTOP)
                await asyncio.sleep(2.5)  # past A's presence: B takes it over and deletes A's inbox
                a.send_signal(signal.SIGCONT)
                await asyncio.sleep(1.0)  # A's next announcement finds it was taken over

                for index in (1, 2):
                    await client.utterance(index, pcm16(100))
                    await node.result(await node.next_job(), text_translated=f"after {index}")
                outcomes = await client.outcomes(2, timeout=10)
                assert [o["text_translated"] for o in outcomes] == ["after 1", "after 2"]
        finally:
            for proc in (a, b):
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
                proc.wait(20)
            log_a.seek(0)
            log_b.seek(0)
            text_a, text_b = log_a.read().decode(), log_b.read().decode()
    assert "is gone; taking over" in text_b, text_b[-2000:]
    assert "was taken over by another instance" in text_a, text_a[-2000:]
    assert "Traceback" not in text_a, text_a[-3000:]
