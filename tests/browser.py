"""Debian's Chromium, headless, on a machine whose only network is loopback: for the dashboard's test and the
lingua web client benchmark."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
# As root, with no network but loopback: no sandbox; without the background-networking flags Chromium keeps
# trying hosts this machine cannot reach.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
