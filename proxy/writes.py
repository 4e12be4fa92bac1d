"""A client connection's writes made in one event-loop turn go to the socket as one system call.

uvicorn writes a response's head the moment the app sends ``http.response.start``, then each body
message on its own: a small answer costs the proxy two ``send`` calls where one would do, and on
this path the kernel's share of the CPU is the largest. :class:`TurnWrites` wraps the connection's
transport: a write is kept until the end of the current loop turn (``call_soon``), and whatever
else is written in that turn joins it. Nothing waits longer than one turn, the order of the bytes
is kept, and closing (or a half close) sends what is kept first.
"""

from __future__ import annotations

import asyncio
from typing import Any


class TurnWrites:
    """``transport`` with the writes of one loop turn joined; everything else is the transport's own."""

    __slots__ = ("kept", "loop", "scheduled", "transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.loop = loop
        self.kept: list[bytes] = []
        self.scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        self.kept.append(bytes(data))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send what this turn wrote (nothing once the connection is closing: its bytes have nowhere to go)."""
        self.scheduled = False
        if not self.kept:
            return
        data = self.kept[0] if len(self.kept) == 1 else b"".join(self.kept)
        self.kept.clear()
        if not self.transport.is_closing():
            self.transport.write(data)

    def write_eof(self) -> None:
        self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, ...
        return getattr(self.transport, name)
