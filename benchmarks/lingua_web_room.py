"""Two unmodified lingua web clients in room mode, on two Dragoman instances, hold a translated conversation.

Starts an embedded valkey-server, two ``dragoman serve`` processes sharing it (instance A on ``--port-a``,
instance B on ``--port-b``), one ``dragoman node --engine echo`` (connected to A only, so B's jobs cross the
store), a static file server for each built web client, and two headless Chromium processes (Debian's
/usr/bin/chromium, driven by Playwright), each with a fake microphone that says an espeak-ng sentence in a loop
(with pauses). Page A (on instance A) creates a room, preferring ``--lang-a``; page B (on instance B) joins it by
the code that page A shows, preferring ``--lang-b``; both start their sessions and speak. It then checks, from the
pages' WebSocket frames and DOM, that each page received the other's speech translated into its own language
(the echo engine answers ``[<tgt_lang>] echo: …``), that the speaker got none of its own room results, that
``room_members`` and the WebRTC offer/answer/ICE frames passed between the pages through the two instances with
``to`` rewritten, and that B is told when A leaves. It prints each check and exits 1 if one failed.

The web client is not part of this repository (nor is any way of building it): build lingua's
``webapp/web-client`` yourself, once per instance, pointing it at that instance (``VITE_SCHEDULER_URL`` is read
at build time; see docs/BENCHMARKS.md), and pass the two ``dist`` directories:

    python benchmarks/lingua_web_room.py --web-a /path/dist-a --web-b /path/dist-b [--port-a 18711 --port-b 18712]

The room UI of the web client has no language choice (it calls ``createRoom()``/``joinRoom(code, name)`` without
``preferred_lang``) and its room page's Start button is never enabled, so the script clicks what the UI offers
(room mode, the join form) and calls the client's own ``window.app`` methods (``connect``, ``createRoom``,
``joinRoom`` with a language, ``startSession``) for the rest; the client's code is not changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, WebSocket, async_playwright

from dragoman.scheduler.store.embedded import EmbeddedStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser import CHROMIUM, CHROMIUM_FLAGS

# A fake microphone from a WAV file, media permission granted, audio allowed to start without a gesture.
MEDIA_FLAGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
SPEECH = {
    "en": ("en", "Good morning. Shall we start the meeting now?"),
    "zh": ("cmn", "早上好。我们现在开始开会吧。"),
    "ja": ("ja", "おはようございます。会議を始めましょう。"),
}
PAUSE_S = 4.0  # after each sentence: longer than the client's and Dragoman's end-of-utterance silence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def speech_wav(lang: str, path: Path) -> None:
    """An espeak-ng sentence in ``lang`` followed by ``PAUSE_S`` of silence (Chromium plays it in a loop)."""
    voice, text = SPEECH[lang]
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
    with wave.open(str(raw)) as src:
        params, frames = src.getparams(), src.readframes(src.getnframes())
    silence = b"\0" * int(PAUSE_S * params.framerate) * params.sampwidth * params.nchannels
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        out.writeframes(silence[: len(silence) // 4] + frames + silence)
    raw.unlink()


def scheduler_url_of(dist: Path) -> str:
    """The ``/ws/session`` URL a built web client connects to (baked in by ``VITE_SCHEDULER_URL``)."""
    for js in sorted((dist / "assets").glob("*.js")):
        if found := re.search(rb"wss?://[^\"'`\s]+/ws/session", js.read_bytes()):
            return found.group().decode()
    raise SystemExit(f"{dist}: no built web client here (no assets/*.js naming a /ws/session URL)")


@contextlib.contextmanager
def static_site(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on a loopback port (the web client's pages and assets)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Tap:
    """What one page sent and received on its WebSockets, and what its console said."""

    name: str
    sent: list[dict[str, Any]] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def attach(self, page: Page) -> None:
        page.on("websocket", self._socket)
        page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.console_errors.append(f"page error: {e}"))

    def _socket(self, ws: WebSocket) -> None:
        ws.on("framesent", lambda payload: self._keep(self.sent, payload))
        ws.on("framereceived", lambda payload: self._keep(self.received, payload))

    @staticmethod
    def _keep(into: list[dict[str, Any]], payload: str | bytes) -> None:
        with contextlib.suppress(ValueError, TypeError):
            message = json.loads(payload)
            if isinstance(message, dict):
                into.append(message)

    def got(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]

    def put(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m.get("type") == kind]

    def session_id(self) -> str:
        acks = self.got("session_init_ack")
        return str(acks[-1]["session_id"]) if acks else ""


class Checks:
    def __init__(self) -> None:
        self.failed = 0

    def check(self, ok: bool, what: str) -> None:
        self.failed += not ok
        print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)


async def wait_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(step_s)
    return predicate()


def start_process(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


async def wait_healthy(port: int, timeout_s: float = 30.0) -> None:
    async with httpx.AsyncClient() as http:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise SystemExit(f"dragoman on port {port} did not become healthy within {timeout_s} s")


async def open_room_mode(page: Page, site: str) -> None:
    await page.goto(site)
    await page.click("#room-mode-btn")  # the main menu's "房间模式" (room mode)
    await page.wait_for_selector("#create-room-btn")


async def start_speaking(page: Page) -> str:
    """Start the session: the room page's Start button if the UI enabled it, else the client's startSession()."""
    button = page.locator("#start-btn")
    if await button.count() and await button.is_enabled():
        await button.click()
        return "the room page's Start button"
    await page.evaluate("window.app.startSession()")
    return "window.app.startSession() (the room page's Start button is disabled)"


def translated(tap: Tap) -> list[str]:
    return [str(m.get("text_translated") or "") for m in tap.got("translation_result")]


async def conversation(args: argparse.Namespace, work: Path, checks: Checks) -> None:
    url_a, url_b = scheduler_url_of(args.web_a), scheduler_url_of(args.web_b)
    for url, port, label in ((url_a, args.port_a, "--web-a"), (url_b, args.port_b, "--web-b")):
        if url != f"ws://127.0.0.1:{port}/ws/session":
            raise SystemExit(f"{label} was built for {url}, not ws://127.0.0.1:{port}/ws/session")
    wav_a, wav_b = work / "a.wav", work / "b.wav"
    speech_wav(args.lang_a, wav_a)
    speech_wav(args.lang_b, wav_b)

    store = EmbeddedStore(str(work / "valkey"))
    store_url = await store.start()
    dragoman = [sys.executable, "-m", "dragoman"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, port in (("a", args.port_a), ("b", args.port_b)):
            serve = [*dragoman, "serve", "--port", str(port), "--redis-url", store_url, "--log-level", "info"]
            procs.append(start_process(serve, work / f"instance-{name}.log"))
        for port in (args.port_a, args.port_b):
            await wait_healthy(port)
        langs = ",".join(sorted({args.lang_a, args.lang_b}))
        node = [*dragoman, "node", "--engine", "echo", "--langs", langs]
        procs.append(start_process([*node, "--scheduler", f"ws://127.0.0.1:{args.port_a}/ws/node"], work / "node.log"))
        print(f"store {store_url}; instance A :{args.port_a}, instance B :{args.port_b}; echo node ({langs}) on A")
        with static_site(args.web_a) as site_a, static_site(args.web_b) as site_b:
            await pages(args, (site_a, site_b), work, checks)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await store.stop()
        print(f"logs: {work}")


async def pages(args: argparse.Namespace, sites: tuple[str, str], work: Path, checks: Checks) -> None:
    tap_a, tap_b = Tap("A"), Tap("B")
    async with async_playwright() as pw:
        browsers = [
            await pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_FLAGS, *MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
            )
            for wav in (work / "a.wav", work / "b.wav")
        ]
        try:
            page_a, page_b = [await b.new_page() for b in browsers]
            tap_a.attach(page_a)
            tap_b.attach(page_b)
            await open_room_mode(page_a, sites[0])
            await open_room_mode(page_b, sites[1])
            await enter_room(args, page_a, tap_a, page_b, tap_b, checks)
            for page in (page_a, page_b):
                print(f"  page started speaking with {await start_speaking(page)}")
            await converse(args, [(page_a, tap_a, args.lang_a), (page_b, tap_b, args.lang_b)], checks)
            exchanged = relay(tap_a, tap_b, checks) + relay(tap_b, tap_a, checks)
            checks.check(exchanged >= 2, f"WebRTC offers and answers relayed between the instances: {exchanged}")
            for page, tap in ((page_a, tap_a), (page_b, tap_b)):
                errors = [m for m in tap.received if m.get("type") in ("error", "room_error")]
                checks.check(not errors, f"page {tap.name} got no error or room_error: {errors[:2]}")
                await page.screenshot(path=work / f"page-{tap.name}.png", full_page=True)
            # A leaves with the room page's button: B is told.
            before = len(tap_b.got("room_members"))
            await page_a.click("#leave-room-btn")
            left = await wait_until(lambda: any(len(m["members"]) == 1 for m in tap_b.got("room_members")[before:]), 10)
            checks.check(left, "page B got room_members with one member after A left (the room page's leave button)")
            for tap in (tap_a, tap_b):
                print(f"  page {tap.name}: {len(tap.console_errors)} console errors {tap.console_errors[:3]}")
        finally:
            for browser in browsers:
                await browser.close()


async def enter_room(
    args: argparse.Namespace, page_a: Page, tap_a: Tap, page_b: Page, tap_b: Tap, checks: Checks
) -> None:
    """A creates a room preferring lang_a; B types its code into the join form and joins preferring lang_b."""
    await page_a.evaluate("([s, t]) => window.app.connect(s, t)", [args.lang_a, args.lang_b])
    await page_a.evaluate("([n, l]) => window.app.createRoom(n, l)", ["Alice", args.lang_a])
    await page_a.wait_for_selector("#room-code-display", timeout=10_000)
    code = (await page_a.inner_text("#room-code-display")).strip()
    checks.check(bool(re.fullmatch(r"\d{6}", code)), f"page A (instance A) created room {code!r} and shows it")
    await page_b.evaluate("([s, t]) => window.app.connect(s, t)", [args.lang_b, args.lang_a])
    await page_b.fill("#room-code-input", code)
    await page_b.fill("#display-name-input", "Bob")
    await page_b.evaluate(
        "([l]) => window.app.joinRoom(document.querySelector('#room-code-input').value,"
        " document.querySelector('#display-name-input').value, l)",
        [args.lang_b],
    )
    both = await wait_until(lambda: any(len(m["members"]) == 2 for m in tap_a.got("room_members")), 10)
    checks.check(both, "page A got room_members with both members (B joined on instance B)")
    members_b = [m for m in tap_b.got("room_members") if len(m["members"]) == 2]
    checks.check(bool(members_b), "page B got room_members with both members")
    if members_b:
        langs = sorted(str(p.get("preferred_lang")) for p in members_b[-1]["members"])
        checks.check(langs == sorted([args.lang_a, args.lang_b]), f"members' preferred languages: {langs}")
    await asyncio.sleep(1)  # the client looks for a room to show every 500 ms
    shown = await page_b.locator("#room-code-display").all_inner_texts()
    checks.check(shown == [code], f"page B shows the room page with its code: {shown}")


async def converse(args: argparse.Namespace, members: list[tuple[Page, Tap, str]], checks: Checks) -> None:
    """Each page gets ``args.results`` results of the other's speech, in its own language, in order, once."""

    def heard(tap: Tap, lang: str) -> list[str]:
        return [t for t in translated(tap) if t.startswith(f"[{lang}] echo:")]

    await wait_until(lambda: all(len(heard(tap, lang)) >= args.results for _, tap, lang in members), args.timeout_s)
    for page, tap, lang in members:
        good, texts = heard(tap, lang), translated(tap)
        print(f"  page {tap.name} sent {len(tap.put('audio_chunk'))} audio_chunk frames")
        checks.check(len(good) >= args.results, f"page {tap.name} got {len(good)} of the other's results in {lang}")
        checks.check(len(good) == len(texts), f"page {tap.name} got nothing else (its own results, other languages)")
        order = [int(m.get("utterance_index", -1)) for m in tap.got("translation_result")]
        checks.check(order == sorted(set(order)), f"page {tap.name}'s results in order, once each: {order}")
        panel = page.locator("#translation-translated")
        shown = (await panel.inner_text()).strip() if await panel.count() else "(no translation panel)"
        checks.check(f"[{lang}] echo:" in shown, f"page {tap.name} shows them: {shown[:72]!r}")


def relay(sender: Tap, receiver: Tap, checks: Checks) -> int:
    """Every WebRTC frame ``sender`` sent to ``receiver`` arrived, with ``to`` rewritten to the sender's id;
    returns how many offers and answers went this way (which side offers is the client's choice)."""
    me, them = sender.session_id(), receiver.session_id()
    exchanged = 0
    for kind in ("webrtc_offer", "webrtc_answer", "webrtc_ice"):
        out = [m for m in sender.put(kind) if m.get("to") == them]
        arrived = [m for m in receiver.got(kind) if m.get("to") == me]
        what = f"{kind} {sender.name}->{receiver.name}: {len(out)} sent, {len(arrived)} arrived with to = the sender"
        if out:
            checks.check(len(arrived) == len(out), what)
        else:
            print(f"  {what} (the client sent none)")
        exchanged += len(arrived) if kind != "webrtc_ice" else 0
    return exchanged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--web-a", type=Path, required=True, help="a built lingua web client (dist/) for instance A")
    parser.add_argument("--web-b", type=Path, required=True, help="a built lingua web client (dist/) for instance B")
    parser.add_argument("--port-a", type=int, default=18711, help="instance A's port (what --web-a was built for)")
    parser.add_argument("--port-b", type=int, default=18712, help="instance B's port (what --web-b was built for)")
    parser.add_argument("--lang-a", default="en", choices=sorted(SPEECH), help="what A speaks and prefers")
    parser.add_argument("--lang-b", default="zh", choices=sorted(SPEECH), help="what B speaks and prefers")
    parser.add_argument("--results", type=int, default=2, help="results each page must get of the other's speech")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="how long the conversation may take")
    args = parser.parse_args()
    if args.lang_a == args.lang_b:
        parser.error("--lang-a and --lang-b must differ")
    for tool in ("espeak-ng", CHROMIUM):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found (apt-get install espeak-ng chromium)")
    checks = Checks()
    work = Path(tempfile.mkdtemp(prefix="lingua-web-room-"))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(conversation(args, work, checks))
    print("all checks passed" if not checks.failed else f"{checks.failed} check(s) FAILED")
    sys.exit(1 if checks.failed else 0)


if __name__ == "__main__":
    main()
