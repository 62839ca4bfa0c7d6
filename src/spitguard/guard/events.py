"""Security events, aggregated on the hot path and written in batches off it.

One record per (source, reason, minute) with a count, first and last seen, and one
sampled trace: the first message of that minute, as received. A flood of a million
packets from one address is one row per minute, not a million. Pending records are
bounded; when full, the oldest are dropped (and counted) so memory never grows with the
attack. Redaction of credentials happens when a record is taken for writing, not per
packet.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

MAX_TRACE = 8192  # bytes of a sampled message kept


@dataclass(slots=True)
class EventRecord:
    source: str
    reason: str
    minute: int  # epoch minute
    count: int
    first_seen: float
    last_seen: float
    action: str  # drop / reject / ban
    transport: str
    sample: bytes  # raw message as received (redacted when taken for writing)
    method: str | None = None
    user_agent: str | None = None
    target: str | None = None  # the user the request was for (To / R-URI user)


class EventAggregator:
    def __init__(self, *, max_pending: int = 20_000) -> None:
        self.max_pending = max_pending
        self._pending: OrderedDict[tuple[str, str, int], EventRecord] = OrderedDict()
        self.dropped = 0  # records lost to the bound
        self.recorded = 0  # events seen (packets)

    def record(
        self,
        source: str,
        reason: str,
        now: float,
        *,
        action: str,
        transport: str,
        raw: bytes,
        method: str | None = None,
        user_agent: str | None = None,
        target: str | None = None,
    ) -> None:
        self.recorded += 1
        key = (source, reason, int(now // 60))
        rec = self._pending.get(key)
        if rec is not None:
            rec.count += 1
            rec.last_seen = now
            if action == "ban":
                rec.action = "ban"
            return
        if len(self._pending) >= self.max_pending:
            self._pending.popitem(last=False)
            self.dropped += 1
        self._pending[key] = EventRecord(
            source,
            reason,
            key[2],
            1,
            now,
            now,
            action,
            transport,
            raw[:MAX_TRACE],
            method,
            user_agent[:200] if user_agent else None,
            target[:200] if target else None,
        )

    def take(self) -> list[EventRecord]:
        """Everything pending, redacted, for the writer; the aggregator starts afresh."""
        out = list(self._pending.values())
        self._pending = OrderedDict()
        for rec in out:
            rec.sample = redact(rec.sample)
        return out

    def __len__(self) -> int:
        return len(self._pending)


_AUTH_LINE = re.compile(
    rb"^((?:proxy-)?authorization[ \t]*:)([^\r\n]*)", re.IGNORECASE | re.MULTILINE
)
_SECRET_PARAM = re.compile(
    rb"\b(response|nonce|cnonce|opaque)[ \t]*=[ \t]*(\"[^\"\r\n]*\"|[^,\s]*)", re.IGNORECASE
)
_FOLD = re.compile(rb"\r?\n[ \t]+")
_URI_PASSWORD = re.compile(rb"(sips?:[^:@\s;>\"]+):[^@\s;>\"]+@", re.IGNORECASE)


def redact(raw: bytes) -> bytes:
    """Remove what could be replayed or cracked: digest responses and nonces, URI passwords,
    Basic/Bearer tokens. Usernames and realms stay: they show what was targeted."""

    def auth_line(m: re.Match[bytes]) -> bytes:
        value = m.group(2)
        stripped = value.lstrip()
        if stripped[:6].lower() == b"digest":
            return m.group(1) + _SECRET_PARAM.sub(rb'\1="[redacted]"', value)
        scheme = stripped.split(None, 1)[0] if stripped else b""
        return m.group(1) + b" " + scheme + b" [redacted]"

    # Unfold first so a secret on a continuation line is still seen as part of its header
    # (only the head: the body is left as received).
    head, sep, body = raw.partition(b"\r\n\r\n")
    out = _AUTH_LINE.sub(auth_line, _FOLD.sub(b" ", head)) + sep + body
    return _URI_PASSWORD.sub(rb"\1:[redacted]@", out)
