"""The client end of Dragoman's WebSockets (the node agent's and the client library's): websockets' asyncio
connection, with every frame sent in one event-loop turn written to the socket in one system call.

websockets writes each frame as it is sent. A node that finishes a burst of jobs together, or a client
sending audio for several sessions, would pay a system call per frame (on loopback, the receiver's wake-up
too); queued until the turn ends, they leave together, in the order they were sent. The opening and closing
handshakes are written as websockets writes them, after whatever was queued.
"""

from __future__ import annotations

from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.protocol import State


class BatchedWritesConnection(ClientConnection):
    """Pass as ``create_connection`` to ``websockets.asyncio.client.connect``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unsent: list[bytes] = []

    def send_data(self) -> None:
        if self.protocol.state is not State.OPEN:  # a handshake: its bytes follow what this turn queued
            self._write_unsent()
            super().send_data()
            return
        for data in self.protocol.data_to_send():
            if not self._unsent:
                self.loop.call_soon(self._write_unsent)
            self._unsent.append(data)

    def _write_unsent(self) -> None:
        if not self._unsent:
            return
        data = b"".join(self._unsent)
        self._unsent.clear()
        if not self.transport.is_closing():
            self.transport.write(data)
