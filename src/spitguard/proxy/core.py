"""The stateful proxy (RFC 3261 §16) that every call to and from a phone goes through.

Sans-I/O: bytes and flows come in through `receive`, sends go out through the `Output`
given at construction, time comes from injected clocks, and the adapter wakes the proxy
at `next_deadline()`. Policy, top to bottom:

- REGISTER goes to the registrar (digest, 401 for unknown user and wrong password alike).
- In-dialog requests follow the Route set; the edge's own Record-Route entries carry
  signed flow tokens, so a BYE reaches a phone through the flow its REGISTER opened.
- Initial requests to a local AOR fork to every live binding of it, through each
  binding's own flow. Requests from phones (or claiming a local From) must carry proxy
  credentials of the calling line (407 otherwise): the edge is never an open relay.
- Requests to anywhere else go to the configured upstream, after the same 407.
- The edge Record-Routes twice (one entry per side), answers 100 Trying to INVITEs,
  propagates CANCEL, and picks the best final response when all branches are done.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..sip.auth import format_credentials
from ..sip.digest import DigestClient, select_challenge
from ..sip.errors import SipParseError
from ..sip.headers import Via
from ..sip.message import Request, Response, make_response, parse
from ..sip.transaction import (
    ClientTransaction,
    Deliver,
    Send,
    ServerTransaction,
    State,
    Terminated,
    Timeout,
    TransactionTable,
    TransportError,
    TxEvent,
    build_cancel,
    new_client_transaction,
    new_server_transaction,
)
from ..sip.uri import SipUri
from ..transport.flow import Flow, FlowTokens, Target
from .auth import Authenticator
from .directory import Directory
from .location import Binding, Location
from .registrar import RegisterResult, Registrar

log = logging.getLogger(__name__)

# Methods that create dialogs: the edge Record-Routes them.
DIALOG_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER", "NOTIFY"})
TIMER_C = 181.0  # RFC 3261 §16.6 step 11: "greater than 3 minutes"; ringing limit
CANCEL_GRACE = 32.0  # 64*T1: a branch silent this long after our CANCEL counts as 408
# States in which a transaction has its final response and only waits out retransmissions.
LINGERING = frozenset({State.ACCEPTED, State.COMPLETED, State.CONFIRMED})


class Output(Protocol):
    """What the proxy needs from the transport adapter."""

    def send(self, flow: Flow, data: bytes) -> bool: ...

    def send_to(self, target: Target, data: bytes) -> bool: ...

    def flow_for(self, target: Target) -> Flow | None: ...

    def is_alive(self, flow: Flow) -> bool: ...


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    host: str  # written into Via and Record-Route
    ports: dict[str, int]  # transport -> our port
    upstream: tuple[Target, ...] = ()  # where calls to non-local destinations go
    local_hosts: tuple[str, ...] = ()  # other names/addresses that mean "us"
    user_agent: str = "spitguard"
    max_transactions: int = 200_000  # per side; see sip.max_transactions


@dataclass(slots=True)
class Stats:
    requests: int = 0
    responses: int = 0
    malformed: int = 0
    registrations: int = 0
    auth_challenges: int = 0
    forwarded: int = 0
    stray_responses: int = 0
    refused_full: int = 0
    not_relayed: int = 0


@dataclass(slots=True, eq=False)
class _Branch:
    ctx: _Context
    tx: ClientTransaction
    target: Flow | Target
    provisional: bool = False
    final: Response | None = None
    cancel_wanted: bool = False
    cancelled: bool = False
    cancelled_at: float | None = None
    cancel_key: object = None  # key of our CANCEL's client transaction, once sent


@dataclass(slots=True, eq=False)
class _Context:
    """One proxied request: its server transaction and the branches it forked into."""

    stx: ServerTransaction
    flow: Flow
    request: Request
    branches: list[_Branch] = field(default_factory=list)
    final_sent: bool = False
    best: Response | None = None
    timer_c: float | None = None


BindingsChanged = Callable[[list[Binding], list[Binding]], None]
AuthResult = Callable[[Flow, bool], None]  # (flow, credentials were right)
TrustedCheck = Callable[[str], bool]  # source address -> is a configured trunk/peer


class Proxy:
    def __init__(
        self,
        config: ProxyConfig,
        *,
        directory: Directory,
        location: Location,
        registrar: Registrar,
        auth: Authenticator,
        tokens: FlowTokens,
        output: Output,
        wall_clock: Callable[[], float],
        clock: Callable[[], float],
        on_bindings_changed: BindingsChanged | None = None,
        on_auth: AuthResult | None = None,
        trusted: TrustedCheck | None = None,
        tag_secret: bytes | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.location = location
        self.registrar = registrar
        self.auth = auth
        self.tokens = tokens
        self.out = output
        self.wall = wall_clock
        self.clock = clock
        self.on_bindings_changed = on_bindings_changed
        self.on_auth = on_auth
        self._trusted_check = trusted
        self.table = TransactionTable(
            max_server=config.max_transactions, max_client=config.max_transactions
        )
        self.stats = Stats()
        self._contexts: dict[object, _Context] = {}  # server tx key -> context
        self._branches: dict[object, _Branch] = {}  # client tx key -> branch
        self._flows: dict[object, Flow | Target] = {}  # tx key -> where it sends
        self._cancels: dict[object, _Branch] = {}  # CANCEL client tx key -> its branch
        self._own: dict[object, Callable[[Response | None], None]] = {}  # our own requests
        # Contexts with a Timer C or a CANCELled branch, for `housekeeping`: walking every
        # context (tens of thousands, lingering 32 s after their calls) each second cost
        # more than all the work it found.
        self._watched: dict[object, _Context] = {}
        self._tag_secret = tag_secret or secrets.token_bytes(16)
        self._us_hosts = {config.host.lower(), *(h.lower() for h in config.local_hosts)}
        self._us_ports = set(config.ports.values())

    # --- entry points -------------------------------------------------------------------
    def receive(self, data: bytes, flow: Flow) -> None:
        """One datagram or stream frame from the transport (after the guard)."""
        try:
            msg = parse(data)
        except SipParseError:
            self.stats.malformed += 1  # silence for garbage: no reply, just a count
            return
        try:
            if isinstance(msg, Request):
                self.stats.requests += 1
                self.handle_request(msg, flow)
            else:
                self.stats.responses += 1
                self.handle_response(msg, flow)
        except SipParseError:
            # A header the routing needed was unusable (missing Via, bad Route ...).
            self.stats.malformed += 1

    def next_deadline(self) -> float | None:
        """When the adapter must call `on_timer` (transaction timers)."""
        return self.table.next_deadline()

    def on_timer(self) -> None:
        now = self.clock()
        for tx, events in self.table.on_timer(now):
            if isinstance(tx, ServerTransaction | ClientTransaction):
                self._events(tx, events)

    def housekeeping(self) -> None:
        """Coarse timers, called about once a second: Timer C (ringing too long)."""
        now = self.clock()
        for key, ctx in list(self._watched.items()):
            if self._contexts.get(key) is not ctx:
                del self._watched[key]  # over
                continue
            if ctx.timer_c is None and not any(
                b.final is None and b.cancelled_at is not None for b in ctx.branches
            ):
                del self._watched[key]  # answered, and no CANCEL waits for its reply
                continue
            for b in ctx.branches:
                if (
                    b.final is None
                    and b.cancelled_at is not None
                    and now - b.cancelled_at >= CANCEL_GRACE
                ):
                    self._give_up(b)
            if ctx.timer_c is not None and ctx.timer_c <= now:
                ctx.timer_c = None
                self._cancel_branches(ctx)
                for b in ctx.branches:
                    if b.final is None and not b.provisional:
                        b.final = self._reply(ctx.request, 408)
                self._maybe_final(ctx)

    # --- requests -----------------------------------------------------------------------
    def handle_request(self, req: Request, flow: Flow) -> None:
        """A request that passed the guard. Never raises: a header the routing needed that
        turns out unusable means silence, like any malformed input."""
        try:
            self._handle_request(req, flow)
        except SipParseError:
            self.stats.malformed += 1

    def _handle_request(self, req: Request, flow: Flow) -> None:
        now = self.clock()
        if req.method == "ACK":
            stx = self.table.match_request(req)
            if stx is not None:
                self._events(stx, stx.on_request(req, now))
                return
            self._forward_in_dialog(req, flow, stateless=True)
            return
        if req.method == "CANCEL":
            self._on_cancel(req, flow, now)
            return
        stx = self.table.match_request(req)
        if stx is not None:
            self._events(stx, stx.on_request(req, now))  # retransmission
            return
        if req.defects and any(_is_hard_defect(d) for d in req.defects):
            return  # no Call-ID, two To headers ...: malformed for routing, silently dropped
        _mark_received(req, flow)
        if self.table.server_full():
            self.stats.refused_full += 1
            self.out.send(flow, self._reply(req, 503).to_bytes())
            return
        stx = new_server_transaction(req, reliable=flow.reliable)
        self.table.add(stx)
        self._flows[stx.key] = flow
        self._events(stx, stx.start(now))

    def _route_safely(self, stx: ServerTransaction, req: Request, flow: Flow) -> None:
        try:
            self._route(stx, req, flow)
        except SipParseError:
            # A lazily parsed header (Authorization, Proxy-Require ...) was garbage. Drop
            # the request and its transaction, or such packets would fill the table.
            self.stats.malformed += 1
            if self._contexts.get(stx.key) is None or not self._contexts[stx.key].branches:
                self.table.remove(stx.key)
                self._forget(stx)

    def _route(self, stx: ServerTransaction, req: Request, flow: Flow) -> None:
        """The transaction user: decide what to do with a new request."""
        mf = req.max_forwards
        if mf is not None and mf <= 0:
            self._respond(stx, req, 483)
            return
        unsupported = req.proxy_require
        if unsupported and req.method not in ("ACK", "CANCEL"):
            # RFC 3261 §16.3 step 5: the edge supports no proxy extension.
            self._respond(stx, req, 420, fields=[("Unsupported", ", ".join(unsupported))])
            return
        if req.method == "REGISTER":
            self._register(stx, req, flow)
            return
        if req.to.tag is not None:
            self._forward_in_dialog(req, flow, stx=stx)
            return
        routes = req.routes
        if routes and self._is_us(routes[0].uri):
            self._strip_our_routes(req)
        ruri = req.uri
        if not isinstance(ruri, SipUri):
            self._respond(stx, req, 416)
            return
        if req.method == "OPTIONS" and ruri.user is None and self._is_us(ruri):
            self._respond(stx, req, 200)  # a keep-alive ping to the edge itself
            return
        domain = self._local_domain(req, ruri)
        trusted = self._is_trusted(flow)
        from_uri = req.from_.uri
        from_local = isinstance(from_uri, SipUri) and self.directory.is_local_domain(from_uri.host)
        foreign_routes = bool(req.routes)
        needs_auth = not trusted and (from_local or domain is None or foreign_routes)
        authenticated = False
        if needs_auth:
            if not self._authorize(stx, req, flow):
                return
            authenticated = True
        if foreign_routes and not trusted:
            # A phone may not steer the edge with a preloaded route: ignore it, so calls
            # still go only to local phones or the configured upstream.
            req.remove("route")
        if domain is not None:
            aor = f"sip:{ruri.user_unescaped}@{domain}"
            if (
                authenticated
                and self.config.upstream
                and self.directory.line(aor) is None
                and not req.routes
            ):
                # A phone dialling "5551234@its-own-domain": not a line here, so a number
                # for the trunk. Strangers never get this far (they get 480 below).
                self._to_upstream(stx, req, flow)
                return
            if not req.routes:
                self._to_local(stx, req, flow, aor)
                return
        if not self.config.upstream and not req.routes:
            self._respond(stx, req, 403, "Not Relaying")
            return
        self._to_upstream(stx, req, flow)

    def _authorize(self, stx: ServerTransaction, req: Request, flow: Flow) -> bool:
        now = self.wall()
        from_uri = req.from_.uri
        realm = from_uri.host.lower() if isinstance(from_uri, SipUri) else self.config.host
        outcome = self.auth.check(req, proxy=True, realm=realm, now=now, binding=flow.remote_host)
        line = outcome.line
        if self.on_auth is not None and (line is not None or outcome.failed):
            self.on_auth(flow, line is not None)
        if line is None:
            self.stats.auth_challenges += 1
            challenge = self.auth.challenge(
                proxy=True, realm=realm, now=now, binding=flow.remote_host, stale=outcome.stale
            )
            self._respond(stx, req, 407, fields=challenge)
            return False
        if not isinstance(from_uri, SipUri) or line.aor != from_uri.aor:
            self._respond(stx, req, 403, "Forbidden")  # right password, someone else's From
            return False
        req.remove("proxy-authorization")  # our credentials end here
        return True

    def _register(self, stx: ServerTransaction, req: Request, flow: Flow) -> None:
        result: RegisterResult = self.registrar.handle(req, flow, self.wall())
        self.stats.registrations += 1
        if self.on_auth is not None and (result.authenticated or result.auth_failed):
            self.on_auth(flow, result.authenticated)
        if result.response.status == 401:
            self.stats.auth_challenges += 1
        if (result.added or result.removed) and self.on_bindings_changed is not None:
            self.on_bindings_changed(result.added, result.removed)
        self._events(stx, stx.send_response(result.response, self.clock()))

    def _to_local(self, stx: ServerTransaction, req: Request, flow: Flow, aor: str) -> None:
        bindings = self.location.lookup(aor, self.wall())
        # The same 480 whether the user is unknown or just offline: no enumeration.
        bindings = [b for b in bindings if self._binding_reachable(b)]
        if not bindings:
            self._respond(stx, req, 480)
            return
        ctx = self._context(stx, req, flow)
        for b in bindings:
            target: Flow | Target = b.flow
            fwd = self._copy_for_branch(req, b.contact)
            for p in reversed(b.path):
                fwd.add("route", p, first=True)
            self._start_branch(ctx, fwd, target, inbound=flow)

    def _to_upstream(self, stx: ServerTransaction, req: Request, flow: Flow) -> None:
        ctx = self._context(stx, req, flow)
        fwd = self._copy_for_branch(req, req.uri)
        routes = fwd.routes
        if routes and isinstance(routes[0].uri, SipUri):
            r = routes[0].uri
            target: Flow | Target = Target(r.transport or "udp", r.host, r.port or 5060)
        else:
            target = self.config.upstream[0]
        self._start_branch(ctx, fwd, target, inbound=flow)

    def _context(self, stx: ServerTransaction, req: Request, flow: Flow) -> _Context:
        ctx = _Context(stx, flow, req)
        self._contexts[stx.key] = ctx
        if req.method == "INVITE":
            self._respond(stx, req, 100)
            ctx.timer_c = self.clock() + TIMER_C
            self._watched[stx.key] = ctx
        return ctx

    def _copy_for_branch(self, req: Request, ruri: object) -> Request:
        fwd = req.copy()
        if isinstance(ruri, SipUri):
            fwd.uri = ruri
        mf = req.max_forwards
        fwd.set("Max-Forwards", str((70 if mf is None else mf) - 1))
        return fwd

    def _start_branch(
        self,
        ctx: _Context,
        fwd: Request,
        target: Flow | Target,
        *,
        inbound: Flow,
        record_route: bool = True,
    ) -> None:
        out_transport = target.transport
        if record_route and fwd.method in DIALOG_METHODS:
            # Two entries, one per side, each naming the flow toward its side: whichever way
            # an in-dialog request comes, the last of our Routes it carries says where next.
            fwd.add("record-route", self._rr(inbound, inbound.transport), first=True)
            fwd.add("record-route", self._rr(target, out_transport), first=True)
        branch_id = "z9hG4bK" + secrets.token_hex(10)
        port = self.config.ports.get(out_transport) or self.config.ports.get("udp", 5060)
        fwd.push_via(
            Via("SIP/2.0", out_transport.upper(), self.config.host, port, {"branch": branch_id})
        )
        tx = new_client_transaction(fwd, reliable=out_transport != "udp")
        if not self.table.add(tx):
            self.stats.refused_full += 1
            branch = _Branch(ctx, tx, target, final=self._reply(ctx.request, 503))
            ctx.branches.append(branch)
            self._maybe_final(ctx)
            return
        branch = _Branch(ctx, tx, target)
        ctx.branches.append(branch)
        self._branches[tx.key] = branch
        self._flows[tx.key] = target
        self.stats.forwarded += 1
        self._events(tx, tx.start(self.clock()))

    def _rr(self, where: Flow | Target, transport: str) -> str:
        token = self.tokens.encode(where)
        port = self.config.ports.get(transport) or self.config.ports.get("udp", 5060)
        tparam = "" if transport == "udp" else f";transport={transport}"
        return f"<sip:{token}@{self.config.host}:{port}{tparam};lr>"

    # --- in-dialog ----------------------------------------------------------------------
    def _forward_in_dialog(
        self,
        req: Request,
        flow: Flow,
        *,
        stx: ServerTransaction | None = None,
        stateless: bool = False,
    ) -> None:
        destination = self._strip_our_routes(req)
        if destination is None:
            routes = req.routes
            if routes and isinstance(routes[0].uri, SipUri) and self._is_trusted(flow):
                r = routes[0].uri
                destination = Target(r.transport or "udp", r.host, r.port or 5060)
        if destination is None:
            # Not through our Record-Route: we never relay on someone's word, and we say
            # nothing (a forged in-dialog request is a probe like any other).
            self.stats.not_relayed += 1
            if stx is not None:
                self.table.remove(stx.key)  # no answer will ever come from this transaction
                self._forget(stx)
            return
        fwd = self._copy_for_branch(req, None)
        if stateless or stx is None:
            transport = destination.transport
            port = self.config.ports.get(transport) or self.config.ports.get("udp", 5060)
            branch_id = (
                "z9hG4bK"
                + hashlib.sha256((req.via.branch or "").encode() + self._tag_secret).hexdigest()[
                    :20
                ]
            )
            fwd.push_via(
                Via("SIP/2.0", transport.upper(), self.config.host, port, {"branch": branch_id})
            )
            self._send(destination, fwd.to_bytes())
            return
        ctx = _Context(stx, flow, req)
        self._contexts[stx.key] = ctx
        self._start_branch(ctx, fwd, destination, inbound=flow, record_route=False)

    def _strip_our_routes(self, req: Request) -> Flow | Target | None:
        """Pop the Route entries that name us; the last one's token is the next hop."""
        destination: Flow | Target | None = None
        routes = req.routes
        popped = 0
        for r in routes:
            if not self._is_us(r.uri):
                break
            popped += 1
            user = r.uri.user if isinstance(r.uri, SipUri) else None
            decoded = self.tokens.decode(user) if user else None
            if decoded is not None:
                destination = decoded
        if popped:
            rest = [str(r) for r in routes[popped:]]
            req.remove("route")
            for value in rest:
                req.add("route", value)
        return destination

    # --- CANCEL -------------------------------------------------------------------------
    def _on_cancel(self, req: Request, flow: Flow, now: float) -> None:
        stx = self.table.match_request(req)
        if stx is not None:
            self._events(stx, stx.on_request(req, now))
            return
        cstx = new_server_transaction(req, reliable=flow.reliable)
        if not self.table.add(cstx):
            return
        self._flows[cstx.key] = flow
        self._events(cstx, cstx.start(now), deliver=False)
        target = self.table.match_cancel(req)
        ctx = self._contexts.get(target.key) if target is not None else None
        if target is None or ctx is None:
            self._respond(cstx, req, 481)
            return
        self._respond(cstx, req, 200)
        if ctx.final_sent:
            return
        self._cancel_branches(ctx)
        if not ctx.branches:
            self._send_final(ctx, self._reply(ctx.request, 487))

    def _cancel_branches(self, ctx: _Context, keep: _Branch | None = None) -> None:
        for b in ctx.branches:
            if b is keep or b.final is not None or b.cancelled:
                continue
            if b.provisional:
                self._send_cancel(b)
            else:
                b.cancel_wanted = True  # RFC 3261 §9.1: only after a provisional response

    def _give_up(self, b: _Branch) -> None:
        """RFC 3261 §9.1: no final response to a CANCELled INVITE within 64*T1: count the
        branch as 408 and drop it, or the caller would wait (and state leak) forever."""
        b.final = self._reply(b.ctx.request, 408)
        self.table.remove(b.tx.key)
        self._forget(b.tx)
        self._maybe_final(b.ctx)

    def _send_cancel(self, b: _Branch) -> None:
        b.cancelled = True
        b.cancelled_at = self.clock()
        self._watched[b.ctx.stx.key] = b.ctx
        cancel = build_cancel(b.tx.request)
        tx = new_client_transaction(cancel, reliable=b.target.transport != "udp")
        if self.table.add(tx):
            self._flows[tx.key] = b.target
            self._cancels[tx.key] = b
            b.cancel_key = tx.key
            self._events(tx, tx.start(self.clock()), deliver=False)

    # --- responses ----------------------------------------------------------------------
    def handle_response(self, resp: Response, flow: Flow) -> None:
        tx = self.table.match_response(resp)
        if tx is None:
            self.stats.stray_responses += 1  # includes replies to our keep-alive OPTIONS
            return
        self._events(tx, tx.on_response(resp, self.clock()))

    def _branch_response(self, b: _Branch, resp: Response) -> None:
        ctx = b.ctx
        try:
            resp.pop_via()
        except SipParseError:
            return
        if not resp.vias:
            return  # it was addressed to us (e.g. a reply to our own CANCEL)
        status = resp.status
        if status < 200:
            b.provisional = True
            if b.cancel_wanted and not b.cancelled:
                self._send_cancel(b)
            if status > 100 and not ctx.final_sent:
                if ctx.timer_c is not None:
                    ctx.timer_c = self.clock() + TIMER_C  # RFC 3261 §16.7 step 2
                self._send_response(ctx, resp)
            return
        b.final = resp
        if status < 300:
            # Every 2xx goes upstream (RFC 3261 §16.7 step 5); the other branches stop.
            ctx.final_sent = True
            ctx.timer_c = None
            self._send_response(ctx, resp)
            if ctx.request.method == "INVITE":
                self._cancel_branches(ctx, keep=b)
            return
        if status >= 600 and ctx.request.method == "INVITE":
            self._cancel_branches(ctx, keep=b)
        self._maybe_final(ctx)

    def _maybe_final(self, ctx: _Context) -> None:
        if ctx.final_sent or any(b.final is None for b in ctx.branches):
            return
        best = _best_response([b.final for b in ctx.branches if b.final is not None])
        if best is None:
            best = self._reply(ctx.request, 408)
        self._send_final(ctx, best)

    def _send_final(self, ctx: _Context, resp: Response) -> None:
        ctx.final_sent = True
        ctx.timer_c = None
        self._send_response(ctx, resp)

    def _send_response(self, ctx: _Context, resp: Response) -> None:
        self._events(ctx.stx, ctx.stx.send_response(resp, self.clock()))

    # --- transaction events -------------------------------------------------------------
    def _events(
        self,
        tx: ServerTransaction | ClientTransaction,
        events: list[TxEvent],
        *,
        deliver: bool = True,
    ) -> None:
        key = tx.key
        for ev in events:
            if isinstance(ev, Send):
                where = self._flows.get(key)
                if where is not None:
                    self._send(where, ev.message.to_bytes())
            elif isinstance(ev, Deliver):
                if not deliver:
                    continue
                msg = ev.message
                if isinstance(tx, ServerTransaction) and isinstance(msg, Request):
                    if msg.method == "ACK":
                        flow = self._flows.get(key)
                        if isinstance(flow, Flow):
                            self._forward_in_dialog(msg, flow, stateless=True)
                    else:
                        flow = self._flows.get(key)
                        if isinstance(flow, Flow):
                            self._route_safely(tx, msg, flow)
                elif isinstance(tx, ClientTransaction) and isinstance(msg, Response):
                    branch = self._branches.get(key)
                    if branch is not None:
                        self._branch_response(branch, msg)
                    elif key in self._own and msg.status >= 200:
                        self._own.pop(key)(msg)
            elif isinstance(ev, Timeout | TransportError):
                branch = self._branches.get(key)
                if branch is not None and branch.final is None:
                    branch.final = self._reply(branch.ctx.request, 408)
                    self._maybe_final(branch.ctx)
                cancelled = self._cancels.get(key)
                if cancelled is not None and cancelled.final is None:
                    self._give_up(cancelled)
                own = self._own.pop(key, None)
                if own is not None:
                    own(None)
            elif isinstance(ev, Terminated):
                self._forget(tx)
        self.table.update(tx)
        if tx.terminated:
            self._forget(tx)
        elif tx.state in LINGERING:
            # Lingering (up to 32 s over UDP) only to absorb or answer retransmissions:
            # the messages it and its context hold need no parsed values any more.
            tx.request.drop_parsed()
            if isinstance(tx, ServerTransaction) and tx.last_response is not None:
                tx.last_response.drop_parsed()

    def _forget(self, tx: ServerTransaction | ClientTransaction) -> None:
        key = tx.key
        self._flows.pop(key, None)
        branch = self._branches.pop(key, None)
        cancelled = self._cancels.pop(key, None)
        own = self._own.pop(key, None)
        if own is not None and tx.terminated:
            own(None)
        ctx = self._contexts.get(key)
        if ctx is not None and ctx.stx is tx:
            del self._contexts[key]
            self._release(ctx)
        for b in (branch, cancelled):
            if b is not None:
                self._release(b.ctx)

    def _release(self, ctx: _Context) -> None:
        """Break the context <-> branch reference cycle once nothing can reach the
        context any more (its server transaction and every branch's client and CANCEL
        transactions are gone), so reference counting frees the whole call at once.
        Left to the cyclic GC, finished calls pile up in the oldest generation and cost
        long full collections under load."""
        if self._contexts.get(ctx.stx.key) is ctx:
            return
        for b in ctx.branches:
            if self._branches.get(b.tx.key) is b or (
                b.cancel_key is not None and self._cancels.get(b.cancel_key) is b
            ):
                return
        ctx.branches.clear()

    def _send(self, where: Flow | Target, data: bytes) -> None:
        if isinstance(where, Flow):
            self.out.send(where, data)
        else:
            self.out.send_to(where, data)

    def _respond(
        self,
        stx: ServerTransaction,
        req: Request,
        status: int,
        reason: str | None = None,
        *,
        fields: Sequence[tuple[str, str]] = (),
    ) -> None:
        resp = self._reply(req, status, reason, fields)
        self._events(stx, stx.send_response(resp, self.clock()))

    def _reply(
        self,
        req: Request,
        status: int,
        reason: str | None = None,
        fields: Sequence[tuple[str, str]] = (),
    ) -> Response:
        extra = [*fields, ("Server", self.config.user_agent)] if status != 100 else list(fields)
        return make_response(req, status, reason, to_tag=self.to_tag(req), fields=extra)

    def to_tag(self, req: Request) -> str:
        return response_tag(req, self._tag_secret)

    # --- helpers ------------------------------------------------------------------------
    def _is_us(self, uri: object) -> bool:
        if not isinstance(uri, SipUri):
            return False
        if uri.host.lower() not in self._us_hosts:
            return False
        return uri.port is None or uri.port in self._us_ports

    def _is_trusted(self, flow: Flow) -> bool:
        check = self._trusted_check
        return check is not None and check(flow.remote_host)

    def _local_domain(self, req: Request, ruri: SipUri) -> str | None:
        """The local domain an initial request is for, or None when it leaves the edge."""
        host = ruri.host.lower()
        if self.directory.is_local_domain(host):
            return host
        if self._is_us(ruri):
            # Dialled as user@edge-address: take the domain of the local party.
            for uri in (req.to.uri, req.from_.uri):
                if isinstance(uri, SipUri) and self.directory.is_local_domain(uri.host):
                    return uri.host.lower()
        return None

    def _binding_reachable(self, b: Binding) -> bool:
        # A TCP/TLS binding is only reachable while its connection lives (RFC 5626).
        return self.out.is_alive(b.flow)

    # --- requests the edge itself originates ----------------------------------------------
    def send_check_sync(self, b: Binding, done: Callable[[str], None]) -> None:
        """Push a re-sync to a registered phone: NOTIFY `Event: check-sync` through its own
        flow, answering the phone's digest challenge (Polycom requestValidation `digest`)
        with its line's credentials. `done` gets "ok", "ok-challenged" (it challenged and
        took our answer), "rejected:<code>", "timeout" or "no-credentials"."""
        line = self.directory.line(b.aor)
        host = self.config.host
        call_id = secrets.token_hex(12)
        tag = secrets.token_hex(6)

        def notify(cseq: int, auth: tuple[str, str] | None) -> Request:
            transport = b.flow.transport
            port = self.config.ports.get(transport) or self.config.ports.get("udp", 5060)
            fields = [
                (
                    "Via",
                    f"SIP/2.0/{transport.upper()} {host}:{port};branch=z9hG4bK"
                    + secrets.token_hex(10),
                ),
                ("Max-Forwards", "70"),
                ("From", f"<sip:provisioning@{host}>;tag={tag}"),
                ("To", f"<{b.aor}>"),
                ("Call-ID", call_id),
                ("CSeq", f"{cseq} NOTIFY"),
                ("Contact", f"<sip:provisioning@{host}:{port}>"),
                ("Event", "check-sync"),
                ("Subscription-State", "terminated"),
                ("User-Agent", self.config.user_agent),
            ]
            for p in reversed(b.path):
                fields.insert(1, ("Route", p))
            if auth is not None:
                fields.append(auth)
            return Request("NOTIFY", b.contact, fields)

        def start(req: Request, handler: Callable[[Response | None], None]) -> None:
            tx = new_client_transaction(req, reliable=b.flow.reliable)
            if not self.table.add(tx):
                done("busy")
                return
            self._flows[tx.key] = b.flow
            self._own[tx.key] = handler
            self._events(tx, tx.start(self.clock()))

        def second(resp: Response | None) -> None:
            if resp is None:
                done("timeout")
            else:
                done("ok-challenged" if resp.status < 300 else f"rejected:{resp.status}")

        def first(resp: Response | None) -> None:
            if resp is None:
                done("timeout")
                return
            if resp.status < 300:
                done("ok")
                return
            if resp.status not in (401, 407) or line is None:
                done(f"rejected:{resp.status}" if line is not None else "no-credentials")
                return
            challenges = resp.www_authenticate if resp.status == 401 else resp.proxy_authenticate
            challenge = select_challenge(challenges)
            if challenge is None:
                done(f"rejected:{resp.status}")
                return
            creds = DigestClient(line.auth_user, line.password).authorize(
                challenge, method="NOTIFY", uri=str(b.contact)
            )
            name = "Authorization" if resp.status == 401 else "Proxy-Authorization"
            start(notify(2, (name, format_credentials(creds))), second)

        start(notify(1, None), first)

    # --- keep-alives --------------------------------------------------------------------
    def keepalive(self, *, udp_method: str, streams: bool = True) -> int:
        """Ping every live binding's flow so NAT bindings stay open; returns pings sent."""
        sent = 0
        now = self.wall()
        for b in list(self.location):
            if b.expires_at <= now:
                continue
            if b.flow.transport == "udp":
                data = b"\r\n\r\n" if udp_method == "crlf" else self._options_ping(b).to_bytes()
                sent += self.out.send(b.flow, data)
            elif streams:
                sent += self.out.send(b.flow, b"\r\n\r\n")
        return sent

    def _options_ping(self, b: Binding) -> Request:
        branch = "z9hG4bK" + secrets.token_hex(8)
        port = self.config.ports.get("udp", 5060)
        host = self.config.host
        return Request(
            "OPTIONS",
            b.contact,
            [
                ("Via", f"SIP/2.0/UDP {host}:{port};branch={branch}"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:keepalive@{host}>;tag={secrets.token_hex(6)}"),
                ("To", f"<{b.contact}>"),
                ("Call-ID", secrets.token_hex(12)),
                ("CSeq", "1 OPTIONS"),
                ("User-Agent", self.config.user_agent),
            ],
        )


def _is_hard_defect(defect: str) -> bool:
    """Defects that make a request unroutable. RFC 2543 branches and a missing
    Max-Forwards are tolerated: old phones send them (RFC 3261 §16.3 passes them)."""
    return defect.startswith("multiple:") or (
        defect.startswith("missing:") and defect != "missing:max-forwards"
    )


def _mark_received(req: Request, flow: Flow) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note in the top Via where the request really came
    from, so responses (ours and forwarded ones) go back through the phone's NAT."""
    via = req.via
    if via.wants_rport:
        params = dict(via.params)
        params["received"] = flow.remote_host
        params["rport"] = str(flow.remote_port)
    elif via.host != flow.remote_host:
        params = dict(via.params)
        params["received"] = flow.remote_host
    else:
        return
    req.pop_via()
    # The constructor, not NamedTuple._replace, which is several times slower.
    req.push_via(Via(via.protocol, via.transport, via.host, via.port, params))


def response_tag(req: Request, secret: bytes) -> str:
    """A To tag stable for one request (so retransmitted answers match), unguessable."""
    seed = f"{req.call_id}|{req.from_.tag}|{req.cseq.number}".encode()
    return hashlib.sha256(seed + secret).hexdigest()[:16]


def _best_response(finals: list[Response]) -> Response | None:
    """RFC 3261 §16.7 step 6: 6xx first, then the lowest class; 503 turns into 500."""
    if not finals:
        return None
    six = [r for r in finals if r.status >= 600]
    if six:
        return six[0]

    def rank(r: Response) -> tuple[int, int]:
        # Prefer 401/407 over other 4xx so the caller can authenticate; 408 last.
        cls = r.status // 100
        pref = 0 if r.status in (401, 407) else (2 if r.status == 408 else 1)
        return (cls, pref)

    best = min(finals, key=rank)
    if best.status == 503:
        best.status, best.reason = 500, "Server Internal Error"
    return best
