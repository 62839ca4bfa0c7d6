"""A reference phone that behaves like a Polycom, so rendered configurations are checked by
what a phone does with them rather than by what the files say.

Boot (phones.md §1.3): ``<mac>.cfg``, falling back to ``000000000000.cfg`` on 404 (or the
master file named in the provisioning URL when it ends in ``.cfg``); then every
CONFIG_FILES entry, relative to the master file, with the Polycom User-Agent and HTTP
digest when challenged. Parameters merge with "the first file that contains a parameter
wins" (phones.md §1.3, vendor-sourced; see ``config.merge``).

SIP (UDP only): registers every line (digest, refresh ``expires.overlap`` seconds before
expiry on the injected clock), answers calls (100/180/200 + SDP, ACK, BYE), answers
OPTIONS, and re-fetches its configuration on ``NOTIFY Event: check-sync``. Incoming
requests meet ``voIpProt.SIP.requestValidation`` exactly as configured:

* ``source``: the sender's IP address must be one of the registration servers'
  (``reg.x.server.y.address``, ``voIpProt.server.x.address``); the port is not compared
  (the guide says "received from an IP address of a server"). Otherwise: ``400 Bad
  Request`` — the code philipgreco.com reports; OnSIP's "404 Bad Request" is
  self-contradictory, and its reason phrase names 400's (phones.md §1.1, Open question 1).
* ``digest``: a 401 challenge in realm ``voIpProt.SIP.requestValidation.digest.realm``
  (default ``PolycomSPIP``) answered with the credentials of the line the Request-URI
  names (line 1 when none matches); only a correct answer is accepted.
* ``both``/``all``: source first, then digest. Null, empty or an unknown value: no check.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, TypeAlias
from urllib.parse import urljoin, urlsplit

from spitguard.sip.auth import AuthCredentials, format_challenge, format_credentials
from spitguard.sip.digest import (
    DigestClient,
    DigestResult,
    DigestServer,
    compute_ha1,
    select_challenge,
)
from spitguard.sip.errors import SipParseError
from spitguard.sip.message import Request, Response, make_response, parse
from spitguard.sip.transaction import DEFAULT_TIMERS, Timers
from spitguard.sip.uri import SipUri, parse_uri
from spitguard.transport.flow import Flow
from spitguard.transport.layer import TransportLayer

from .clock import Clock, LoopClock
from .config import (
    ConfigError,
    LineSettings,
    PhoneSettings,
    ServerSettings,
    apply,
    merge,
    parse_config,
    parse_master,
    resolve_host,
)
from .http import HttpError, http_get
from .web import WebUI

__all__ = [
    "DEFAULT_USER_AGENT",
    "BootError",
    "Call",
    "FetchRecord",
    "FetchedFile",
    "ReferencePhone",
    "Registration",
    "Rejection",
    "sip_user_agent",
]

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT: Final = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
GENERIC_MASTER: Final = "000000000000.cfg"
ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY"
RETRY_AFTER_FAILURE: Final = 60.0  # seconds on the injected clock before a new REGISTER
MAX_RECORDS: Final = 1000  # calls, rejections and fetches kept
MAX_CACHED_RESPONSES: Final = 512
MEDIA_PORT: Final = 2222  # Polycom's default RTP base port; no media is sent

RegState: TypeAlias = Literal["idle", "registering", "registered", "failed", "unregistered"]


class BootError(RuntimeError):
    """The phone could not get a usable master configuration file."""


@dataclass(frozen=True, slots=True)
class FetchedFile:
    name: str
    url: str
    status: int | None  # None: no HTTP answer (error says why)
    version: str | None = None  # sha256 of the body, like RenderedFile.version
    authenticated: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One provisioning run: every file requested, with its status and version."""

    reason: str  # "boot" or "check-sync"
    at: float  # on the phone's clock
    masters: tuple[FetchedFile, ...]  # master files tried, in order (<mac>.cfg first)
    files: tuple[FetchedFile, ...]  # the CONFIG_FILES entries, in order

    @property
    def versions(self) -> dict[str, str]:
        """File name → sha256 of every file fetched with 200 (masters included)."""
        return {f.name: f.version for f in (*self.masters, *self.files) if f.version}

    @property
    def ok(self) -> bool:
        """A master file was read and every file it lists was fetched and parsed."""
        return (
            bool(self.masters)
            and self.masters[-1].status == 200
            and self.masters[-1].error is None
            and all(f.status == 200 and f.error is None for f in self.files)
        )


@dataclass(slots=True, eq=False)
class Call:
    """One INVITE the phone answered."""

    call_id: str
    caller: str  # the From URI
    source: tuple[str, int]  # who sent the INVITE
    line: int | None  # the line the Request-URI names, if any
    local_tag: str
    remote_tag: str | None
    answered: bool = False
    established: bool = False  # our 200 was ACKed
    ended: bool = False
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request refused by requestValidation."""

    method: str
    source: tuple[str, int]
    status: int | None  # None: dropped (an ACK cannot be answered)
    check: str  # "source" or "digest"


@dataclass(slots=True, eq=False)
class Registration:
    line: int
    state: RegState = "idle"
    target: tuple[str, int] | None = None
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    cseq: int = 0
    expires: int | None = None  # granted by the registrar
    expires_at: float | None = None  # on the phone's clock
    refresh_at: float | None = None
    successes: int = 0  # 2xx answers to REGISTERs with a non-zero expiry
    last_status: int | None = None
    error: str | None = None


def sip_user_agent(http_user_agent: str) -> str:
    """``FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application`` →
    ``PolycomVVX-VVX_450-UA/6.4.3.5018`` (the SIP form, phones.md §1.3)."""
    text = http_user_agent.strip().removeprefix("FileTransport").strip()
    return text.split(" Type/")[0].strip() or text


class ReferencePhone:
    """A Polycom-like phone on ``ip`` (UDP ``sip_port``, 0 = any free port).

    ``hosts`` maps host names to addresses (like /etc/hosts); the phone never uses DNS, so a
    registration server given by a name outside ``hosts`` (and not ``localhost``) is not
    trusted by the ``source`` check. ``web_port``: where to serve the web UI when the
    configuration enables it (``None``: never start it; ``phone.web_ui_enabled`` still
    says whether the configuration asks for it). ``lan_address``: the phone plays one
    behind NAT that believes it has this (private) address.
    """

    def __init__(
        self,
        mac: str,
        *,
        ip: str,
        sip_port: int = 0,
        provisioning_url: str,
        prov_user: str | None = None,
        prov_password: str | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        clock: Clock | None = None,
        web_port: int | None = None,
        hosts: Mapping[str, Sequence[str]] | None = None,
        timers: Timers = DEFAULT_TIMERS,
        http_timeout: float = 5.0,
        lan_address: str | None = None,
    ) -> None:
        self.mac = mac.replace(":", "").replace("-", "").lower()
        if len(self.mac) != 12 or any(c not in "0123456789abcdef" for c in self.mac):
            raise ValueError(f"not a MAC address: {mac!r}")
        self.ip = ip
        self.sip_port = sip_port
        self.provisioning_url = provisioning_url
        self._prov_user = prov_user
        self._prov_password = prov_password
        self.user_agent = user_agent
        self.sip_user_agent = sip_user_agent(user_agent)
        self.clock: Clock = clock or LoopClock()
        self.web_port = web_port
        self.hosts: Mapping[str, Sequence[str]] = dict(hosts or {})
        self.timers = timers
        self.http_timeout = http_timeout
        # Behind NAT a phone only knows its LAN address and puts it in Via and Contact,
        # while its packets reach the edge from `ip` (the NAT's public side).
        self.lan_address = lan_address

        self.params: dict[str, str] = {}
        self.settings: PhoneSettings | None = None
        self.fetches: list[FetchRecord] = []
        self.calls: list[Call] = []
        self.rejections: list[Rejection] = []
        self.registrations: dict[int, Registration] = {}
        self.web_ui: WebUI | None = None

        self._transport: TransportLayer | None = None
        self._trusted: frozenset[str] = frozenset()
        self._digest: DigestServer | None = None
        self._digest_secret = secrets.token_bytes(32)
        self._pending: dict[str, asyncio.Future[Response]] = {}
        self._answered: OrderedDict[tuple[str, int, str, str], bytes] = OrderedDict()
        self._dialogs: dict[tuple[str, str], Call] = {}
        self._loops: dict[int, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: dict[int, DigestClient] = {}
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_again = False
        self._changed = asyncio.Event()
        self._stopped = False

    # --- what tests look at ----------------------------------------------------------
    @property
    def web_ui_enabled(self) -> bool:
        """Whether the configuration leaves the web configuration utility on."""
        return self.settings is not None and self.settings.web_ui_enabled

    @property
    def admin_password_changed(self) -> bool:
        """Whether the configuration replaced the factory admin password."""
        return self.settings is not None and self.settings.admin_password_set

    def verify_admin_password(self, candidate: str) -> bool:
        if self.settings is None:
            return False
        return hmac.compare_digest(
            candidate.encode("utf-8"), self.settings.admin_password.encode("utf-8")
        )

    @property
    def trusted_sources(self) -> frozenset[str]:
        return self._trusted

    @property
    def contact_host(self) -> str:
        host = self.lan_address or self.ip
        return host if ":" not in host else f"[{host}]"

    async def wait_for(
        self, predicate: Callable[[], object], timeout: float = 5.0, what: str = "a condition"
    ) -> None:
        """Wait until ``predicate()`` is true; re-checked whenever the phone's state changes.

        Raises TimeoutError naming ``what`` after ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"phone {self.mac}: timed out after {timeout:g}s for {what}")
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(left, 0.25))

    async def wait_registered(self, line: int = 1, timeout: float = 5.0) -> Registration:
        def done() -> bool:
            reg = self.registrations.get(line)
            if reg is not None and reg.state == "failed":
                raise RuntimeError(f"line {line} failed to register: {reg.error}")
            return reg is not None and reg.state == "registered"

        await self.wait_for(done, timeout, f"line {line} to register")
        return self.registrations[line]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------
    async def boot(self, *, register: bool = True) -> None:
        """Fetch and apply the configuration, open the SIP socket, start registering.

        Raises BootError when no master file can be fetched or read.
        """
        if self._transport is not None:
            raise RuntimeError("phone already booted")
        params = await self._provision("boot")
        transport = TransportLayer(self._on_datagram)
        _, port = await transport.listen("udp", self.ip, self.sip_port)
        self._transport = transport
        self.sip_port = port
        await self._apply(params)
        if register:
            self._start_registrations()

    async def resync(self, reason: str = "check-sync") -> FetchRecord:
        """Fetch the configuration again and apply it (what check-sync triggers)."""
        try:
            params = await self._provision(reason)
        except BootError:
            return self.fetches[-1]
        old = self.settings
        await self._apply(params)
        new = self.settings
        before = None if old is None else (old.lines, old.outbound_proxy)
        after = None if new is None else (new.lines, new.outbound_proxy)
        if before != after and self._loops:  # new lines or servers: register afresh
            await self._stop_registrations(unregister=False)
            self._start_registrations()
        return self.fetches[-1]

    async def stop(self, *, unregister: bool = True) -> None:
        """Unregister (best effort, bounded), then close every socket and task."""
        if self._stopped:
            return
        self._stopped = True
        if self._resync_task is not None:
            self._resync_task.cancel()
        await self._stop_registrations(unregister=unregister)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._resync_task is not None:
            await asyncio.gather(self._resync_task, return_exceptions=True)
        if self.web_ui is not None:
            await self.web_ui.stop()
        if self._transport is not None:
            await self._transport.close()
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self._notify()

    async def __aenter__(self) -> ReferencePhone:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        async def run() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("phone %s: background task failed", self.mac)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- provisioning ----------------------------------------------------------------
    async def _get(self, name: str, url: str) -> tuple[FetchedFile, bytes | None]:
        try:
            resp = await http_get(
                url,
                user_agent=self.user_agent,
                username=self._prov_user,
                password=self._prov_password,
                timeout=self.http_timeout,
            )
        except HttpError as exc:
            return FetchedFile(name, url, None, error=str(exc)), None
        if resp.status != 200:
            return FetchedFile(name, url, resp.status, authenticated=resp.authenticated), None
        version = hashlib.sha256(resp.body).hexdigest()
        return FetchedFile(name, url, 200, version, resp.authenticated), resp.body

    async def _provision(self, reason: str) -> dict[str, str]:
        masters: list[FetchedFile] = []
        files: list[FetchedFile] = []
        try:
            return await self._provision_into(masters, files)
        finally:
            record = FetchRecord(reason, self.clock.now(), tuple(masters), tuple(files))
            self.fetches.append(record)
            del self.fetches[:-MAX_RECORDS]
            self._notify()

    async def _provision_into(
        self, masters: list[FetchedFile], files: list[FetchedFile]
    ) -> dict[str, str]:
        url = self.provisioning_url
        if urlsplit(url).path.lower().endswith(".cfg"):
            candidates = [url]  # phones.md §1.3 step (1): a master file named in the address
        else:
            base = url.rstrip("/") + "/"
            candidates = [f"{base}{self.mac}.cfg", f"{base}{GENERIC_MASTER}"]
        master_url, body = "", None
        for candidate in candidates:
            fetched, body = await self._get(candidate.rsplit("/", 1)[-1], candidate)
            masters.append(fetched)
            if body is not None:
                master_url = candidate
                break
            if fetched.status != 404:  # only "not found" moves on to the generic file
                break
        if body is None:
            raise BootError(f"no master configuration file: {masters[-1]}")
        try:
            names = parse_master(body, self.mac)
        except ConfigError as exc:
            last = masters[-1]
            masters[-1] = FetchedFile(
                last.name, last.url, 200, last.version, last.authenticated, str(exc)
            )
            raise BootError(f"unusable master file {master_url}: {exc}") from exc
        parsed: list[dict[str, str]] = []
        for name in names:
            fetched, body = await self._get(name, urljoin(master_url, name))
            if body is not None:
                try:
                    parsed.append(parse_config(body))
                except ConfigError as exc:
                    fetched = FetchedFile(
                        name, fetched.url, 200, fetched.version, fetched.authenticated, str(exc)
                    )
            files.append(fetched)
        return merge(parsed)

    async def _apply(self, params: dict[str, str]) -> None:
        settings = apply(params)
        self.params = params
        self.settings = settings
        self._trusted = settings.trusted_sources(self.hosts)
        if self._digest is None or self._digest.realm != settings.digest_realm:
            # MD5 only: what a Polycom offers, and what every SIP peer can answer.
            self._digest = DigestServer(
                self._digest_secret, settings.digest_realm, algorithms=("MD5",)
            )
        self._clients = {}
        if self.web_port is not None:
            if settings.web_server_enabled:
                if self.web_ui is None:
                    self.web_ui = WebUI(self.ip, self.web_port, lambda: self.settings)
                await self.web_ui.start()
            elif self.web_ui is not None:
                await self.web_ui.stop()
        self._notify()

    # --- registration ----------------------------------------------------------------
    def _target(self, line: LineSettings) -> ServerSettings | None:
        assert self.settings is not None
        proxy = self.settings.outbound_proxy
        return proxy if proxy is not None else (line.servers[0] if line.servers else None)

    def _start_registrations(self) -> None:
        if self.settings is None or self._stopped:
            return
        for line in self.settings.lines:
            reg = self.registrations.get(line.index)
            if reg is None:
                reg = self.registrations[line.index] = Registration(line.index)
            self._loops[line.index] = self._spawn(self._registration_loop(line, reg))

    async def _stop_registrations(self, *, unregister: bool) -> None:
        loops, self._loops = self._loops, {}
        for task in loops.values():
            task.cancel()
        await asyncio.gather(*loops.values(), return_exceptions=True)
        if not unregister or self.settings is None:
            return
        lines = [
            line
            for line in self.settings.lines
            if (reg := self.registrations.get(line.index)) is not None and reg.state == "registered"
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(self._register_once(line, 0) for line in lines)), 2.0
            )

    async def _registration_loop(self, line: LineSettings, reg: Registration) -> None:
        server = self._target(line)
        while True:
            expires = server.expires if server is not None else 0
            granted = await self._register_once(line, expires)
            if reg.state == "failed" and reg.target is None:
                return  # nothing to register with: the configuration must change first
            if granted is None:
                delay = RETRY_AFTER_FAILURE
            else:
                overlap = server.overlap if server is not None else 60
                delay = granted - overlap if granted > 2 * overlap else granted / 2
            delay = max(delay, 1.0)
            reg.refresh_at = self.clock.now() + delay
            self._notify()
            await self.clock.sleep(delay)

    async def _register_once(self, line: LineSettings, expires: int) -> int | None:
        """One REGISTER transaction (with its digest round); the granted expiry or None."""
        reg = self.registrations.setdefault(line.index, Registration(line.index))
        server = self._target(line)
        error = None
        if server is None:
            error = "no registration server configured"
        elif server.transport != "udp":
            error = f"transport {server.transport} is not supported by the reference phone"
        addresses = resolve_host(server.address, self.hosts) if server is not None else ()
        if error is None and not addresses:
            error = f"cannot resolve {server.address if server else ''!r} without DNS"
        if error is not None or server is None:
            reg.state, reg.error, reg.target = "failed", error, None
            self._notify()
            return None
        reg.target = (addresses[0], server.port)
        reg.state = "registering" if expires else reg.state
        auth: tuple[str, str] | None = None
        for _ in range(3):  # plain, with credentials, once more after a 423 or stale nonce
            reg.cseq += 1
            request = self._register_request(line, reg, expires, auth)
            response = await self._client_transaction(request, reg.target)
            if response is None:
                reg.last_status, reg.error = None, "no answer from the registrar"
                reg.state = "failed" if expires else "unregistered"
                break
            reg.last_status = response.status
            if 200 <= response.status < 300:
                if not expires:
                    reg.state, reg.expires, reg.expires_at = "unregistered", 0, None
                    break
                granted = self._granted(response, expires)
                if granted <= 0:
                    reg.state, reg.error = "failed", "the registrar granted no time"
                    break
                reg.state, reg.error, reg.expires = "registered", None, granted
                reg.expires_at = self.clock.now() + granted
                reg.successes += 1
                self._notify()
                return granted
            if response.status == 423 and (minimum := response.get("Min-Expires")):
                expires = int(minimum) if minimum.isdigit() else expires
                continue
            challenge = select_challenge(response.www_authenticate)
            if response.status != 401 or challenge is None:
                reg.state, reg.error = "failed", f"registrar answered {response.status}"
                break
            if auth is not None and not challenge.stale:
                reg.state, reg.error = "failed", "credentials refused"
                break
            client = self._clients.setdefault(
                line.index, DigestClient(line.auth_user, line.password)
            )
            credentials = client.authorize(challenge, method="REGISTER", uri=str(request.uri))
            auth = ("Authorization", format_credentials(credentials))
        self._notify()
        return None

    def _register_request(
        self, line: LineSettings, reg: Registration, expires: int, auth: tuple[str, str] | None
    ) -> Request:
        uri = parse_uri(f"sip:{line.domain}")
        display = f'"{line.display_name}" ' if line.display_name else ""
        fields = [
            ("Via", self._via()),
            ("Max-Forwards", "70"),
            ("From", f"{display}<{line.aor}>;tag={self._tag(line.index)}"),
            ("To", f"{display}<{line.aor}>"),
            ("Call-ID", reg.call_id),
            ("CSeq", f"{reg.cseq} REGISTER"),
            ("Contact", f'<{self._contact(line)}>;methods="{ALLOW}"'),
            ("User-Agent", self.sip_user_agent),
            ("Allow", ALLOW),
            ("Allow-Events", "check-sync"),
            ("Expires", str(expires)),
        ]
        if auth is not None:
            fields.append(auth)
        return Request("REGISTER", uri, fields)

    def _granted(self, response: Response, asked: int) -> int:
        contacts = response.contacts
        if isinstance(contacts, list):
            for contact in contacts:
                uri = contact.uri
                if (
                    isinstance(uri, SipUri)
                    and uri.port == self.sip_port
                    and uri.host.strip("[]") == (self.lan_address or self.ip)
                    and contact.expires is not None
                ):
                    return contact.expires
        header = response.expires
        return header if header is not None else asked

    def _contact(self, line: LineSettings | None) -> str:
        user = f"{line.user}@" if line is not None else ""
        return f"sip:{user}{self.contact_host}:{self.sip_port}"

    def _via(self) -> str:
        branch = "z9hG4bK" + secrets.token_hex(10)
        return f"SIP/2.0/UDP {self.contact_host}:{self.sip_port};branch={branch};rport"

    def _tag(self, index: int) -> str:
        return hashlib.sha256(f"{self.mac}:{index}".encode()).hexdigest()[:10]

    async def _client_transaction(
        self, request: Request, target: tuple[str, int]
    ) -> Response | None:
        """Send a non-INVITE request with RFC 3261 Timer E retransmissions; the final
        response, or None after Timer F (64*T1)."""
        loop = asyncio.get_running_loop()
        branch = request.via.branch or ""
        future: asyncio.Future[Response] = loop.create_future()
        self._pending[branch] = future
        data = request.to_bytes()
        deadline = loop.time() + self.timers.timeout
        interval = self.timers.t1
        try:
            while True:
                self._send(target, data)
                left = deadline - loop.time()
                if left <= 0:
                    return None
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(interval, left))
                interval = min(interval * 2, self.timers.t2)
        finally:
            self._pending.pop(branch, None)

    # --- the wire --------------------------------------------------------------------
    def _send(self, target: tuple[str, int], data: bytes) -> None:
        if self._transport is None:
            return
        self._transport.send(Flow("udp", self.ip, self.sip_port, target[0], target[1]), data)

    def _on_datagram(self, data: bytes, flow: Flow) -> None:
        try:
            message = parse(data)
        except SipParseError:
            return  # a phone ignores what it cannot parse
        try:
            if isinstance(message, Response):
                branch = message.transaction_branch
                future = self._pending.get(branch or "")
                if future is not None and not future.done() and message.status >= 200:
                    future.set_result(message)
            else:
                self._on_request(message, flow)
        except SipParseError:
            return
        except Exception:
            log.exception("phone %s: failed to handle a message from %s", self.mac, flow)

    def _reply(
        self,
        request: Request,
        flow: Flow,
        status: int,
        *,
        to_tag: str | None = None,
        fields: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        cache: bool = True,
    ) -> None:
        if to_tag is None and status >= 200:
            to_tag = secrets.token_hex(5)  # ignored when the request's To has a tag already
        extra = [*fields, ("User-Agent", self.sip_user_agent)]
        response = make_response(request, status, to_tag=to_tag, fields=extra, body=body)
        data = response.to_bytes()
        self._send(flow.remote, data)
        if cache and status >= 200:
            self._answered[self._key(request)] = data
            while len(self._answered) > MAX_CACHED_RESPONSES:
                self._answered.popitem(last=False)

    @staticmethod
    def _key(request: Request) -> tuple[str, int, str, str]:
        return (request.call_id, request.cseq.number, request.method, request.via.branch or "")

    # --- incoming requests -------------------------------------------------------------
    def _on_request(self, request: Request, flow: Flow) -> None:
        if any(d.startswith("missing:") and d != "missing:max-forwards" for d in request.defects):
            return
        settings = self.settings
        if settings is None or self._stopped:
            return
        method = request.method.upper()
        cached = self._answered.get(self._key(request)) if method != "ACK" else None
        if cached is not None:  # a retransmission: the same answer again
            self._send(flow.remote, cached)
            return
        event = request.event.package if request.event is not None else None
        checks = settings.checks_for(method, event)
        if "source" in checks and flow.remote_host not in self._trusted:
            self._reject(request, flow, 400, "source")
            return
        if "digest" in checks and not self._digest_ok(request, flow, settings):
            return
        handler = {
            "INVITE": self._on_invite,
            "ACK": self._on_ack,
            "BYE": self._on_bye,
            "CANCEL": self._on_cancel,
            "OPTIONS": self._on_options,
            "NOTIFY": self._on_notify,
        }.get(method)
        if handler is None:
            self._reply(request, flow, 405, fields=[("Allow", ALLOW)])
        else:
            handler(request, flow)

    def _reject(self, request: Request, flow: Flow, status: int, check: str) -> None:
        answered = request.method.upper() != "ACK"
        if answered:
            self._reply(request, flow, status, cache=False)
        self.rejections.append(
            Rejection(request.method, flow.remote, status if answered else None, check)
        )
        del self.rejections[:-MAX_RECORDS]
        self._notify()

    def _digest_ok(self, request: Request, flow: Flow, settings: PhoneSettings) -> bool:
        server = self._digest
        assert server is not None
        ruri = request.uri
        line = settings.line_for(ruri.user if isinstance(ruri, SipUri) else None)
        now = max(self.clock.now(), 0.0)

        def ha1(username: str, realm: str, algorithm: str) -> str | None:
            if line is None or not hmac.compare_digest(
                username.encode("utf-8"), line.auth_user.encode("utf-8")
            ):
                return None
            return compute_ha1(algorithm, username, realm, line.password)

        stale = False
        try:
            offered: list[AuthCredentials] = request.authorization
        except SipParseError:
            offered = []  # unreadable credentials are no credentials: challenge again
        for credentials in offered:
            if credentials.realm != server.realm:
                continue
            result = server.verify(
                credentials, method=request.method, ha1=ha1, now=now, binding=flow.remote_host
            )
            if result is DigestResult.OK:
                return True
            stale = stale or result is DigestResult.STALE
        if request.method.upper() == "ACK":
            self._reject(request, flow, 401, "digest")
            return False
        challenges = server.challenge(now, stale=stale, binding=flow.remote_host)
        fields = [("WWW-Authenticate", format_challenge(ch)) for ch in challenges]
        self._reply(request, flow, 401, fields=fields, cache=False)
        self.rejections.append(Rejection(request.method, flow.remote, 401, "digest"))
        del self.rejections[:-MAX_RECORDS]
        self._notify()
        return False

    def _sdp(self) -> bytes:
        family = "IP6" if ":" in self.ip else "IP4"
        session = secrets.randbelow(2**31)
        return (
            "v=0\r\n"
            f"o=Polycom {session} {session} IN {family} {self.ip}\r\n"
            "s=-\r\n"
            f"c=IN {family} {self.ip}\r\n"
            "t=0 0\r\n"
            f"m=audio {MEDIA_PORT} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=sendrecv\r\n"
        ).encode("ascii")

    def _on_invite(self, request: Request, flow: Flow) -> None:
        settings = self.settings
        assert settings is not None
        user = request.uri.user if isinstance(request.uri, SipUri) else None
        line = settings.line_for(user)
        matched = line is not None and line.user == user
        contact = [("Contact", f"<{self._contact(line)}>")]
        sdp = [("Content-Type", "application/sdp")]
        to_tag = request.to.tag
        if to_tag is not None:  # re-INVITE
            call = self._dialogs.get((request.call_id, to_tag))
            if call is None or call.ended:
                self._reply(request, flow, 481)
            else:
                self._reply(request, flow, 200, fields=[*contact, *sdp], body=self._sdp())
            return
        local_tag = secrets.token_hex(5)
        call = Call(
            call_id=request.call_id,
            caller=str(request.from_.uri),
            source=flow.remote,
            line=line.index if line is not None and matched else None,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
        )
        self.calls.append(call)
        del self.calls[:-MAX_RECORDS]
        self._dialogs[(request.call_id, local_tag)] = call
        while len(self._dialogs) > MAX_RECORDS:  # a flood of never-ended calls stays bounded
            del self._dialogs[next(iter(self._dialogs))]
        record_route = [("Record-Route", v) for v in request.get_all("record-route")]
        self._reply(request, flow, 100)
        self._reply(request, flow, 180, to_tag=local_tag, fields=[*record_route, *contact])
        self._reply(
            request,
            flow,
            200,
            to_tag=local_tag,
            fields=[*record_route, *contact, ("Allow", ALLOW), *sdp],
            body=self._sdp(),
        )
        call.answered = True
        self._notify()
        data = self._answered[self._key(request)]
        self._spawn(self._retransmit_2xx(call, flow.remote, data))

    async def _retransmit_2xx(self, call: Call, target: tuple[str, int], data: bytes) -> None:
        """RFC 3261 §13.3.1.4: resend the 2xx until the ACK comes, for 64*T1 at most."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timers.timeout
        interval = self.timers.t1
        while not call.established and not call.ended:
            left = deadline - loop.time()
            if left <= 0:
                call.ended, call.end_reason = True, "no ACK"
                self._notify()
                return
            await asyncio.sleep(min(interval, left))
            if not call.established and not call.ended:
                self._send(target, data)
            interval = min(interval * 2, self.timers.t2)

    def _on_ack(self, request: Request, flow: Flow) -> None:
        tag = request.to.tag
        call = self._dialogs.get((request.call_id, tag)) if tag is not None else None
        if call is not None and not call.established:
            call.established = True
            self._notify()

    def _on_bye(self, request: Request, flow: Flow) -> None:
        tag = request.to.tag
        call = self._dialogs.get((request.call_id, tag)) if tag is not None else None
        if call is None or call.ended:
            self._reply(request, flow, 481)
            return
        self._reply(request, flow, 200)
        call.ended, call.end_reason = True, "BYE"
        self._dialogs.pop((call.call_id, call.local_tag), None)
        self._notify()

    def _on_cancel(self, request: Request, flow: Flow) -> None:
        key = (request.call_id, request.cseq.number, "INVITE", request.via.branch or "")
        # The INVITE was answered at once, so there is nothing left to cancel (RFC 3261 §9.2).
        self._reply(request, flow, 200 if key in self._answered else 481)

    def _on_options(self, request: Request, flow: Flow) -> None:
        fields = [("Allow", ALLOW), ("Accept", "application/sdp"), ("Allow-Events", "check-sync")]
        self._reply(request, flow, 200, fields=fields)

    def _on_notify(self, request: Request, flow: Flow) -> None:
        event = request.event.package if request.event is not None else None
        if event not in ("check-sync", "message-summary"):
            self._reply(request, flow, 489)
            return
        self._reply(request, flow, 200)
        if event == "check-sync":
            self._schedule_resync()

    def _schedule_resync(self) -> None:
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_again = True  # one more run after the current one, not one per NOTIFY
            return

        async def run() -> None:
            while True:
                self._resync_again = False
                try:
                    await self.resync("check-sync")
                except Exception:
                    log.exception("phone %s: re-sync failed", self.mac)
                if not self._resync_again or self._stopped:
                    return

        self._resync_task = asyncio.get_running_loop().create_task(run())
