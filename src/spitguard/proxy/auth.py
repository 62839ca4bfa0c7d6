"""Digest authentication of phones (REGISTER with 401, calls with 407) against the directory.

Unknown users and wrong passwords get the very same challenge: nothing a response says
may tell a scanner that an extension exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..sip.auth import format_challenge
from ..sip.digest import DigestResult, DigestServer
from ..sip.message import Request
from .directory import Directory, LineCredentials


@dataclass(frozen=True, slots=True)
class AuthOutcome:
    line: LineCredentials | None  # set when the credentials were right
    stale: bool = False  # right password, expired nonce: re-challenge with stale=true
    failed: bool = False  # credentials were offered and were wrong (not merely absent)


class Authenticator:
    def __init__(
        self,
        directory: Directory,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
    ) -> None:
        self.directory = directory
        self._secret = secret
        self._ttl = nonce_ttl
        self._algorithms = tuple(algorithms)
        self._servers: dict[str, DigestServer] = {}

    def _server(self, realm: str) -> DigestServer:
        server = self._servers.get(realm)
        if server is None:
            server = DigestServer(
                self._secret, realm, nonce_ttl=self._ttl, algorithms=self._algorithms
            )
            # Only local domains keep a server (and its nonce-count replay state): realms
            # come from requests, and a flood of made-up ones must not evict real state.
            # Foreign realms get a throwaway server: the same challenge, nothing kept.
            if self.directory.is_local_domain(realm):
                self._servers[realm] = server
        return server

    def check(
        self, request: Request, *, proxy: bool, realm: str, now: float, binding: str
    ) -> AuthOutcome:
        creds = request.proxy_authorization if proxy else request.authorization
        if not creds:
            return AuthOutcome(None)
        server = self._server(realm)
        stale = False
        for cred in creds:
            if not cred.is_digest or cred.realm != realm:
                continue
            result = server.verify(
                cred, method=request.method, ha1=self.directory.ha1, now=now, binding=binding
            )
            if result is DigestResult.OK:
                line = self.directory.by_auth(cred.username or "", realm)
                if line is not None:
                    return AuthOutcome(line)
            elif result is DigestResult.STALE:
                stale = True
        return AuthOutcome(None, stale=stale, failed=not stale)

    def challenge(
        self, *, proxy: bool, realm: str, now: float, binding: str, stale: bool = False
    ) -> list[tuple[str, str]]:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return [
            (name, format_challenge(ch))
            for ch in self._server(realm).challenge(now, stale=stale, binding=binding)
        ]
