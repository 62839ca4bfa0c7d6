"""Wires the parts into one asyncio process: store, directory, transports, proxy, timers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import hashlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__
from .audit import AuditOptions, AuditService
from .config import ConfigError, Settings
from .demo import ensure_demo, ensure_demo_admin
from .demo_world import (
    CALL_EVERY,
    DEMO_PHONES,
    SCAN_EVERY,
    TRUNK_IP,
    DemoWorld,
    ensure_demo_devices,
)
from .firewall import NftBans
from .guard.bans import Ban
from .guard.build import build_guard
from .guard.core import REJECT, Guard
from .guard.trusted import TrustedSources
from .metrics import serve_metrics
from .provision.inventory import edge_from_settings
from .provision.runtime import ProvisionServer
from .provision.service import Action
from .proxy.auth import Authenticator
from .proxy.core import Proxy, ProxyConfig, response_tag
from .proxy.directory import Directory
from .proxy.location import Binding, Location
from .proxy.nat import NatClassifier, NatInfo
from .proxy.registrar import Registrar, RegistrarPolicy
from .sip.errors import SipParseError
from .sip.message import Limits, Request, Response, make_response, parse
from .sip.uri import SipUri, parse_uri
from .store.crypto import load_or_create_key
from .store.db import Store, open_store
from .store.repos import BindingRecord, ResyncInfo
from .transport.flow import Flow, FlowTokens, Target
from .transport.layer import TransportLayer
from .transport.tls import client_context, ensure_self_signed, server_context
from .web import WebContext, WebServer, create_app
from .web.provision_tls import ProvisionTlsServer, client_cert_context

log = logging.getLogger(__name__)

DIRECTORY_POLL = 1.0  # seconds between checks of the store's inventory revision
HOUSEKEEPING = 1.0  # Timer C, binding expiry
# Cyclic GC thresholds while serving (CPython's defaults are 700, 10, 10). A call leaves
# ~60 container objects alive for the 32 s its transactions linger, and none of them is
# cyclic garbage (the proxy breaks its one cycle), so collections only cost time: a full
# one walks every live call (over a second at 1,000 calls/s) and would stall the socket.
# Young collections every 20,000 net allocations; a full one only after 100 of the middle
# generation, i.e. ~20 million net allocations (never in steady state, where calls ending
# free as much as new calls allocate). Long-lived cyclic garbage from elsewhere (closed
# connections) is still collected then.
GC_THRESHOLDS = (20_000, 10, 100)


def derive_secret(key: bytes, purpose: str) -> bytes:
    """A per-purpose secret from the installation key (digest nonces, flow tokens, tags)."""
    return hashlib.sha256(b"spitguard|" + purpose.encode() + b"|" + key).digest()


@dataclass
class Listening:
    transport: str
    host: str
    port: int


class Edge:
    """The running edge. `start()` binds and loads; `stop()` shuts down cleanly."""

    def __init__(self, settings: Settings, *, demo: bool = False) -> None:
        self.settings = settings
        self.demo = demo
        self.demo_lines: list[tuple[str, str]] = []
        self.demo_world: DemoWorld | None = None
        self.demo_admin: tuple[str, str] | None = None
        self.store: Store | None = None
        self.directory = Directory()
        self.location = Location()
        self.transport: TransportLayer | None = None
        self.proxy: Proxy | None = None
        self.guard: Guard | None = None
        self.trusted = TrustedSources({})
        self._bans_revision = 0
        self.listening: list[Listening] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._dirty: dict[tuple[str, str], Binding | None] = {}
        self._flush = asyncio.Event()
        self._stopping = asyncio.Event()
        self._ban_dirty: dict[str, Ban | None] = {}
        self.events_written = 0
        self.metrics_server: asyncio.Server | None = None
        self.web: WebServer | None = None
        self.nft: NftBans | None = None
        self.kernel_drops = 0
        self.provision: ProvisionServer | None = None
        self.provision_tls: ProvisionTlsServer | None = None
        self._resyncs: set[asyncio.Task[None]] = set()
        self.audits: AuditService | None = None

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.settings
        self.store = await open_store(s)
        key = load_or_create_key(s)
        if self.demo:
            self.demo_lines = await ensure_demo(self.store)
            await ensure_demo_devices(self.store)
            self.demo_admin = await ensure_demo_admin(self.store)
        await self.reload_directory(force=True)

        tls_server = None
        if any(listen.transport == "tls" for listen in s.sip.listen):
            host = s.sip.effective_advertised_host
            ensure_self_signed(s.tls_cert_file, s.tls_key_file, host)
            tls_server = server_context(s.tls_cert_file, s.tls_key_file)
        self.transport = TransportLayer(
            self._receive,
            limits=Limits(max_message_size=s.sip.max_message_size),
            tls_server=tls_server,
            tls_client=client_context(verify=False),
            udp_buffer_size=s.sip.udp_buffer_size,
        )
        ports: dict[str, int] = {}
        hosts: list[str] = []
        for listen in s.sip.listen:
            host, port = await self.transport.listen(listen.transport, listen.host, listen.port)
            self.listening.append(Listening(listen.transport, host, port))
            ports.setdefault(listen.transport, port)
            hosts.append(host)

        upstream: list[Target] = []
        for uri in s.upstream.target_uris:
            transport = uri.transport or "udp"
            default = 5061 if transport == "tls" else 5060
            upstream.append(Target(transport, uri.host, uri.port or default))
        config = ProxyConfig(
            host=s.sip.effective_advertised_host,
            ports=ports,
            upstream=tuple(upstream),
            local_hosts=tuple(hosts),
            user_agent=s.sip.user_agent,
            max_transactions=s.sip.max_transactions,
        )
        upstream_sources = list(s.upstream.trusted_sources)
        if self.demo:
            upstream_sources.append(f"{TRUNK_IP}/32")  # the demo's trunk calls the phones
        self.trusted = TrustedSources(
            {"upstream": upstream_sources, "peers": s.guard.peers},
            nameservers=s.guard.nameservers,
            timeout=s.guard.dns_timeout,
        )
        await self.trusted.refresh_all()
        self.guard = build_guard(
            s,
            trusted=self.trusted.contains,
            location=self.location,
            directory=self.directory,
            on_ban=self._banned,
        )
        tag_secret = derive_secret(key, "tag")
        auth = Authenticator(
            self.directory,
            derive_secret(key, "digest"),
            nonce_ttl=s.registrar.nonce_ttl,
            algorithms=tuple(s.registrar.digest_algorithms),
        )
        self.proxy = Proxy(
            config,
            directory=self.directory,
            location=self.location,
            registrar=Registrar(
                self.directory,
                self.location,
                auth,
                NatClassifier(),
                RegistrarPolicy(
                    min_expires=s.registrar.min_expires,
                    max_expires=s.registrar.max_expires,
                    default_expires=s.registrar.default_expires,
                ),
                to_tag=functools.partial(response_tag, secret=tag_secret),
            ),
            auth=auth,
            tokens=FlowTokens(derive_secret(key, "flow-token")),
            output=self.transport,
            wall_clock=time.time,
            clock=asyncio.get_running_loop().time,
            on_bindings_changed=self._bindings_changed,
            on_auth=self._auth_result,
            trusted=lambda ip: self.trusted.contains(ip) is not None,
            tag_secret=tag_secret,
        )
        await self._load_bindings()
        await self._load_bans()
        await self._start_firewall()
        self._spawn(self.trusted.run(self._stopping))
        self._spawn(self._events_loop())
        self._spawn(self._directory_loop())
        self._spawn(self._writer_loop())
        self._spawn(self._housekeeping_loop())
        self._spawn(self._keepalive_loop())
        if s.metrics.enabled:
            self.metrics_server = await serve_metrics(
                s.metrics.host, s.metrics.port, self.metrics_snapshot
            )
        self.provision = ProvisionServer(
            self.store,
            edge_from_settings(s),
            _GuardHooks(self),
            secret=derive_secret(key, "provision-digest"),
            settings=s.provision,
        )
        await self.provision.start()
        self._spawn(self._resync_loop())
        if s.provision.tls_port is not None:
            # The edge's certificate (generated at first start unless configured).
            ensure_self_signed(s.tls_cert_file, s.tls_key_file, s.sip.effective_advertised_host)
            self.provision_tls = ProvisionTlsServer(
                self.provision,
                s.web.host,
                s.provision.tls_port,
                client_cert_context(s.tls_cert_file, s.tls_key_file, s.provision.tls_client_ca),
            )
            await self.provision_tls.start()
        if s.web.enabled:
            self.web = WebServer(create_app(self.web_context()), s.web.host, s.web.port)
            await self.web.start()
            if self.demo:
                self._start_demo_world()

    def _start_demo_world(self) -> None:
        assert self.web is not None
        udp = next((x for x in self.listening if x.transport == "udp"), None)
        if udp is None or self.store is None:
            log.warning("the demo phones need a UDP listener; none configured")
            return
        web_host = _url_host(self.settings.web.host)
        self.demo_world = DemoWorld(
            self.store,
            sip=(udp.host, udp.port),
            web_base=f"http://{web_host}:{self.web.port}",
        )
        self.demo_world.start()

    def web_context(self) -> WebContext:
        assert self.store is not None
        if self.audits is None:
            # Audits started through the API or the portal: registered phones only.
            a = self.settings.audit
            self.audits = AuditService(
                self.store, AuditOptions(source=a.source), max_targets=a.max_targets
            )
        return WebContext(
            settings=self.settings,
            store=self.store,
            provision=self.provision,
            resync=self.resync,
            audits=self.audits,
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self.demo_world is not None:
            await self.demo_world.stop()
        if self.web is not None:
            await self.web.stop()
        if self.provision_tls is not None:
            await self.provision_tls.stop()
        if self.audits is not None:
            await self.audits.close()
        if self.provision is not None:
            await self.provision.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for task in [*self._tasks, *self._resyncs]:
            task.cancel()
        await asyncio.gather(*self._resyncs, return_exceptions=True)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            await self.transport.close()
        if self.nft is not None:
            await self.nft.close()
        await self._write_dirty()
        await self._write_guard_state()
        if self.store is not None:
            await self.store.close()

    def _spawn(self, coro: object) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro))  # type: ignore[arg-type]

    # --- packets and timers ---------------------------------------------------------------
    def _receive(self, data: bytes, flow: Flow) -> None:
        """transport -> parse -> guard -> proxy (ARCHITECTURE.md, "How a packet flows")."""
        proxy = self.proxy
        guard = self.guard
        if proxy is None or guard is None:
            return
        now = time.time()
        if guard.drop_if_banned(flow, data, now):
            return
        try:
            msg = parse(data)
        except SipParseError as exc:
            guard.malformed(flow, data, exc.reason, now)
            return
        verdict = guard.decide(msg, flow, data, now)
        if verdict.passes:
            if isinstance(msg, Request):
                proxy.handle_request(msg, flow)
            else:
                proxy.handle_response(msg, flow)
            self._arm_timer()
        elif verdict.action == REJECT and isinstance(msg, Request) and msg.method != "ACK":
            code = verdict.code or 403
            self.transport_send(flow, make_response(msg, code, to_tag=proxy.to_tag(msg)))

    def transport_send(self, flow: Flow, msg: Response) -> None:
        if self.transport is not None:
            self.transport.send(flow, msg.to_bytes())

    def _auth_result(self, flow: Flow, ok: bool) -> None:
        if self.guard is not None:
            self.guard.note_auth(flow, ok, time.time())

    # --- push re-sync -----------------------------------------------------------------------
    async def resync(self, macs: Sequence[str], *, timeout: float | None = None) -> dict[str, str]:
        """Send check-sync to each device's registered phone through its own flow; the
        outcome per MAC: "ok", "ok-challenged", "rejected:<code>", "timeout",
        "not-registered", "unknown-device" (or "no-credentials", "busy"). Waits for the
        answers at most `timeout` seconds (at most `provision.resync_timeout`)."""
        proxy, provision = self.proxy, self.provision
        assert proxy is not None and provision is not None
        # The phone fetches at once: the boot server must already serve what it should get.
        await provision.refresh(force=True)
        loop = asyncio.get_running_loop()
        now = time.time()
        outcomes: dict[str, str] = {}
        waiting: dict[str, asyncio.Future[str]] = {}
        for mac in dict.fromkeys(macs):
            entry = provision.catalog.get(mac)
            if entry is None:
                outcomes[mac] = "unknown-device"
                continue
            binding = next(
                (b for line in entry.device.lines for b in self.location.lookup(line.aor, now)),
                None,
            )
            if binding is None:
                outcomes[mac] = "not-registered"
                continue
            future: asyncio.Future[str] = loop.create_future()

            def done(outcome: str, future: asyncio.Future[str] = future) -> None:
                if not future.done():
                    future.set_result(outcome)

            proxy.send_check_sync(binding, done)
            waiting[mac] = future
        self._arm_timer()
        if waiting:
            limit = self.settings.provision.resync_timeout
            await asyncio.wait(
                waiting.values(), timeout=limit if timeout is None else min(timeout, limit)
            )
        for mac, future in waiting.items():
            outcomes[mac] = future.result() if future.done() else "timeout"
        return {mac: outcomes[mac] for mac in dict.fromkeys(macs)}

    async def _resync_loop(self) -> None:
        """Carry out re-syncs queued by the CLI or API in another process."""
        store = self.store
        assert store is not None
        while True:
            await asyncio.sleep(self.settings.provision.resync_poll_interval)
            try:
                queued = await store.resyncs.take_queued()
            except Exception:
                log.exception("reading queued re-syncs failed; will retry")
                continue
            if queued:
                # Its own task: a phone that never answers must not hold up the next ones.
                task = asyncio.get_running_loop().create_task(self._carry_out(queued))
                self._resyncs.add(task)
                task.add_done_callback(self._resyncs.discard)

    async def _carry_out(self, queued: Sequence[ResyncInfo]) -> None:
        store = self.store
        assert store is not None
        try:
            outcomes = await self.resync([r.mac for r in queued])
        except Exception:
            log.exception("re-sync failed")
            outcomes = {}
        for request in queued:
            await store.resyncs.finish(request.id, outcomes.get(request.mac, "failed"))

    # --- guard state: bans and events -------------------------------------------------------
    def _banned(self, ban: Ban) -> None:
        log.info(
            "banned %s for %.0f s (%s, level %d)",
            ban.source,
            ban.until - ban.created_at,
            ban.reason,
            ban.level,
        )
        self._ban_dirty[ban.source] = ban
        self._offload_ban(ban, time.time())

    # --- kernel offload (nftables) ----------------------------------------------------
    async def _start_firewall(self) -> None:
        fw = self.settings.firewall
        if fw.nftables == "off" or not self.listening:
            return
        nft = NftBans(
            fw.table,
            ports=[(x.transport, x.port) for x in self.listening],
            nft=fw.nft,
            flush_interval=fw.flush_interval,
        )
        if not await nft.setup():
            if fw.nftables == "on":
                raise ConfigError(
                    'firewall.nftables is "on" but nftables could not be set up (see the '
                    'warning above); run as root or with CAP_NET_ADMIN, or set it to "auto"'
                )
            return
        self.nft = nft
        log.info("nftables ban offload active (table inet %s)", fw.table)
        await self._sync_firewall()

    def _offload_ban(self, ban: Ban, now: float) -> None:
        # A phone registered from the banned address keeps its own flow (the guard exempts
        # it); the kernel only sees addresses, so such a ban stays in Python.
        if self.nft is not None and not self.location.has_source_host(ban.source):
            self.nft.ban(ban.source, ban.until - now)

    async def _sync_firewall(self) -> None:
        if self.nft is None or self.guard is None:
            return
        now = time.time()
        await self.nft.sync(
            (
                (b.source, b.until)
                for b in self.guard.bans.active(now)
                if not self.location.has_source_host(b.source)
            ),
            now,
        )

    async def _load_bans(self) -> None:
        assert self.store is not None and self.guard is not None
        now = time.time()
        for b in await self.store.bans.load_active(now):
            self.guard.bans.add(Ban(b.source, b.until, b.level, b.reason, b.created_at, b.manual))
        self._bans_revision = await self.store.get_revision("bans")

    async def _sync_manual_bans(self) -> None:
        """Pick up bans added or lifted with the CLI or API (another process)."""
        assert self.store is not None and self.guard is not None
        revision = await self.store.get_revision("bans")
        if revision == self._bans_revision:
            return
        self._bans_revision = revision
        now = time.time()
        stored = {b.source: b for b in await self.store.bans.load_active(now)}
        bans = self.guard.bans
        for active in list(bans.active(now)):
            if active.source not in stored and active.source not in self._ban_dirty:
                bans.remove(active.source)
                if self.nft is not None:
                    self.nft.unban(active.source)
        for source, b in stored.items():
            current = bans.get(source, now)
            if current is None or current.until != b.until:
                ban = Ban(b.source, b.until, b.level, b.reason, b.created_at, b.manual)
                bans.add(ban)
                self._offload_ban(ban, now)

    async def _write_guard_state(self) -> None:
        store, guard = self.store, self.guard
        if store is None or guard is None:
            return
        if self._ban_dirty:
            batch, self._ban_dirty = self._ban_dirty, {}
            for source, ban in batch.items():
                if ban is None:
                    await store.bans.delete(source)
                else:
                    await store.bans.upsert(ban)
        records = guard.events.take()
        if records:
            await store.events.add_batch(records)
            self.events_written += len(records)

    async def _events_loop(self) -> None:
        s = self.settings.guard
        last_purge = 0.0
        while True:
            await asyncio.sleep(s.events_flush_interval)
            try:
                await self._write_guard_state()
                await self._sync_manual_bans()
                if self.nft is not None:
                    self.kernel_drops = await self.nft.drops()
                now = time.time()
                if now - last_purge > 3600 and self.store is not None:
                    last_purge = now
                    await self.store.events.purge_before(now - s.events_retention_days * 86400)
                    await self.store.bans.purge_expired(now)
            except Exception:
                log.exception("writing guard state failed; will retry")

    def metrics_snapshot(self) -> dict[str, object]:
        guard, proxy, transport = self.guard, self.proxy, self.transport
        now = time.time()
        return {
            "verdicts": dict(guard.stats.verdicts) if guard else {},
            "bans_active": sum(1 for _ in guard.bans.active(now)) if guard else 0,
            "kernel_drops": self.kernel_drops,
            "registrations": len(self.location),
            "transactions": len(proxy.table) if proxy else 0,
            "connections": transport.open_connections if transport else 0,
            "events_pending": len(guard.events) if guard else 0,
            "events_dropped": guard.events.dropped if guard else 0,
            "events_written": self.events_written,
            "malformed": sum(
                n for (a, r), n in guard.stats.verdicts.items() if r.startswith("malformed")
            )
            if guard
            else 0,
            "auth_challenges": proxy.stats.auth_challenges if proxy else 0,
            "forwarded": proxy.stats.forwarded if proxy else 0,
        }

    def _arm_timer(self) -> None:
        proxy = self.proxy
        if proxy is None:
            return
        deadline = proxy.next_deadline()
        if deadline is None or (self._timer_at is not None and self._timer_at <= deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.proxy is not None:
            self.proxy.on_timer()
        self._arm_timer()

    async def _housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            if self.proxy is not None:
                self.proxy.housekeeping()
                self._arm_timer()
            if self.guard is not None:
                self.guard.bans.expire(time.time())
            gone = self.location.expire(time.time())
            if gone:
                self._bindings_changed([], gone)

    async def _keepalive_loop(self) -> None:
        s = self.settings.keepalive
        interval = min(s.udp_interval, s.stream_interval)
        last_stream = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            if self.proxy is None:
                continue
            now = time.monotonic()
            streams = now - last_stream >= s.stream_interval
            if streams:
                last_stream = now
            self.proxy.keepalive(udp_method=s.udp_method, streams=streams)

    # --- directory ------------------------------------------------------------------------
    async def reload_directory(self, *, force: bool = False) -> bool:
        store = self.store
        assert store is not None
        revision = await store.get_revision()
        if not force and revision == self.directory.revision:
            return False
        tenants = await store.tenants.list()
        entries = await store.lines.load_directory()
        self.directory.replace(
            [(d, t.id) for t in tenants for d in t.domains],
            [(e.tenant_id, e.aor, e.auth_user, e.domain, e.password) for e in entries],
            revision,
        )
        log.info("directory loaded: %d lines, revision %d", len(self.directory), revision)
        return True

    async def _directory_loop(self) -> None:
        while True:
            await asyncio.sleep(DIRECTORY_POLL)
            try:
                await self.reload_directory()
            except Exception:  # the store may be busy; the old snapshot keeps working
                log.exception("directory reload failed; keeping the previous one")

    # --- bindings persistence -------------------------------------------------------------
    def _bindings_changed(self, added: list[Binding], removed: list[Binding]) -> None:
        # Coalesced by (aor, contact): a phone re-registering every minute costs one row
        # write per flush, and the pending map never outgrows the number of bindings.
        for b in removed:
            self._dirty[(b.aor, str(b.contact))] = None
        for b in added:
            self._dirty[(b.aor, str(b.contact))] = b
        self._flush.set()

    async def _writer_loop(self) -> None:
        while True:
            await self._flush.wait()
            self._flush.clear()
            try:
                await self._write_dirty()
            except Exception:
                log.exception("persisting bindings failed; will retry")
                await asyncio.sleep(1.0)
                self._flush.set()
            await asyncio.sleep(0.2)  # batch what arrives meanwhile

    async def _write_dirty(self) -> None:
        store = self.store
        if store is None or not self._dirty:
            return
        batch, self._dirty = self._dirty, {}
        try:
            for (aor, contact), b in batch.items():
                if b is None:
                    await store.bindings.delete(aor, contact)
                else:
                    await store.bindings.upsert(_record(b))
        except BaseException:
            for k, v in batch.items():  # keep what was not written for the next try
                self._dirty.setdefault(k, v)
            raise

    async def _load_bindings(self) -> None:
        assert self.store is not None
        now = time.time()
        for rec in await self.store.bindings.load_all():
            if rec.expires_at <= now:
                continue
            try:
                uri = parse_uri(rec.contact)
            except SipParseError:
                continue
            if not isinstance(uri, SipUri):
                continue
            key = (
                f"{rec.instance};reg-id={rec.reg_id}"
                if rec.instance and rec.reg_id is not None
                else str(uri)
            )
            flow = Flow(
                rec.transport,
                rec.local_host,
                rec.local_port,
                rec.remote_host,
                rec.remote_port,
                rec.conn_id,
            )
            self.location.put(
                Binding(
                    aor=rec.aor,
                    key=key,
                    contact=uri,
                    tenant_id=rec.tenant_id,
                    call_id=rec.call_id,
                    cseq=rec.cseq,
                    expires_at=rec.expires_at,
                    flow=flow,
                    received_at=rec.received_at,
                    nat=NatInfo.from_json(rec.nat),
                    instance=rec.instance,
                    reg_id=rec.reg_id,
                    q=rec.q,
                    path=rec.path,
                    user_agent=rec.user_agent,
                )
            )


class _GuardHooks:
    """The guard as the boot server may use it: its ban list (persisted through the edge's
    `on_ban`) and its security events. No request bytes go in: nothing to redact."""

    def __init__(self, edge: Edge) -> None:
        self._edge = edge

    def is_banned(self, source: str, now: float) -> bool:
        guard = self._edge.guard
        return guard is not None and guard.bans.is_banned(source, now)

    def ban(self, source: str, reason: str, now: float) -> None:
        guard = self._edge.guard
        if guard is None:
            return
        ban = guard.bans.ban(source, reason, now)
        if guard.on_ban is not None:
            guard.on_ban(ban)
        guard.stats.count("ban", reason)

    def event(
        self,
        source: str,
        reason: str,
        now: float,
        *,
        action: Action,
        user_agent: str | None,
        target: str | None,
    ) -> None:
        guard = self._edge.guard
        if guard is None:
            return
        if action != "ban":
            guard.stats.count(action, reason)
        guard.events.record(
            source,
            reason,
            now,
            action=action,
            transport="http",
            raw=b"",
            user_agent=user_agent,
            target=target,
        )


def _record(b: Binding) -> BindingRecord:
    return BindingRecord(
        tenant_id=b.tenant_id,
        aor=b.aor,
        contact=str(b.contact),
        call_id=b.call_id,
        cseq=b.cseq,
        expires_at=b.expires_at,
        transport=b.flow.transport,
        local_host=b.flow.local_host,
        local_port=b.flow.local_port,
        remote_host=b.flow.remote_host,
        remote_port=b.flow.remote_port,
        conn_id=b.flow.conn_id,
        received_at=b.received_at,
        instance=b.instance,
        reg_id=b.reg_id,
        q=b.q,
        path=b.path,
        user_agent=b.user_agent,
        nat=b.nat.to_json(),
    )


async def run(
    settings: Settings, *, ready: Callable[[Edge], None] | None = None, demo: bool = False
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly."""
    edge = Edge(settings, demo=demo)
    await edge.start()
    tune_gc()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(edge)
    try:
        await stop.wait()
    finally:
        await edge.stop()


def tune_gc() -> None:
    """After start-up: move everything loaded so far (modules, the store's and the web
    app's machinery, settings) out of the cyclic GC's reach, so a full collection walks
    only the live calls, and collect far less often (see GC_THRESHOLDS)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def banner(edge: Edge) -> str:
    s = edge.settings
    sip = ", ".join(f"{x.transport} {x.host}:{x.port}" for x in edge.listening)
    text = (
        f"spitguard {__version__} ready\n"
        f"  SIP edge:  {sip}\n"
        f"  data:      {s.data_dir}/ ({s.effective_database_url.split(':', 1)[0]})\n"
        f"  lines:     {len(edge.directory)} loaded, {len(edge.location)} bindings restored\n"
    )
    if edge.web is not None:
        text += f"  portal:    http://{_url_host(s.web.host)}:{edge.web.port}/\n"
        if edge.demo_admin is not None:
            user, password = edge.demo_admin
            text += f"  portal login: {user} / {password}  (demo operator)\n"
    if edge.provision_tls is not None:
        host = _url_host(s.web.host)
        text += f"  boot TLS:  https://{host}:{edge.provision_tls.port}/provision/\n"
    if edge.demo_world is not None:
        text += "  demo phones (booting from the boot server, registering through the edge):\n"
        text += "".join(f"    {p.user}  {p.ip}  {p.where}  ({p.label})\n" for p in DEMO_PHONES)
        text += (
            f"  demo trunk {TRUNK_IP} calls each phone every {CALL_EVERY:.0f} s; scanners "
            f"from 127.0.66.x probe the edge every {SCAN_EVERY:.0f} s (see Events and Bans)\n"
        )
    if edge.demo_lines:
        text += "  demo lines (register a softphone through the edge with these):\n"
        text += "".join(f"    {aor}  password {pw}\n" for aor, pw in edge.demo_lines)
    text += "  stop with Ctrl-C\n"
    return text


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
