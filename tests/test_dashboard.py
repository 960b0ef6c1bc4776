"""The dashboard in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

While the page is open a node registers and a job runs; the page shows both, opens the job's trace, and
stays correct while the store goes away and comes back. Any console error fails the test.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from browser import CHROMIUM, CHROMIUM_FLAGS
from dragoman.scheduler.store.embedded import EmbeddedStore

from conftest import Running, start_dragoman
from peers import LinguaNode, LinguaWebClient, voiced_chunk

if not os.path.exists(CHROMIUM) and os.environ.get("CI") != "true":
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    server = EmbeddedStore(tmp_path / "store")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def instance(own_store: EmbeddedStore) -> AsyncIterator[Running]:
    running = await start_dragoman(own_store.url, tick_interval_ms=50)
    yield running
    await running.stop()


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        # Playwright gives the browser a new empty profile of its own (the --user-data-dir of the flags).
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 390, "height": 844})  # a phone's screen
            yield await context.new_page()
        finally:
            await browser.close()


async def test_dashboard_shows_a_node_a_job_and_its_trace_and_survives_a_store_restart(
    instance: Running, own_store: EmbeddedStore, page: Any
) -> None:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    expect = playwright_api.expect

    await page.goto(f"{instance.http}/dashboard")
    await expect(page.locator("#status")).to_have_text("live", timeout=20_000)

    async with LinguaNode(instance.node_url) as node, LinguaWebClient(instance.session_url) as client:
        node_id = await node.start()
        nodes = page.locator("#nodes tbody")
        await expect(nodes).to_contain_text(node_id, timeout=20_000)
        await expect(nodes).to_contain_text("zh en → zh en")
        await expect(page.locator("#pairs tbody")).to_contain_text("zh:en")

        await client.init()
        await client.chunk(voiced_chunk())
        await client.chunk(voiced_chunk(), is_final=True)
        job = await node.next_job()
        await expect(page.locator("#t-load")).to_have_text("1 / 4", timeout=20_000)  # the job runs
        await node.result(job, text_translated="hello")
        (outcome,) = await client.outcomes(1)
        assert outcome["type"] == "translation_result"

        for _ in range(100):  # the delivery step is written up to 100 ms after the delivery
            if any(step["e"] == "delivered" for step in await instance.store.job_trace(job["job_id"])):
                break
            await asyncio.sleep(0.05)
        link = page.locator("#jobs a", has_text=job["job_id"])
        await expect(link).to_be_visible(timeout=20_000)
        await link.click()
        trace = page.locator("#trace")
        await expect(trace).to_contain_text("outcome completed", timeout=20_000)
        for step in ("cut", "created", "assigned", "result", "delivered"):
            await expect(trace).to_contain_text(step)
        await expect(trace).to_contain_text(node_id)
        # The same utterance found by the session's trace id.
        await page.select_option("#trace-kind", "traces")
        await page.fill("#trace-id", str(client.trace_id))
        await page.click("#trace-form button")
        await expect(trace).to_contain_text(f"session {client.session_id}: 1 utterance", timeout=20_000)
        await expect(trace).to_contain_text(job["job_id"])

        await own_store.stop()
        await expect(page.locator("#status")).to_have_text("store unavailable", timeout=20_000)
        await own_store.start()  # same data directory: the node's record comes back with it
        await expect(page.locator("#status")).to_have_text("live", timeout=30_000)
        await node.heartbeat()
        await expect(nodes).to_contain_text(node_id, timeout=20_000)
        await expect(page.locator("#t-load")).to_have_text("0 / 4", timeout=20_000)

    assert errors == [], errors
