"""REGISTER processing (RFC 3261 §10.3, RFC 3327 Path, RFC 5626 outbound), sans-I/O.

In: the request, the flow it arrived on, the time. Out: the response to send and the
binding changes for the app to persist. The edge stores per binding where it came from
(flow), what sent it (User-Agent) and whether it is behind NAT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from ..sip.headers import ContactStar, NameAddr
from ..sip.message import Request, Response, make_response
from ..sip.uri import SipUri
from ..transport.flow import Flow
from .auth import Authenticator
from .directory import Directory
from .location import Binding, Location
from .nat import NatClassifier


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10  # per AOR


@dataclass(slots=True)
class RegisterResult:
    response: Response
    added: list[Binding] = field(default_factory=list)  # new or refreshed
    removed: list[Binding] = field(default_factory=list)
    authenticated: bool = False  # the request carried the right credentials
    auth_failed: bool = False  # credentials were offered and were wrong


class Registrar:
    def __init__(
        self,
        directory: Directory,
        location: Location,
        auth: Authenticator,
        nat: NatClassifier,
        policy: RegistrarPolicy,
        *,
        to_tag: Callable[[Request], str],
    ) -> None:
        self.directory = directory
        self.location = location
        self.auth = auth
        self.nat = nat
        self.policy = policy
        self._to_tag = to_tag

    def handle(self, request: Request, flow: Flow, now: float) -> RegisterResult:
        ruri = request.uri
        to_uri = request.to.uri
        if not isinstance(ruri, SipUri) or not isinstance(to_uri, SipUri):
            return RegisterResult(self._reply(request, 416))
        # Realm = the requested domain, known or not, so an unknown domain is challenged
        # exactly like a known one and learns nothing.
        realm = ruri.host.lower()
        binding_key = flow.remote_host
        outcome = self.auth.check(request, proxy=False, realm=realm, now=now, binding=binding_key)
        line = outcome.line
        aor = to_uri.aor
        if line is None or line.aor != aor or not self.directory.is_local_domain(realm):
            if line is not None:
                return RegisterResult(self._reply(request, 403), authenticated=True)
            challenge = self.auth.challenge(
                proxy=False, realm=realm, now=now, binding=binding_key, stale=outcome.stale
            )
            return RegisterResult(
                self._reply(request, 401, fields=challenge), auth_failed=outcome.failed
            )

        contacts = request.contacts
        result = RegisterResult(self._reply(request, 200), authenticated=True)
        header_expires = request.expires
        if isinstance(contacts, ContactStar):
            if header_expires != 0:
                result.response = self._reply(request, 400, reason="Contact * needs Expires: 0")
                return result
            current = self.location.lookup(aor, float("-inf"))
            if not all(self._newer(b, request) for b in current):
                # RFC 3261 §10.3 step 6: an old request must not undo newer registrations.
                result.response = self._reply(request, 500, reason="Out Of Order")
                return result
            for b in current:
                removed = self.location.remove(aor, b.key)
                if removed is not None:
                    result.removed.append(removed)
        else:
            outcome_code = self._apply(request, contacts, flow, now, line.tenant_id, result)
            if outcome_code is not None:
                return outcome_code
        result.response = self._ok(request, aor, now)
        return result

    def _apply(
        self,
        request: Request,
        contacts: list[NameAddr],
        flow: Flow,
        now: float,
        tenant_id: int,
        result: RegisterResult,
    ) -> RegisterResult | None:
        policy = self.policy
        aor = request.to.uri.aor  # type: ignore[union-attr]
        header_expires = request.expires
        supported = request.supported
        outbound = "outbound" in supported
        path = tuple(str(p) for p in request.paths) if "path" in supported else ()
        planned: list[tuple[NameAddr, SipUri, int]] = []
        for c in contacts:
            uri = c.uri
            if not isinstance(uri, SipUri):
                return RegisterResult(self._reply(request, 416), authenticated=True)
            expires = c.expires
            if expires is None:
                expires = header_expires if header_expires is not None else policy.default_expires
            if 0 < expires < policy.min_expires:
                return RegisterResult(
                    self._reply(request, 423, fields=[("Min-Expires", str(policy.min_expires))]),
                    authenticated=True,
                )
            planned.append((c, uri, min(expires, policy.max_expires)))
        # Check every contact before changing anything: RFC 3261 §10.3 step 8 makes a
        # REGISTER all or nothing.
        live = {b.key: b for b in self.location.lookup(aor, now)}
        keyed: list[tuple[NameAddr, SipUri, int, str]] = []
        after = set(live)
        for c, uri, expires in planned:
            instance, reg_id = c.sip_instance, c.reg_id
            key = f"{instance};reg-id={reg_id}" if outbound and instance and reg_id else str(uri)
            existing = self.location.get(aor, key)
            if existing is not None and not self._newer(existing, request):
                return RegisterResult(
                    self._reply(request, 500, reason="Out Of Order"), authenticated=True
                )
            if expires == 0:
                after.discard(key)
            else:
                after.add(key)
            keyed.append((c, uri, expires, key))
        if len(after) > policy.max_contacts and len(after) > len(live):
            return RegisterResult(
                self._reply(request, 403, reason="Too Many Contacts"), authenticated=True
            )
        via = request.via
        for c, uri, expires, key in keyed:
            if expires == 0:
                removed = self.location.remove(aor, key)
                if removed is not None:
                    result.removed.append(removed)
                continue
            binding = Binding(
                aor=aor,
                key=key,
                contact=uri,
                tenant_id=tenant_id,
                call_id=request.call_id,
                cseq=request.cseq.number,
                expires_at=now + expires,
                flow=flow,
                received_at=now,
                nat=self.nat.classify(
                    source_host=flow.remote_host,
                    source_port=flow.remote_port,
                    via_host=via.host,
                    via_port=via.port,
                    contact_host=uri.host,
                    contact_port=uri.port,
                    secure=flow.transport == "tls",
                ),
                instance=c.sip_instance,
                reg_id=c.reg_id,
                q=c.q,
                path=path,
                user_agent=request.user_agent,
            )
            old = self.location.put(binding)
            if old is not None and old.contact != binding.contact:
                result.removed.append(old)
            result.added.append(binding)
        return None

    @staticmethod
    def _newer(existing: Binding, request: Request) -> bool:
        # RFC 3261 §10.3 step 7: same Call-ID must bring a higher CSeq.
        return existing.call_id != request.call_id or request.cseq.number > existing.cseq

    def _ok(self, request: Request, aor: str, now: float) -> Response:
        fields: list[tuple[str, str]] = []
        for b in self.location.lookup(aor, now):
            fields.append(("Contact", f"<{b.contact}>;expires={b.expires_in(now)}"))
        if "path" in request.supported:
            fields.extend(("Path", p) for p in request.get_all("path"))
        if "outbound" in request.supported and any(
            c.sip_instance and c.reg_id
            for c in (request.contacts if isinstance(request.contacts, list) else [])
        ):
            fields.append(("Require", "outbound"))
        fields.append(("Date", formatdate(now, usegmt=True)))
        return self._reply(request, 200, fields=fields)

    def _reply(
        self,
        request: Request,
        status: int,
        *,
        reason: str | None = None,
        fields: list[tuple[str, str]] | None = None,
    ) -> Response:
        return make_response(
            request, status, reason, to_tag=self._to_tag(request), fields=fields or ()
        )
