"""The boot server's protocol logic, sans-I/O: request facts in, a decision out.

:class:`ProvisionService` reads checks top to bottom, like the guard: banned source →
rate → method → path → public file (master files, the same for everyone) → firmware and
licences (clean 404) → which MAC → authentication (HTTP digest, username = MAC, password
= the device's provisioning password) → serve the file or accept the upload.

Unknown MAC and wrong password look identical on the wire: the same 401 challenge, and a
known MAC's master file is answered exactly like an unknown one's. Distinct unknown MACs
and failed answers are counted per source (``guard.enumeration``) and end in a ban through
the guard's ban list; a request budget per source (``guard.ratelimit``) comes first. The
adapter (``provision.runtime``) does the I/O: it reads bodies, writes the fetch log and
uploads, and hands bans and events to the edge.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from ..guard.enumeration import EnumerationDetector, EnumerationPolicy
from ..guard.ratelimit import OTHER, Budget, GroupBudgets, RateLimiter
from ..sip.auth import AuthChallenge, AuthCredentials, format_challenge, parse_credentials
from ..sip.digest import DigestResult, DigestServer
from ..sip.errors import SipParseError
from .catalog import Catalog, CatalogEntry
from .driver import UAInfo, UploadFinding, VendorDriver

__all__ = [
    "Admitted",
    "Decision",
    "ProvisionPolicy",
    "ProvisionRequest",
    "ProvisionService",
    "SecurityHooks",
    "ua_mismatch",
]

_RATE_GROUP: Final = "provision"
_NONCE_SLOT: Final = "NONCE-SLOT"
MAX_AGENTS: Final = 4096  # distinct User-Agents remembered (scanners vary theirs)
_FILE_NAME = re.compile(r"^[A-Za-z0-9._\-\[\]]{1,128}$")
_MODEL_FOLD = re.compile(r"[\s_\-]")

Action = Literal["drop", "reject", "ban"]


class SecurityHooks(Protocol):
    """What the boot server may do to the guard: the edge implements it (``app.py``)."""

    def is_banned(self, source: str, now: float) -> bool: ...
    def ban(self, source: str, reason: str, now: float) -> None: ...
    def event(
        self,
        source: str,
        reason: str,
        now: float,
        *,
        action: Action,
        user_agent: str | None,
        target: str | None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ProvisionPolicy:
    realm: str = "spitguard-provision"
    nonce_ttl: float = 300.0
    algorithms: tuple[str, ...] = ("MD5",)
    max_upload_bytes: int = 256 * 1024
    sweep_unknown_macs: int = 10
    sweep_window: float = 300.0
    auth_failures: int = 10
    auth_failures_window: float = 300.0
    rate_limit: int | None = 300
    rate_window: float = 10.0


@dataclass(frozen=True, slots=True)
class ProvisionRequest:
    """What the adapter read off the wire. ``name`` is the path below /provision/ and
    ``target`` the request target as sent (digest's ``uri`` must equal it)."""

    method: str
    name: str
    target: str
    source: str
    user_agent: str | None = None
    authorization: str | None = field(default=None, repr=False)
    content_length: int | None = None
    # The MAC a verified TLS client certificate names (the TLS boot port only).
    client_mac: str | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One fetch-log row (``store.repos.FetchRecord`` without the time)."""

    mac: str
    path: str
    status: int
    version: str | None = None
    model: str | None = None
    firmware: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    status: int
    body: bytes = field(default=b"", repr=False)
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    log: LogEntry | None = None


@dataclass(frozen=True, slots=True)
class Admitted:
    """An authenticated upload: read at most ``limit`` bytes, then call ``keep_upload``."""

    entry: CatalogEntry
    name: str
    limit: int
    ua: UAInfo | None
    note: str | None


NOT_FOUND: Final = Decision(404)


def ua_mismatch(ua: UAInfo | None, user_agent: str | None, entry: CatalogEntry) -> str | None:
    """Why the User-Agent does not fit the inventory, or None when it does (or says nothing
    to compare: an unparseable agent is noted, a missing one is not)."""
    device = entry.device
    if ua is None:
        return None if not user_agent else f"User-Agent is not a {device.vendor} phone's"
    if ua.vendor != device.vendor.lower():
        return f"User-Agent says {ua.vendor}, inventory says {device.vendor}"
    if device.model and _MODEL_FOLD.sub("", ua.model).lower() != (
        _MODEL_FOLD.sub("", device.model).lower()
    ):
        return f"User-Agent says model {ua.model}, inventory says {device.model}"
    return None


class ProvisionService:
    """One per process. Not thread-safe (counters, nonce windows): one event loop."""

    def __init__(
        self,
        drivers: Sequence[VendorDriver],
        catalog: Callable[[], Catalog],
        hooks: SecurityHooks,
        *,
        secret: bytes,
        policy: ProvisionPolicy | None = None,
    ) -> None:
        self.policy = p = policy or ProvisionPolicy()
        self.drivers = tuple(drivers)
        self._catalog = catalog
        self.hooks = hooks
        self.digest = DigestServer(secret, p.realm, nonce_ttl=p.nonce_ttl, algorithms=p.algorithms)
        self.enumeration = EnumerationDetector(
            EnumerationPolicy(
                p.sweep_unknown_macs, p.sweep_window, p.auth_failures, p.auth_failures_window
            )
        )
        budget = Budget(p.rate_limit, p.rate_window)
        self.rates = RateLimiter({_RATE_GROUP: GroupBudgets(budget, budget, budget)})
        self._agents: dict[str, tuple[VendorDriver, UAInfo | None]] = {}
        self._templates = {
            stale: tuple(
                format_challenge(AuthChallenge(c.scheme, {**c.params, "nonce": _NONCE_SLOT}))
                for c in self.digest.challenge(0.0, stale=stale)
            )
            for stale in (False, True)
        }

    # --- the checks, in order ----------------------------------------------------------
    def check(self, req: ProvisionRequest, now: float) -> Decision | Admitted:
        """A final decision, or (authenticated PUT) permission to read the body."""
        src = req.source
        if self.hooks.is_banned(src, now):
            self._event(req, "provision:banned", now, "drop")
            return NOT_FOUND  # nothing useful, and nothing that says "banned"
        if not self.rates.hit(src, OTHER, _RATE_GROUP, now):
            self._event(req, "provision:rate", now, "drop")
            return Decision(429)
        if req.method not in ("GET", "HEAD", "PUT"):
            return Decision(405, headers=(("Allow", "GET, HEAD, PUT"),))
        name = req.name
        if not _FILE_NAME.match(name) or name.startswith("."):
            return Decision(404, log=LogEntry("-", name[:512], 404))
        driver, ua = self._identify(req.user_agent or "")
        model, firmware = (ua.model, ua.firmware) if ua else (None, None)
        mac = driver.mac_in_path(name)
        entry = None if mac is None else self._catalog().get(mac)
        if mac is not None and entry is None and self._unknown_mac(req, mac, now):
            return NOT_FOUND
        if req.method != "PUT":
            public = driver.render_public(name)
            if public is not None:
                return self._serve(public.body, public.content_type, public.version, req, ua, mac)
            if driver.is_firmware_or_license(name):
                return Decision(404, log=LogEntry(mac or "-", name, 404, None, model, firmware))
        if mac is None:
            return Decision(404, log=LogEntry("-", name, 404, None, model, firmware))
        denied = self._authenticate(
            req, mac, entry, now, LogEntry(mac, name, 401, None, model, firmware)
        )
        if denied is not None:
            return denied
        assert entry is not None  # _authenticate only admits known devices
        note = ua_mismatch(ua, req.user_agent, entry)
        if req.method == "PUT":
            if req.content_length is not None and req.content_length > self.policy.max_upload_bytes:
                return Decision(413, log=LogEntry(mac, name, 413, None, model, firmware, note))
            return Admitted(entry, name, self.policy.max_upload_bytes, ua, note)
        rendered = entry.render(name)
        if rendered is None:
            return Decision(404, log=LogEntry(mac, name, 404, None, model, firmware, note))
        return self._serve(
            rendered.body, rendered.content_type, rendered.version, req, ua, mac, note
        )

    def keep_upload(
        self, admitted: Admitted, body: bytes | None
    ) -> tuple[Decision, UploadFinding | None]:
        """The upload's fate; ``body`` None means it was larger than ``admitted.limit``."""
        entry, name, ua = admitted.entry, admitted.name, admitted.ua
        model, firmware = (ua.model, ua.firmware) if ua else (None, None)
        mac = entry.mac
        if body is None:
            return Decision(
                413, log=LogEntry(mac, name, 413, None, model, firmware, admitted.note)
            ), None
        profile = None if entry.config is None else entry.config.profile
        finding = entry.driver.parse_upload(name, body, profile)
        if finding.mac != mac:  # an upload named for another phone: not this one's to make
            return Decision(404, log=LogEntry(mac, name, 404, None, model, firmware)), None
        note = admitted.note
        if finding.weakening:
            params = ", ".join(sorted({w.parameter for w in finding.weakening}))
            note = f"upload weakens hardening: {params}"[:200]
        elif finding.rejected:
            note = f"upload unreadable: {finding.rejected}"[:200]
        return Decision(204, log=LogEntry(mac, name, 204, None, model, firmware, note)), finding

    # --- pieces ------------------------------------------------------------------------
    def _identify(self, user_agent: str) -> tuple[VendorDriver, UAInfo | None]:
        """The driver whose User-Agent this is (the first driver otherwise) and what the
        agent says. Cached: a fleet sends a handful of distinct agents."""
        known = self._agents.get(user_agent)
        if known is None:
            known = (self.drivers[0], None)
            for driver in self.drivers:
                ua = driver.matches_user_agent(user_agent) if user_agent else None
                if ua is not None:
                    known = (driver, ua)
                    break
            if len(self._agents) >= MAX_AGENTS:
                self._agents.clear()
            self._agents[user_agent] = known
        return known

    def _unknown_mac(self, req: ProvisionRequest, mac: str, now: float) -> bool:
        """Count an unknown MAC; True when the source has just been banned for the sweep."""
        if not self.enumeration.note_user(req.source, mac, now):
            return False
        self._ban(req, "provision:mac_sweep", now, mac)
        return True

    def _ban(self, req: ProvisionRequest, reason: str, now: float, target: str | None) -> None:
        self.hooks.ban(req.source, reason, now)
        self.hooks.event(
            req.source, reason, now, action="ban", user_agent=req.user_agent, target=target
        )
        self.enumeration.forget(req.source)

    def _event(self, req: ProvisionRequest, reason: str, now: float, action: Action) -> None:
        self.hooks.event(
            req.source, reason, now, action=action, user_agent=req.user_agent, target=None
        )

    def _challenge(self, now: float, source: str, *, stale: bool = False) -> Decision:
        # Formatted once with a placeholder nonce, then only the nonce is put in: every
        # phone's boot passes through here, and nonces are base64url (safe when quoted).
        templates = self._templates[stale]
        nonce = self.digest.make_nonce(now, binding=source)
        headers = tuple(("WWW-Authenticate", t.replace(_NONCE_SLOT, nonce)) for t in templates)
        return Decision(401, headers=headers)

    def _authenticate(
        self,
        req: ProvisionRequest,
        mac: str,
        entry: CatalogEntry | None,
        now: float,
        log: LogEntry,
    ) -> Decision | None:
        """None when the request proves it is ``mac``'s; otherwise the 401 to send (the
        same whether the MAC is unknown, the password wrong or the credentials another
        device's)."""
        if req.client_mac is not None and req.client_mac == mac and entry is not None:
            # Mutual TLS: the certificate, verified against the configured CA, names this
            # MAC; it proves the device as the digest would.
            self.enumeration.note_auth_success(req.source)
            return None
        if req.authorization is None:
            return _with_log(self._challenge(now, req.source), log)
        try:
            creds: AuthCredentials | None = parse_credentials(req.authorization)
        except SipParseError:
            creds = None
        result = DigestResult.INVALID
        if creds is not None and creds.uri == req.target:

            def ha1(username: str, realm: str, algorithm: str) -> str | None:
                # Username = the MAC in the path: another device's credentials never fit.
                if entry is None or username.lower() != mac:
                    return None
                return entry.ha1(algorithm, realm)

            result = self.digest.verify(
                creds, method=req.method, ha1=ha1, now=now, binding=req.source
            )
        if result is DigestResult.OK:
            self.enumeration.note_auth_success(req.source)
            return None
        if result is DigestResult.STALE:
            return _with_log(self._challenge(now, req.source, stale=True), log)
        if self.enumeration.note_auth_failure(req.source, now):
            self._ban(req, "provision:auth", now, mac)
            return NOT_FOUND
        self._event(req, "provision:auth_failed", now, "reject")
        return _with_log(self._challenge(now, req.source), log)

    def _serve(
        self,
        body: bytes,
        content_type: str,
        version: str,
        req: ProvisionRequest,
        ua: UAInfo | None,
        mac: str | None = None,
        note: str | None = None,
    ) -> Decision:
        model, firmware = (ua.model, ua.firmware) if ua else (None, None)
        log = LogEntry(mac or "-", req.name, 200, version, model, firmware, note)
        headers = (("ETag", f'"{version}"'), ("Cache-Control", "no-store"))
        return Decision(200, b"" if req.method == "HEAD" else body, content_type, headers, log)


def _with_log(decision: Decision, log: LogEntry) -> Decision:
    return Decision(decision.status, decision.body, decision.content_type, decision.headers, log)
