"""Flows: which socket or connection, and which remote address, a message travels on.

Phones sit behind NAT, so the only way to reach one is back through the exact flow its
REGISTER came in on: the same UDP socket to the same public address and port, or the
same TCP/TLS connection (RFC 5626). A `Flow` names that path; a flow token is its sealed,
opaque form, carried in Record-Route and Contact so later requests find the way back
without the edge keeping per-dialog state.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

TRANSPORTS = ("udp", "tcp", "tls")


@dataclass(frozen=True, slots=True)
class Flow:
    """A path to a peer: transport, our local address, the peer's address, connection id.

    `conn_id` is 0 for UDP (the local socket and remote address identify the flow) and a
    process-unique number for each TCP/TLS connection.
    """

    transport: str
    local_host: str
    local_port: int
    remote_host: str
    remote_port: int
    conn_id: int = 0

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    @property
    def remote(self) -> tuple[str, int]:
        return (self.remote_host, self.remote_port)

    def __str__(self) -> str:
        conn = f"#{self.conn_id}" if self.conn_id else ""
        return f"{self.transport}:{self.remote_host}:{self.remote_port}{conn}"


@dataclass(frozen=True, slots=True)
class Target:
    """Where to send when there is no flow yet: transport and address (e.g. the upstream)."""

    transport: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.transport}:{self.host}:{self.port}"


class FlowTokens:
    """Flows and targets as opaque tokens (RFC 5626 §5.2 flow tokens), carried in the
    edge's Record-Route and Contact so later requests find the way back statelessly.

    Encrypted and authenticated (AES-SIV): authenticated so nobody can hand the edge a
    Route naming an arbitrary address and turn it into an open relay; encrypted because a
    token names a phone's public address and port, which callers must never learn (that
    is exactly what a scanner wants, to reach the phone without the edge). Deterministic,
    so one flow always gets the same token. A token that fails the check is treated as
    absent.

    Every call through a flow carries the same tokens (deterministic), so both directions
    are memoized: AES-SIV and base64 were a visible share of the per-request cost. Only
    tokens that decrypted are remembered, so forged ones cannot fill the memo, and it is
    emptied when it reaches `CACHE_SIZE` entries, which keeps memory bounded.
    """

    __slots__ = ("_decoded", "_encoded", "_siv")

    CACHE_SIZE = 65_536

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("flow token key must be at least 32 bytes")
        self._siv = AESSIV(key[:64] if len(key) >= 64 else key[:32])
        self._encoded: dict[Flow | Target, str] = {}
        self._decoded: dict[str, Flow | Target] = {}

    def encode(self, where: Flow | Target) -> str:
        token = self._encoded.get(where)
        if token is None:
            token = self._seal(where)
            if len(self._encoded) >= self.CACHE_SIZE:
                self._encoded.clear()
            self._encoded[where] = token
        return token

    def decode(self, token: str) -> Flow | Target | None:
        """The flow or target a token names, or None when it is not one of ours."""
        where = self._decoded.get(token)
        if where is None:
            where = self._open(token)
            if where is not None:
                if len(self._decoded) >= self.CACHE_SIZE:
                    self._decoded.clear()
                self._decoded[token] = where
        return where

    def _seal(self, where: Flow | Target) -> str:
        if isinstance(where, Flow):
            text = (
                f"f|{where.transport}|{where.local_host}|{where.local_port}|"
                f"{where.remote_host}|{where.remote_port}|{where.conn_id}"
            )
        else:
            text = f"t|{where.transport}|{where.host}|{where.port}"
        raw = self._siv.encrypt(text.encode(), None)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def _open(self, token: str) -> Flow | Target | None:
        if not token or len(token) > 256:
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            return None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != token:
            return None  # only our own spelling: one token per flow
        try:
            parts = self._siv.decrypt(raw, None).decode().split("|")
        except (InvalidTag, ValueError, UnicodeDecodeError):
            return None
        try:
            if parts[0] == "f" and len(parts) == 7:
                return Flow(
                    parts[1], parts[2], int(parts[3]), parts[4], int(parts[5]), int(parts[6])
                )
            if parts[0] == "t" and len(parts) == 4:
                return Target(parts[1], parts[2], int(parts[3]))
        except ValueError:
            return None
        return None
