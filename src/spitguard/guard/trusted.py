"""Trusted sources: CIDRs and DNS names per group, refreshed on TTL, looked up per packet.

Two layers:

* :class:`TrustedSet` is immutable and precomputed. ``contains(ip)`` runs on every packet,
  so it parses the source with ``socket.inet_pton`` and probes one dict per distinct prefix
  length (longest first); no ``ipaddress`` objects on the hot path.
* :class:`TrustedSources` holds the configured entries, resolves the DNS ones with
  dnspython's asyncio resolver, keeps the last good answer through outages and swaps in a
  freshly built :class:`TrustedSet` after each refresh.

Entry syntax (per group, in configuration order):

* ``10.0.2.0/24``, ``127.0.2.1``, ``2001:db8::/32`` – literal networks and hosts;
* ``pbx.example.com`` – A and AAAA records of the name;
* ``_sip._udp.example.com`` or ``srv:NAME`` – SRV records, then A/AAAA of each target;
* ``naptr:example.com`` – NAPTR, then SRV, then A/AAAA (RFC 3263 §4.1), falling back to
  the ``_sips._tcp``/``_sip._tcp``/``_sip._udp`` SRV names and then A/AAAA when the domain
  has no usable NAPTR records.

When two groups claim the same network, the group configured first wins.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

__all__ = [
    "EntryKind",
    "EntryStatus",
    "IPNetwork",
    "TrustedEntry",
    "TrustedSet",
    "TrustedSources",
    "parse_entry",
]

logger = logging.getLogger(__name__)

IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
EntryKind = Literal["network", "host", "srv", "naptr"]

_Table: TypeAlias = tuple[tuple[int, dict[int, str]], ...]

_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_ACCEPTED_FORMS = (
    "expected an IP address, a CIDR (10.0.0.0/8, 2001:db8::/32), a host name, "
    "_service._proto.name, srv:NAME or naptr:NAME"
)


def _mask(prefixlen: int, bits: int) -> int:
    return ((1 << prefixlen) - 1) << (bits - prefixlen)


def _unmap(network: IPNetwork) -> IPNetwork:
    """Store ``::ffff:a.b.c.d/n`` as IPv4 so it matches sources in either notation."""
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and network.subnet_of(_V4_MAPPED)
    ):
        low = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low, network.prefixlen - 96))
    return network


class TrustedSet:
    """An immutable longest-prefix map from addresses to group names.

    ``networks`` is in priority order: on an exact tie (same network in two groups) the
    earlier pair wins.
    """

    __slots__ = ("_exact", "_networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[tuple[str, IPNetwork]] = ()) -> None:
        pairs = tuple((group, _unmap(net)) for group, net in networks)
        exact: dict[str, str] = {}
        by_len: dict[tuple[int, int], dict[int, str]] = {}
        for group, net in pairs:
            table = by_len.setdefault((net.version, net.prefixlen), {})
            table.setdefault(int(net.network_address), group)
            if net.prefixlen == net.max_prefixlen:
                exact.setdefault(str(net.network_address), group)
        self._networks = pairs
        # Canonical host strings skip parsing entirely; a host entry is always the
        # longest possible match, so a hit here is final.
        self._exact = exact
        self._v4 = self._tables(by_len, 4, 32)
        self._v6 = self._tables(by_len, 6, 128)

    @staticmethod
    def _tables(by_len: dict[tuple[int, int], dict[int, str]], version: int, bits: int) -> _Table:
        lengths = sorted((plen for ver, plen in by_len if ver == version), reverse=True)
        return tuple((_mask(plen, bits), by_len[(version, plen)]) for plen in lengths)

    @classmethod
    def from_groups(cls, groups: Mapping[str, Iterable[str | IPNetwork]]) -> TrustedSet:
        """Build from ``{group: [cidr, ...]}``; strings are parsed strictly."""
        pairs: list[tuple[str, IPNetwork]] = []
        for group, items in groups.items():
            for item in items:
                if isinstance(item, str):
                    entry = parse_entry(group, item)
                    if entry.network is None:
                        raise ValueError(
                            f"trusted-source entry {item!r} in group {group!r}: "
                            "a TrustedSet takes only IP addresses and CIDRs"
                        )
                    pairs.append((group, entry.network))
                else:
                    pairs.append((group, item))
        return cls(pairs)

    @property
    def networks(self) -> tuple[tuple[str, IPNetwork], ...]:
        """``(group, network)`` pairs in priority order (for rendering firewall sets)."""
        return self._networks

    @property
    def groups(self) -> frozenset[str]:
        return frozenset(group for group, _ in self._networks)

    def __len__(self) -> int:
        return len(self._networks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TrustedSet):
            return NotImplemented
        return self._networks == other._networks

    def __hash__(self) -> int:
        return hash(self._networks)

    def __repr__(self) -> str:
        return f"TrustedSet({len(self._networks)} networks, groups={sorted(self.groups)})"

    def contains(self, ip: str) -> str | None:
        """The group trusting source address ``ip`` (longest prefix wins), or None.

        Accepts IPv4, IPv6, IPv4-mapped IPv6 (dual-stack sockets) and scoped IPv6
        (``fe80::1%eth0``). Anything unparsable is simply not trusted.
        """
        group = self._exact.get(ip)
        if group is not None:
            return group
        try:
            if ":" in ip:
                if "%" in ip:
                    ip = ip.partition("%")[0]
                value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip))
                if value >> 32 == 0xFFFF:
                    value &= 0xFFFFFFFF
                    tables = self._v4
                else:
                    tables = self._v6
            else:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, ip))
                tables = self._v4
        except (OSError, ValueError):
            return None
        for mask, table in tables:
            group = table.get(value & mask)
            if group is not None:
                return group
        return None


@dataclass(frozen=True)
class TrustedEntry:
    """One configured entry: either a literal ``network`` or a DNS ``name`` to resolve."""

    group: str
    text: str
    kind: EntryKind
    network: IPNetwork | None = None
    name: dns.name.Name | None = None


def _entry_error(group: str, text: str, reason: str) -> ValueError:
    return ValueError(f"trusted-source entry {text!r} in group {group!r}: {reason}")


def _parse_name(group: str, text: str, raw: str) -> dns.name.Name:
    host = raw.strip().rstrip(".")
    if not host:
        raise _entry_error(group, text, f"empty DNS name; {_ACCEPTED_FORMS}")
    labels = host.split(".")
    for label in labels:
        if not 1 <= len(label) <= 63 or not all(
            c.isascii() and (c.isalnum() or c in "-_") for c in label
        ):
            raise _entry_error(group, text, f"{host!r} is not a valid DNS name; {_ACCEPTED_FORMS}")
    if labels[-1].isdigit():
        # "10.0.0.300" is a mistyped address, not a host name.
        raise _entry_error(group, text, f"not a valid IP address; {_ACCEPTED_FORMS}")
    try:
        return dns.name.from_text(host)
    except dns.exception.DNSException as exc:
        raise _entry_error(group, text, f"{host!r} is not a valid DNS name ({exc})") from None


def parse_entry(group: str, text: str) -> TrustedEntry:
    """Parse one configured entry; raises ``ValueError`` naming the entry when malformed."""
    if not isinstance(text, str):
        raise ValueError(f"trusted-source entry {text!r} in group {group!r}: must be a string")
    stripped = text.strip()
    if not stripped:
        raise _entry_error(group, text, f"empty entry; {_ACCEPTED_FORMS}")
    prefix, sep, rest = stripped.partition(":")
    kind = prefix.lower()
    if sep and kind in ("srv", "naptr"):
        name = _parse_name(group, text, rest)
        return TrustedEntry(group, text, "srv" if kind == "srv" else "naptr", name=name)
    if ":" in stripped or "/" in stripped or stripped.replace(".", "").isdigit():
        try:
            network = ipaddress.ip_network(stripped, strict=True)
        except ValueError as exc:
            raise _entry_error(group, text, f"{exc}; {_ACCEPTED_FORMS}") from None
        return TrustedEntry(group, text, "network", network=network)
    name = _parse_name(group, text, stripped)
    implied_srv = name.labels[0].startswith(b"_")
    return TrustedEntry(group, text, "srv" if implied_srv else "host", name=name)


@dataclass(frozen=True)
class EntryStatus:
    """What the portal/API shows for one entry. Times are on the injected clock."""

    group: str
    entry: str
    kind: EntryKind
    name: str | None
    addresses: tuple[str, ...]
    resolved: bool
    expires_at: float | None
    last_success: float | None
    last_error: str | None
    failures: int
    consecutive_failures: int


@dataclass
class _EntryState:
    entry: TrustedEntry
    addresses: tuple[IPAddress, ...] = ()
    resolved: bool = False
    expires_at: float = -math.inf
    last_success: float | None = None
    last_error: str | None = None
    failures: int = 0
    consecutive_failures: int = 0


class _ResolveError(Exception):
    """A resolution that must not replace the last good addresses."""


@dataclass
class _Found:
    addresses: set[IPAddress] = field(default_factory=set)
    ttl: float = math.inf

    def saw(self, ttl: int) -> None:
        self.ttl = min(self.ttl, ttl)


_SRV_FALLBACK = ("_sips._tcp", "_sip._tcp", "_sip._udp")


class TrustedSources:
    """The live, refreshable trusted-source container.

    ``groups`` maps group name → entries; group order is priority order. DNS entries are
    resolved by :meth:`refresh_due` / :meth:`refresh_all` (or the :meth:`run` loop); an
    entry that has never resolved contributes nothing. ``on_update`` is called with each
    new :class:`TrustedSet` after it is swapped in (e.g. to update firewall sets).
    """

    def __init__(
        self,
        groups: Mapping[str, Sequence[str]],
        *,
        nameservers: Sequence[tuple[str, int]] | None = None,
        timeout: float = 2.0,
        min_ttl: float = 30.0,
        max_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        on_update: Callable[[TrustedSet], None] | None = None,
    ) -> None:
        if not 0 < min_ttl <= max_ttl:
            raise ValueError(f"need 0 < min_ttl <= max_ttl, got {min_ttl} and {max_ttl}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if nameservers is not None:
            for host, port in nameservers:
                try:
                    ipaddress.ip_address(host)
                except ValueError:
                    raise ValueError(f"nameserver {host!r} must be an IP address") from None
                if not 0 < port < 65536:
                    raise ValueError(f"nameserver port {port} for {host} is out of range")
        self._nameservers = None if nameservers is None else tuple(nameservers)
        self._timeout = timeout
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._clock = clock
        self._on_update = on_update
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._states: list[_EntryState] = []
        self._snapshot = TrustedSet()
        self.set_groups(groups)

    # -- configuration ---------------------------------------------------------------

    def set_groups(self, groups: Mapping[str, Sequence[str]]) -> None:
        """Replace the configuration; unchanged DNS entries keep their state.

        Validates everything before changing anything, so a bad reload leaves the
        current configuration in place.
        """
        entries: list[TrustedEntry] = []
        seen: set[tuple[str, str]] = set()
        for group, items in groups.items():
            if not isinstance(group, str) or not group.strip():
                raise ValueError(f"trusted-source group name {group!r} must be a non-empty string")
            if isinstance(items, str):
                raise ValueError(f"trusted-source group {group!r} must list entries, not a string")
            for item in items:
                entry = parse_entry(group, item)
                key = (group, item.strip())
                if key not in seen:
                    seen.add(key)
                    entries.append(entry)
        old = {(s.entry.group, s.entry.text.strip()): s for s in self._states}
        self._states = [old.get((e.group, e.text.strip())) or _EntryState(e) for e in entries]
        self._rebuild()
        self._wakeup.set()

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> TrustedSet:
        """The current set; never mutated, replaced wholesale after each refresh."""
        return self._snapshot

    def contains(self, ip: str) -> str | None:
        return self._snapshot.contains(ip)

    def next_due(self) -> float | None:
        """Earliest time a DNS entry needs refreshing, or None without DNS entries."""
        due = [s.expires_at for s in self._states if s.entry.name is not None]
        return min(due) if due else None

    def status(self) -> tuple[EntryStatus, ...]:
        result = []
        for s in self._states:
            e = s.entry
            if e.network is not None:
                addresses: tuple[str, ...] = (str(e.network),)
                resolved, expires_at = True, None
            else:
                addresses = tuple(str(a) for a in s.addresses)
                resolved = s.resolved
                expires_at = s.expires_at if math.isfinite(s.expires_at) else None
            result.append(
                EntryStatus(
                    group=e.group,
                    entry=e.text,
                    kind=e.kind,
                    name=None if e.name is None else e.name.to_text(omit_final_dot=True),
                    addresses=addresses,
                    resolved=resolved,
                    expires_at=expires_at,
                    last_success=s.last_success,
                    last_error=s.last_error,
                    failures=s.failures,
                    consecutive_failures=s.consecutive_failures,
                )
            )
        return tuple(result)

    # -- refreshing ------------------------------------------------------------------

    async def refresh_due(self, now: float) -> TrustedSet:
        """Resolve the DNS entries whose TTL has expired at ``now``; return the new set."""
        async with self._lock:
            due = [s for s in self._states if s.entry.name is not None and s.expires_at <= now]
            await self._refresh(due, now)
        return self._snapshot

    async def refresh_all(self) -> TrustedSet:
        """Resolve every DNS entry now, whatever its TTL (startup, manual refresh)."""
        async with self._lock:
            due = [s for s in self._states if s.entry.name is not None]
            await self._refresh(due, self._clock())
        return self._snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh loop: resolve what is due, then sleep until the earliest expiry."""
        while not stop.is_set():
            self._wakeup.clear()
            try:
                await self.refresh_due(self._clock())
            except Exception:
                # A bug here must not end trust refreshing for the life of the process.
                logger.exception("trusted sources: refresh failed unexpectedly")
                for s in self._states:
                    s.expires_at = max(s.expires_at, self._clock() + self._min_ttl)
            due = self.next_due()
            delay = None if due is None else max(due - self._clock(), 0.0)
            waiters = {
                asyncio.ensure_future(stop.wait()),
                asyncio.ensure_future(self._wakeup.wait()),
            }
            try:
                await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    async def _refresh(self, due: list[_EntryState], now: float) -> None:
        if not due:
            return
        outcomes = await asyncio.gather(*(self._resolve_entry(s.entry) for s in due))
        for state, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, _ResolveError):
                self._record_failure(state, str(outcome), now)
            else:
                self._record_success(state, outcome, now)
        self._rebuild()

    def _record_success(self, state: _EntryState, found: _Found, now: float) -> None:
        addresses = tuple(sorted(found.addresses, key=lambda a: (a.version, int(a))))
        label = state.entry.text
        if state.consecutive_failures:
            logger.info("trusted %s: %s resolves again", state.entry.group, label)
        if addresses != state.addresses:
            logger.info(
                "trusted %s: %s now %s",
                state.entry.group,
                label,
                ", ".join(str(a) for a in addresses),
            )
        state.addresses = addresses
        state.resolved = True
        state.last_success = now
        state.last_error = None
        state.consecutive_failures = 0
        state.expires_at = now + min(max(found.ttl, self._min_ttl), self._max_ttl)

    def _record_failure(self, state: _EntryState, error: str, now: float) -> None:
        state.failures += 1
        state.consecutive_failures += 1
        state.last_error = error
        # Retry at the short end of the clamp; the last good addresses stay trusted.
        state.expires_at = now + self._min_ttl
        log = logger.warning if state.consecutive_failures == 1 else logger.debug
        log(
            "trusted %s: %s failed to resolve (%s); keeping %d last good address(es)",
            state.entry.group,
            state.entry.text,
            error,
            len(state.addresses),
        )

    def _rebuild(self) -> None:
        pairs: list[tuple[str, IPNetwork]] = []
        for s in self._states:
            if s.entry.network is not None:
                pairs.append((s.entry.group, s.entry.network))
            else:
                pairs.extend((s.entry.group, ipaddress.ip_network(a)) for a in s.addresses)
        candidate = TrustedSet(pairs)
        if candidate != self._snapshot:
            # One reference assignment: readers see the old set or the new one, never a mix.
            self._snapshot = candidate
            if self._on_update is not None:
                self._on_update(candidate)

    # -- DNS -------------------------------------------------------------------------

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        # Created lazily so a CIDR-only configuration never reads /etc/resolv.conf.
        if self._resolver is None:
            if self._nameservers is None:
                resolver = dns.asyncresolver.Resolver()
            else:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self._nameservers
                ]
            resolver.timeout = self._timeout
            resolver.lifetime = self._timeout
            resolver.cache = None  # TTL bookkeeping is ours; a cache would hide changes
            self._resolver = resolver
        return self._resolver

    async def _resolve_entry(self, entry: TrustedEntry) -> _Found | _ResolveError:
        assert entry.name is not None
        found = _Found()
        try:
            if entry.kind == "host":
                await self._host(entry.name, found, required=True)
            elif entry.kind == "srv":
                await self._srv(entry.name, found, required=True)
            else:
                await self._naptr(entry.name, found)
        except dns.resolver.NXDOMAIN:
            # Only the configured name itself is looked up as required.
            return _ResolveError(
                f"NXDOMAIN: {entry.name.to_text(omit_final_dot=True)} does not exist"
            )
        except dns.exception.Timeout:
            return _ResolveError(f"timeout: no answer within {self._timeout:g} s")
        except dns.resolver.NoNameservers as exc:
            return _ResolveError(f"no usable answer: {exc}")
        except (dns.exception.DNSException, OSError) as exc:
            return _ResolveError(f"{type(exc).__name__}: {exc}")
        if not found.addresses:
            return _ResolveError("no addresses: the name has no A/AAAA records to trust")
        return found

    async def _query(
        self,
        name: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        found: _Found,
        *,
        required: bool,
    ) -> list[object]:
        """Records of one type; empty when the name exists without them.

        NXDOMAIN fails only a ``required`` (configured) name; a missing SRV or NAPTR
        target merely contributes nothing.
        """
        try:
            answer = await self._get_resolver().resolve(
                name, rdtype, raise_on_no_answer=False, search=False
            )
        except dns.resolver.NXDOMAIN:
            if required:
                raise
            return []
        if answer.rrset is None:
            return []
        found.saw(answer.chaining_result.minimum_ttl)
        return list(answer.rrset)

    async def _host(self, name: dns.name.Name, found: _Found, *, required: bool) -> None:
        for records in await _all(
            self._query(name, rdtype, found, required=required)
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        ):
            for rdata in records:
                if isinstance(rdata, A | AAAA):
                    found.addresses.add(ipaddress.ip_address(rdata.address))

    async def _srv(self, name: dns.name.Name, found: _Found, *, required: bool) -> bool:
        """SRV of ``name`` then each target's addresses; True if any target was listed."""
        records = await self._query(name, dns.rdatatype.SRV, found, required=required)
        # A target of "." means "no service here" (RFC 2782).
        targets = {r.target for r in records if isinstance(r, SRV) and r.target != dns.name.root}
        await _all(self._host(t, found, required=False) for t in targets)
        return bool(targets)

    async def _naptr(self, name: dns.name.Name, found: _Found) -> None:
        records = await self._query(name, dns.rdatatype.NAPTR, found, required=True)
        # Every SIP service the domain offers may be where its traffic comes from, so
        # follow all of them rather than only the most preferred.
        usable = [
            r
            for r in records
            if isinstance(r, NAPTR)
            and r.service.upper().startswith((b"SIP+", b"SIPS+"))
            and r.flags.lower() in (b"s", b"a")
        ]
        if usable:
            await _all(
                self._srv(r.replacement, found, required=False)
                if r.flags.lower() == b"s"
                else self._host(r.replacement, found, required=False)
                for r in usable
            )
            return
        # RFC 3263 §4.1: no NAPTR → the well-known SRV names → A/AAAA of the domain.
        srv_names = [dns.name.from_text(p, origin=name) for p in _SRV_FALLBACK]
        listed = await _all(self._srv(n, found, required=False) for n in srv_names)
        if not any(listed):
            await self._host(name, found, required=True)


_T = TypeVar("_T")


async def _all(aws: Iterable[Awaitable[_T]]) -> list[_T]:
    """Await concurrently; let every lookup finish, then raise the first failure."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    values: list[_T] = []
    for result in results:
        if isinstance(result, BaseException):
            raise result
        values.append(result)
    return values
