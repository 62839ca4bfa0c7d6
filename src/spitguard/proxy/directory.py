"""The in-memory line directory: local domains and each line's credentials.

The hot path must not touch the database, so the registrar and the proxy authenticate
against this snapshot; the app reloads it when the store's revision counter changes
(a CLI or API write). Passwords are kept only as digest HA1 values per algorithm.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LineCredentials:
    tenant_id: int
    aor: str  # "sip:user@domain"
    auth_user: str
    domain: str
    ha1: dict[str, str] = field(repr=False)  # "MD5"/"SHA-256" -> hex HA1 for realm=domain
    password: str = field(repr=False, default="")  # kept for answering phones' challenges


def _ha1(alg: str, user: str, realm: str, password: str) -> str:
    fn = hashlib.sha256 if alg == "SHA-256" else hashlib.md5
    return fn(f"{user}:{realm}:{password}".encode()).hexdigest()


class Directory:
    def __init__(self) -> None:
        self._domains: dict[str, int] = {}
        self._by_aor: dict[str, LineCredentials] = {}
        self._by_auth: dict[tuple[str, str], LineCredentials] = {}
        self.revision = -1

    def replace(
        self,
        domains: Iterable[tuple[str, int]],
        lines: Iterable[tuple[int, str, str, str, str]],
        revision: int,
    ) -> None:
        """Swap in a new snapshot. `lines`: (tenant_id, aor, auth_user, domain, password)."""
        by_aor: dict[str, LineCredentials] = {}
        by_auth: dict[tuple[str, str], LineCredentials] = {}
        for tenant_id, aor, auth_user, domain, password in lines:
            domain = domain.lower()
            ha1 = {alg: _ha1(alg, auth_user, domain, password) for alg in ("MD5", "SHA-256")}
            cred = LineCredentials(tenant_id, aor, auth_user, domain, ha1, password)
            by_aor[aor] = cred
            by_auth[(auth_user, domain)] = cred
        self._domains = {d.lower(): t for d, t in domains}
        self._by_aor = by_aor
        self._by_auth = by_auth
        self.revision = revision

    def is_local_domain(self, host: str) -> bool:
        return host.lower() in self._domains

    def tenant_of_domain(self, host: str) -> int | None:
        return self._domains.get(host.lower())

    def line(self, aor: str) -> LineCredentials | None:
        return self._by_aor.get(aor)

    def by_auth(self, auth_user: str, realm: str) -> LineCredentials | None:
        return self._by_auth.get((auth_user, realm.lower()))

    def ha1(self, username: str, realm: str, algorithm: str) -> str | None:
        """Lookup for `DigestServer.verify` (algorithm is the base hash name)."""
        cred = self._by_auth.get((username, realm.lower()))
        if cred is None:
            return None
        return cred.ha1.get("SHA-256" if algorithm.upper().startswith("SHA-256") else "MD5")

    def __len__(self) -> int:
        return len(self._by_aor)
