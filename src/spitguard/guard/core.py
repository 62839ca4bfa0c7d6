"""`Guard.decide`: what happens to each message before the proxy sees it.

Reads top to bottom like Kamailio's REQINIT, cheapest and most decisive first:

  banned source          -> drop (a live registration's own flow is exempt)
  responses              -> pass (the proxy keeps only those matching its transactions)
  sanity gate            -> drop
  rate budget exceeded   -> ban
  scanner fingerprint    -> ban (trusted and registered sources are not fingerprinted)
  enumeration            -> ban (many target users, or failed authentications)
  policy for strangers   -> drop what an unknown source may not send
  everything else        -> pass

Unwanted traffic gets silence by default: no response tells a bot that something is
here. Every non-pass verdict becomes an aggregated security event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..sip.message import Request, Response
from ..sip.uri import SipUri
from ..transport.flow import Flow
from .bans import Ban, BanList
from .enumeration import EnumerationDetector
from .events import EventAggregator
from .fingerprints import Fingerprints
from .ratelimit import KEEPALIVE, OTHER, REGISTER, RateLimiter
from .sanity import sanity_check

PASS_ACTION = "pass"  # noqa: S105 - a verdict, not a password
DROP = "drop"
REJECT = "reject"
BAN = "ban"

# Who may call a local AOR directly (SIP-URI calls), when the source is no known peer:
ALLOW_ALL = "allow"  # anyone on the Internet
TRUSTED = "trusted"  # configured trunks/peers and registered phones (default)
UPSTREAM_ONLY = "upstream"  # only configured trunks/peers


@dataclass(frozen=True, slots=True)
class Verdict:
    action: str  # pass / drop / reject / ban
    reason: str
    details: tuple[str, ...] = ()
    code: int | None = None  # the status for `reject`

    @property
    def passes(self) -> bool:
        return self.action == PASS_ACTION


PASS = Verdict(PASS_ACTION, "ok")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    invite_policy: str = TRUSTED
    max_message_size: int = 16_384
    max_ruri_length: int = 512
    reject_code: int = 403
    # Reason families answered with `reject_code` instead of silence (default: none).
    reject_reasons: frozenset[str] = frozenset()


@dataclass(slots=True)
class GuardStats:
    verdicts: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, action: str, reason: str) -> None:
        key = (action, reason)
        self.verdicts[key] = self.verdicts.get(key, 0) + 1


TrustedLookup = Callable[[str], str | None]  # ip -> group name ("upstream", "peers") or None
FlowCheck = Callable[[Flow], bool]
HostCheck = Callable[[str], bool]
LocalDomain = Callable[[str], bool]
BanHook = Callable[[Ban], None]


class Guard:
    def __init__(
        self,
        *,
        trusted: TrustedLookup,
        registered_flow: FlowCheck,
        registered_host: HostCheck,
        local_domain: LocalDomain,
        fingerprints: Fingerprints,
        policy: GuardPolicy | None = None,
        rates: RateLimiter | None = None,
        bans: BanList | None = None,
        enumeration: EnumerationDetector | None = None,
        events: EventAggregator | None = None,
        on_ban: BanHook | None = None,
    ) -> None:
        self.trusted = trusted
        self.registered_flow = registered_flow
        self.registered_host = registered_host
        self.local_domain = local_domain
        self.fingerprints = fingerprints
        # `is None`, not `or`: these containers define __len__, so an empty one is falsy.
        self.policy = GuardPolicy() if policy is None else policy
        self.rates = RateLimiter() if rates is None else rates
        self.bans = BanList() if bans is None else bans
        self.enumeration = EnumerationDetector() if enumeration is None else enumeration
        self.events = EventAggregator() if events is None else events
        self.on_ban = on_ban
        self.stats = GuardStats()

    # --- the decision -------------------------------------------------------------------
    def drop_if_banned(self, flow: Flow, raw: bytes, now: float) -> bool:
        """The flood path, before any parsing: a banned source costs a dict lookup and a
        counter (a registered phone's own flow is exempt, as in `decide`)."""
        ip = flow.remote_host
        if not self.bans.is_banned(ip, now) or self.registered_flow(flow):
            return False
        self.stats.count(DROP, "banned")
        self.events.record(ip, "banned", now, action=DROP, transport=flow.transport, raw=raw)
        return True

    def decide(self, msg: Request | Response, flow: Flow, raw: bytes, now: float) -> Verdict:
        verdict = self._decide(msg, flow, raw, now)
        self.stats.count(verdict.action, verdict.reason)
        if not verdict.passes:
            self._record(verdict, msg, flow, raw, now)
        return verdict

    def _decide(self, msg: Request | Response, flow: Flow, raw: bytes, now: float) -> Verdict:
        ip = flow.remote_host
        own_flow = self.registered_flow(flow)
        if not own_flow and self.bans.is_banned(ip, now):
            return Verdict(DROP, "banned")
        if isinstance(msg, Response):
            return PASS
        group = self.trusted(ip)
        known = group is not None or own_flow or self.registered_host(ip)

        reason = sanity_check(
            msg,
            max_size=self.policy.max_message_size,
            max_ruri=self.policy.max_ruri_length,
            size=len(raw),
        )
        if reason == "sanity:no_branch_cookie" and (known or msg.method == "REGISTER"):
            # RFC 2543 phones (old 3Com, Cisco CSCO/4) send no z9hG4bK branch: let them
            # register (they get the same challenge as anyone) and call once known.
            reason = None
        if reason is not None:
            return self._act(reason)

        klass = _traffic_class(msg)
        if group is not None:
            rate_key, rate_group = ip, group
        elif own_flow:
            # A registered phone is budgeted on its own flow, so a flood from another port
            # of the same address cannot get it banned.
            rate_key, rate_group = f"{ip}:{flow.remote_port}", "registered"
        elif known:
            rate_key, rate_group = ip, "registered"
        else:
            rate_key, rate_group = ip, "untrusted"
        if not self.rates.hit(rate_key, klass, rate_group, now):
            if own_flow or group is not None:
                return Verdict(DROP, f"rate:{klass}")  # shed load, never ban a known peer
            return self._ban(ip, f"rate:{klass}", now)

        if group is not None:
            return PASS
        if own_flow or known:
            if self.policy.invite_policy == UPSTREAM_ONLY and self._phone_call_to_local(msg):
                return self._act("policy:phone_call")
            if own_flow:
                return PASS
        fp = self.fingerprints.match(msg, trusted=False)
        if fp.is_scanner:
            return self._ban(ip, "scanner", now, fp.rules)

        if not known:
            target = _target_user(msg)
            if target is not None and self.enumeration.note_user(ip, target, now):
                return self._ban(ip, "enum:users", now)
            return self._stranger_policy(msg)
        return PASS

    def _phone_call_to_local(self, msg: Request) -> bool:
        ruri = msg.uri
        return (
            msg.method == "INVITE"
            and msg.to.tag is None
            and isinstance(ruri, SipUri)
            and self.local_domain(ruri.host)
        )

    def _stranger_policy(self, msg: Request) -> Verdict:
        """What a source that is neither configured nor registered may send."""
        method = msg.method
        if method == "REGISTER":
            return PASS  # phones are strangers until registered; the registrar challenges
        if method in ("ACK", "CANCEL", "BYE") or msg.to.tag is not None:
            return PASS  # only useful inside our transactions and dialogs: the proxy checks
        if method == "OPTIONS":
            return self._act("policy:options")  # svmap's probe: say nothing
        ruri = msg.uri
        to_local = isinstance(ruri, SipUri) and self.local_domain(ruri.host)
        if method == "INVITE" and to_local and self.policy.invite_policy == ALLOW_ALL:
            return PASS
        if to_local:
            return self._act("policy:untrusted_call")
        return self._act("policy:relay")  # strangers never reach the upstream

    def _act(self, reason: str) -> Verdict:
        family = reason.split(":", 1)[0]
        if family in self.policy.reject_reasons or reason in self.policy.reject_reasons:
            return Verdict(REJECT, reason, code=self.policy.reject_code)
        return Verdict(DROP, reason)

    def _ban(self, ip: str, reason: str, now: float, details: tuple[str, ...] = ()) -> Verdict:
        ban = self.bans.ban(ip, reason, now)
        if self.on_ban is not None:
            self.on_ban(ban)
        return Verdict(BAN, reason, details)

    # --- feedback from the registrar and proxy --------------------------------------------
    def note_auth(self, flow: Flow, ok: bool, now: float) -> Verdict | None:
        """Failed digest attempts count toward a ban (svcrack); success clears the count."""
        ip = flow.remote_host
        if ok:
            self.enumeration.note_auth_success(ip)
            return None
        if self.trusted(ip) is not None:
            return None
        if self.enumeration.note_auth_failure(ip, now):
            verdict = self._ban(ip, "enum:auth", now)
            self.stats.count(verdict.action, verdict.reason)
            self.events.record(
                ip, verdict.reason, now, action=BAN, transport=flow.transport, raw=b""
            )
            return verdict
        return None

    def malformed(self, flow: Flow, raw: bytes, reason: str, now: float) -> None:
        """Unparseable bytes: silence, and a counted event (bans still apply first)."""
        verdict = Verdict(DROP, f"malformed:{reason}")
        if self.bans.is_banned(flow.remote_host, now) and not self.registered_flow(flow):
            verdict = Verdict(DROP, "banned")
        self.stats.count(verdict.action, verdict.reason)
        self.events.record(
            flow.remote_host, verdict.reason, now, action=DROP, transport=flow.transport, raw=raw
        )

    def _record(
        self, verdict: Verdict, msg: Request | Response, flow: Flow, raw: bytes, now: float
    ) -> None:
        method = msg.method if isinstance(msg, Request) else None
        self.events.record(
            flow.remote_host,
            verdict.reason,
            now,
            action=verdict.action,
            transport=flow.transport,
            raw=raw,
            method=method,
            user_agent=msg.user_agent,
            target=_target_user(msg) if isinstance(msg, Request) else None,
        )


def _traffic_class(msg: Request) -> str:
    if msg.method == "REGISTER":
        return REGISTER
    if msg.method == "OPTIONS" or (msg.method == "NOTIFY" and msg.get("event") == "keep-alive"):
        return KEEPALIVE
    return OTHER


def _target_user(msg: Request) -> str | None:
    uri = msg.to.uri if msg.method == "REGISTER" else msg.uri
    if isinstance(uri, SipUri):
        return uri.user
    return None
