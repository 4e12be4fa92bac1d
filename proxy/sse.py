"""An incremental Server-Sent Events parser for taps.

A tap reads a copy of the bytes after they were sent to the client, so it never delays a byte;
it only has to cope with events split anywhere across chunks, CRLF line ends and comments.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[Event]:
        """Add bytes; return the events they completed, in order."""
        self._buffer += chunk
        events: list[Event] = []
        while True:
            line, separator, rest = self._split_line(self._buffer)
            if not separator:
                return events
            self._buffer = rest
            event = self._line(line.decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)

    @staticmethod
    def _split_line(buffer: bytes) -> tuple[bytes, bytes, bytes]:
        newline = buffer.find(b"\n")
        carriage = buffer.find(b"\r", 0, newline if newline >= 0 else len(buffer))
        if carriage >= 0:
            if carriage + 1 == len(buffer):
                return buffer, b"", b""  # a CR at the very end may be half of a CRLF
            skip = 2 if buffer[carriage + 1 : carriage + 2] == b"\n" else 1
            return buffer[:carriage], b"\r", buffer[carriage + skip :]
        if newline >= 0:
            return buffer[:newline], b"\n", buffer[newline + 1 :]
        return buffer, b"", b""

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data and not self._event:
                return None
            event = Event(self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None
