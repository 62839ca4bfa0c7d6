"""Exceptions shared by the SIP parsing modules."""

from __future__ import annotations


class SipParseError(ValueError):
    """Malformed SIP input. `reason` is a short machine-readable code (e.g. "bad_header")."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
