"""Sans-I/O framing of SIP over stream transports (TCP, TLS).

Bytes go in through `StreamFramer.feed`, events come out: one `Frame` per complete message
(header block plus exactly Content-Length body octets, for `parse`), `Ping`/`Pong` for the
RFC 5626 §3.5.1 CRLF keep-alives, and `Close` when the stream cannot be framed any more.

Content-Length is mandatory on streams (RFC 3261 §18.3): without it the end of a message
cannot be known, so its absence, a bad value or conflicting copies close the connection.
The header scan mirrors `message.parse` (same unfolding, line split, compact names and
number grammar) so that the frame boundary always agrees with what the parser concludes.

Every byte is examined a bounded number of times: the search for the end of the header
block resumes where the previous feed stopped, and consumed bytes are dropped once per feed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .errors import SipParseError
from .grammar import parse_uint
from .headers import COMPACT, MAX_UINT32
from .message import DEFAULT_LIMITS, Limits

__all__ = [
    "PING",
    "PONG",
    "Close",
    "Frame",
    "FramerEvent",
    "Ping",
    "Pong",
    "StreamFramer",
]

PING: Final = b"\r\n\r\n"  # RFC 5626 keep-alive ping (what a client sends)
PONG: Final = b"\r\n"  # RFC 5626 keep-alive pong (the answer to a ping)

_HEADER_END: Final = b"\r\n\r\n"
# Same folding rule as message.parse, so both see the same header lines.
_FOLD_RE: Final = re.compile(r"\r?\n[ \t]+")
# A request starts with a method (a token), a response with "SIP/": anything else can
# never parse, so the stream is closed on the first byte instead of buffering garbage.
_TOKEN_BYTES: Final = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
)
_CR: Final = 0x0D
_LF: Final = 0x0A


@dataclass(frozen=True, slots=True)
class Frame:
    """Exactly one complete message (no leading CRLFs, no trailing octets)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """The peer sent a CRLFCRLF keep-alive: answer with `PONG`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """The peer answered our ping (see `StreamFramer.sent_ping`)."""


@dataclass(frozen=True, slots=True)
class Close:
    """The stream cannot be framed: close the connection. `reason` is a short code."""

    reason: str


FramerEvent = Frame | Ping | Pong | Close


class StreamFramer:
    """Splits a SIP byte stream into messages and keep-alives.

    Close reasons: ``too_large`` (header block or whole message over
    ``limits.max_message_size``), ``no_content_length``, ``bad_content_length``,
    ``content_length_conflict`` and ``garbage`` (a message cannot start with that byte).
    After `Close` all further input is ignored.
    """

    __slots__ = ("_buf", "_closed", "_limits", "_need", "_ping_outstanding", "_pos", "_scan")

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed data in _buf
        self._scan = -1  # header-end search offset; -1 while between messages
        self._need = 0  # total frame length once the header block is known, else 0
        self._ping_outstanding = False
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as events (for idle/slowloris policy)."""
        return len(self._buf) - self._pos

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_message(self) -> bool:
        """True while part of a message (not just keep-alive CRLFs) is buffered."""
        return self._scan >= 0

    def sent_ping(self) -> None:
        """Record that we sent a CRLFCRLF ping, so that the next lone CRLF is its pong."""
        self._ping_outstanding = True

    def feed(self, data: bytes) -> list[FramerEvent]:
        """Add received bytes; return the events they complete, in stream order."""
        if self._closed:
            return []
        self._buf += data
        events: list[FramerEvent] = []
        while True:
            if self._scan < 0:
                progressed = self._between_messages(events)
            elif self._need == 0:
                progressed = self._header_block(events)
            else:
                progressed = self._body(events)
            if self._closed or not progressed:
                break
        self._compact()
        return events

    # --- states ------------------------------------------------------------------
    def _between_messages(self, events: list[FramerEvent]) -> bool:
        """Consume keep-alive CRLFs or begin a message; False when more bytes are needed."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail == 0:
            return False
        if buf[pos] != _CR:
            return self._begin_message(events)
        if avail < 2:
            return False
        if buf[pos + 1] != _LF:
            return self._begin_message(events)
        if self._ping_outstanding:
            # Our ping is answered by a single CRLF; decided on two bytes, so any chunking
            # of the stream gives the same result.
            self._ping_outstanding = False
            self._pos = pos + 2
            events.append(Pong())
            return True
        if avail < 3:
            return False  # a lone CRLF, or the first half of a ping
        if buf[pos + 2] == _CR:
            if avail < 4:
                return False
            if buf[pos + 3] == _LF:
                self._pos = pos + 4
                events.append(Ping())
                return True
        self._pos = pos + 2  # a stray CRLF before a message (RFC 3261 §7.5): ignored
        return True

    def _begin_message(self, events: list[FramerEvent]) -> bool:
        if self._buf[self._pos] not in _TOKEN_BYTES:
            self._close(events, "garbage")
            return False
        self._scan = self._pos
        return True

    def _header_block(self, events: list[FramerEvent]) -> bool:
        buf, pos = self._buf, self._pos
        end = buf.find(_HEADER_END, self._scan)
        cap = self._limits.max_message_size
        if end < 0:
            if len(buf) - pos > cap:
                self._close(events, "too_large")
            else:
                # Resume where a terminator split across feeds could still begin.
                self._scan = max(pos, len(buf) - 3)
            return False
        head_len = end + 4 - pos
        if head_len > cap:
            self._close(events, "too_large")
            return False
        try:
            length = content_length(bytes(buf[pos:end]))
        except SipParseError as exc:
            self._close(events, exc.reason)
            return False
        if length is None:
            self._close(events, "no_content_length")
            return False
        if head_len + length > cap:
            self._close(events, "too_large")
            return False
        self._need = head_len + length
        return True

    def _body(self, events: list[FramerEvent]) -> bool:
        pos, need = self._pos, self._need
        if len(self._buf) - pos < need:
            return False
        events.append(Frame(bytes(self._buf[pos : pos + need])))
        self._pos = pos + need
        self._scan = -1
        self._need = 0
        return True

    # --- helpers -----------------------------------------------------------------
    def _close(self, events: list[FramerEvent], reason: str) -> None:
        events.append(Close(reason))
        self._closed = True
        self._buf = bytearray()
        self._pos = 0
        self._scan = -1
        self._need = 0

    def _compact(self) -> None:
        # Once per feed, so a feed holding many small messages is not quadratic.
        pos = self._pos
        if pos:
            del self._buf[:pos]
            self._pos = 0
            if self._scan >= 0:
                self._scan -= pos


def content_length(head: bytes) -> int | None:
    """Content-Length of a header block (start line + headers, without the empty line).

    Follows `message.parse`: lines are unfolded and split on CRLF, the start line is not a
    header, names are case-insensitive with compact forms, equal duplicates are allowed.
    Returns None when absent; raises `SipParseError` for a bad or conflicting value.
    """
    text = head.decode("utf-8", "surrogateescape")
    if "\n " in text or "\n\t" in text:
        text = _FOLD_RE.sub(" ", text)
    found: int | None = None
    for line in text.split("\r\n")[1:]:
        colon = line.find(":")
        if colon <= 0:
            continue  # parse rejects this line; it cannot be a Content-Length
        name = line[:colon].rstrip().lower()
        if COMPACT.get(name, name) != "content-length":
            continue
        value = parse_uint(line[colon + 1 :], MAX_UINT32, "bad_content_length")
        if found is not None and value != found:
            raise SipParseError("content_length_conflict", "")
        found = value
    return found
