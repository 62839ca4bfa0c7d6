"""Ban offload into nftables: banned sources are dropped by the kernel, not by Python.

A Python drop loop tops out around 10^5 packets/s; the kernel drops millions. `NftBans`
owns one table (`table inet spitguard` by default) holding two timeout sets, `banned4`
and `banned6`, and an input chain that drops packets from those sets to the edge's own
ports only, counting them in the named counter `banned_drops`. The Python ban list stays
authoritative; this is an accelerator, so every failure degrades to "Python drops it".

Changes are queued and applied in batches, at most one `nft -f -` run per
`flush_interval`, through asyncio subprocesses so the event loop never blocks. Every
address is parsed with `ipaddress` and re-rendered before it reaches a command, and all
other text in the scripts is validated at construction.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["NftBans", "NftResult", "Runner", "parse_address", "run_subprocess"]

log = logging.getLogger(__name__)

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class NftResult:
    returncode: int
    stdout: bytes
    stderr: bytes


# Runs argv (no shell) with optional stdin; raises OSError when the program cannot start.
Runner = Callable[[Sequence[str], bytes | None], Awaitable[NftResult]]

_RUN_TIMEOUT = 10.0  # nft answers in milliseconds; a hang must not wedge the flusher
# The l4 protocol each listening transport arrives on.
_L4 = {"udp": "udp", "tcp": "tcp", "tls": "tcp", "ws": "tcp", "wss": "tcp"}
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
_NETNS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
# nft 1.0.6 rejects large bare "NNNms" values, and kernel timeouts are finite: cap long
# bans (they are re-pushed with their remaining time at the next start anyway).
_MAX_TIMEOUT_MS = 3650 * 86_400_000
_CHUNK = 1024  # elements per statement, keeps single lines reasonable on big syncs


async def run_subprocess(argv: Sequence[str], stdin: bytes | None) -> NftResult:
    """The default runner: an asyncio subprocess, killed if it outlives `_RUN_TIMEOUT`."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), _RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return NftResult(-1, b"", b"timed out")
    return NftResult(proc.returncode if proc.returncode is not None else -1, out, err)


def parse_address(ip: str | Address) -> Address:
    """The address as nft should see it; ValueError for anything that is not one address.

    IPv4-mapped IPv6 (what a dual-stack socket reports for IPv4 peers) becomes IPv4,
    because the kernel matches those packets as IPv4.
    """
    if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
        addr: Address = ip
    elif isinstance(ip, str):
        try:
            addr = ipaddress.ip_address(ip.strip())
        except ValueError:
            raise ValueError(f"not an IP address: {ip!r}") from None
    else:  # ip_address() would accept an int; callers pass text
        raise ValueError(f"not an IP address: {ip!r}")
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id is not None:  # "%zone" is free text; never let it reach nft
            raise ValueError(f"scoped IPv6 address not supported: {ip!r}")
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
    return addr


def _timeout_ms(seconds: float) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"ban duration must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"ban duration must be positive and finite, not {seconds!r}")
    return min(max(1, math.ceil(seconds * 1000)), _MAX_TIMEOUT_MS)


def _fmt_timeout(ms: int) -> str:
    s, rest = divmod(ms, 1000)
    if not rest:
        return f"{s}s"
    return f"{s}s{rest}ms" if s else f"{rest}ms"


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class NftBans:
    """Mirrors the edge's bans into an nftables table it owns.

    Call `setup()` once (False means "no offload, keep dropping in Python"), then
    `sync()` with the active bans, then `ban()`/`unban()` as the guard decides, and
    `close()` at shutdown. `ban()`/`unban()` are synchronous and cheap: they validate,
    queue and return; a background task applies the queue.
    """

    def __init__(
        self,
        table: str = "spitguard",
        *,
        ports: Sequence[tuple[str, int]],
        nft: str = "nft",
        netns: str | None = None,
        runner: Runner = run_subprocess,
        flush_interval: float = 0.2,
    ) -> None:
        if not _NAME.fullmatch(table):
            raise ValueError(f"invalid nftables table name: {table!r}")
        if netns is not None and not _NETNS.fullmatch(netns):
            raise ValueError(f"invalid network namespace name: {netns!r}")
        if not nft:
            raise ValueError("nft program must not be empty")
        self.table = table
        self.ports = self._check_ports(ports)
        self._prefix = (["ip", "netns", "exec", netns] if netns else []) + [nft]
        self._runner = runner
        self._interval = flush_interval
        self._ready = False
        self._failing = False  # a failure was logged; stay quiet until a success
        self._pending: dict[Address, int | None] = {}  # address -> timeout ms, None = unban
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._last_flush = -math.inf

    @staticmethod
    def _check_ports(ports: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
        out: set[tuple[str, int]] = set()
        for transport, port in ports:
            l4 = _L4.get(str(transport).lower())
            if l4 is None:
                raise ValueError(f"unknown transport {transport!r}")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"invalid port {port!r}")
            out.add((l4, port))
        if not out:
            raise ValueError("at least one (transport, port) is needed")
        return sorted(out)

    @property
    def available(self) -> bool:
        """True between a successful `setup()` and `close()`."""
        return self._ready

    # --- lifecycle ------------------------------------------------------------------
    def _ruleset(self) -> str:
        t = self.table
        ports = ", ".join(f"{l4} . {port}" for l4, port in self.ports)
        # "add" then "delete" makes the delete safe when no stale table exists, and the
        # whole file is one transaction: the old table is replaced atomically.
        # Hook: input, after routing, so only traffic for this host's sockets is touched
        # (nothing forwarded). Priority -150 is before the filter priority (0) where host
        # firewalls keep their `ct state established,related accept` rules, so a banned
        # flood costs no further rule evaluation, and before conntrack confirmation
        # (the very last input hook), so dropped packets never occupy conntrack slots.
        return f"""\
add table inet {t}
delete table inet {t}
table inet {t} {{
    counter banned_drops {{
    }}
    set edge_ports {{
        type inet_proto . inet_service
        elements = {{ {ports} }}
    }}
    set banned4 {{
        type ipv4_addr
        flags timeout
    }}
    set banned6 {{
        type ipv6_addr
        flags timeout
    }}
    chain input {{
        type filter hook input priority -150; policy accept;
        meta l4proto . th dport @edge_ports ip saddr @banned4 counter name "banned_drops" drop
        meta l4proto . th dport @edge_ports ip6 saddr @banned6 counter name "banned_drops" drop
    }}
}}
"""

    async def setup(self) -> bool:
        """Create (or replace) the table; False, with one warning, if nft is unusable."""
        try:
            res = await self._run(["-f", "-"], self._ruleset())
        except OSError as exc:
            log.warning("nftables ban offload disabled, bans stay in userspace: %s", exc)
            return False
        if res.returncode != 0:
            log.warning(
                "nftables ban offload disabled, bans stay in userspace: nft exit %d: %s",
                res.returncode,
                _first_line(res.stderr),
            )
            return False
        self._ready = True
        self._failing = False
        return True

    async def close(self) -> None:
        """Drop queued changes and delete the table (the kernel stops dropping)."""
        was_ready, self._ready = self._ready, False
        self._pending.clear()
        if self._task is not None:
            await self._task  # lets an in-flight nft run finish rather than orphan it
        if not was_ready:
            return
        t = self.table
        async with self._lock:
            await self._apply(f"add table inet {t}\ndelete table inet {t}\n", "delete table")

    # --- ban changes ----------------------------------------------------------------
    def ban(self, ip: str | Address, seconds: float) -> None:
        """Queue a ban (replacing any existing one) lasting `seconds` from when it lands."""
        addr = parse_address(ip)
        ms = _timeout_ms(seconds)
        if self._ready:
            self._pending[addr] = ms
            self._kick()

    def unban(self, ip: str | Address) -> None:
        """Queue lifting a ban; lifting one that is absent (or expired) is fine."""
        addr = parse_address(ip)
        if self._ready:
            self._pending[addr] = None
            self._kick()

    async def flush(self) -> bool:
        """Apply everything queued so far now, ignoring the interval (tests, shutdown)."""
        batch, self._pending = self._pending, {}
        async with self._lock:
            return await self._apply_batch(batch)

    async def sync(self, bans: Iterable[tuple[str | Address, float]], now: float) -> bool:
        """Replace the sets' contents with `bans` ((address, until) pairs, epoch seconds
        like `now`) atomically; changes queued before the call are superseded."""
        entries: dict[Address, int] = {}
        for ip, until in bans:
            addr = parse_address(ip)
            remaining = until - now
            if remaining > 0:
                entries[addr] = _timeout_ms(remaining)
        if not self._ready:
            return False
        # Taken before awaiting the lock (FIFO), so later ban()s land after this sync.
        self._pending.clear()
        lines = [f"flush set inet {self.table} banned4", f"flush set inet {self.table} banned6"]
        for name, items in self._by_set(entries).items():
            elems = [f"{addr} timeout {_fmt_timeout(ms)}" for addr, ms in items]
            lines += self._element_lines("add", name, elems)
        async with self._lock:
            if not self._ready:  # closed while waiting
                return False
            return await self._apply("\n".join(lines) + "\n", f"sync of {len(entries)} bans")

    async def drops(self) -> int:
        """Packets the kernel has dropped for being banned (0 if unknown)."""
        if not self._ready:
            return 0
        args = ["-j", "list", "counter", "inet", self.table, "banned_drops"]
        try:
            res = await self._run(args, None)
            if res.returncode == 0:
                for item in json.loads(res.stdout)["nftables"]:
                    if "counter" in item:
                        return int(item["counter"]["packets"])
            self._report(False, "read drop counter", _first_line(res.stderr))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._report(False, "read drop counter", str(exc))
        return 0

    # --- internals ------------------------------------------------------------------
    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flusher())

    async def _flusher(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                delay = self._last_flush + self._interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Grabbed before awaiting the (FIFO) lock so batches apply in queue order.
                batch, self._pending = self._pending, {}
                async with self._lock:
                    self._last_flush = loop.time()
                    await self._apply_batch(batch)
        finally:
            self._task = None

    @staticmethod
    def _by_set(entries: Mapping[Address, _T]) -> dict[str, list[tuple[str, _T]]]:
        out: dict[str, list[tuple[str, _T]]] = {"banned4": [], "banned6": []}
        for addr, value in entries.items():
            out["banned4" if addr.version == 4 else "banned6"].append((str(addr), value))
        return out

    def _element_lines(self, verb: str, name: str, elems: list[str]) -> list[str]:
        return [
            f"{verb} element inet {self.table} {name} {{ {', '.join(chunk)} }}"
            for chunk in _chunks(elems)
        ]

    async def _apply_batch(self, batch: dict[Address, int | None]) -> bool:
        if not batch or not self._ready:
            return True
        lines: list[str] = []
        for name, items in self._by_set(batch).items():
            if not items:
                continue
            addrs = [addr for addr, _ in items]
            # nft 1.0.6 has no "destroy element" and a failed delete aborts the whole
            # transaction, so first make every touched element exist (add never fails on
            # an existing one), then delete them all: absent or expired elements are fine.
            # Bans are then re-added, which also replaces the timeout of an existing ban.
            lines += self._element_lines("add", name, [f"{a} timeout 1s" for a in addrs])
            lines += self._element_lines("delete", name, addrs)
            bans = [f"{a} timeout {_fmt_timeout(ms)}" for a, ms in items if ms is not None]
            lines += self._element_lines("add", name, bans)
        return await self._apply("\n".join(lines) + "\n", f"{len(batch)} ban changes")

    async def _apply(self, script: str, what: str) -> bool:
        try:
            res = await self._run(["-f", "-"], script)
        except OSError as exc:
            return self._report(False, what, str(exc))
        return self._report(res.returncode == 0, what, _first_line(res.stderr))

    def _report(self, ok: bool, what: str, detail: str) -> bool:
        if ok and self._failing:
            log.info("nftables ban offload working again")
            self._failing = False
        elif not ok and not self._failing:
            # Once per failure streak: a broken nft must not flood the log during a flood.
            log.warning("nftables %s failed (userspace drops continue): %s", what, detail)
            self._failing = True
        return ok

    async def _run(self, args: list[str], script: str | None) -> NftResult:
        stdin = script.encode() if script is not None else None
        return await self._runner([*self._prefix, *args], stdin)


def _first_line(data: bytes) -> str:
    text = data.decode(errors="replace").strip()
    return text.splitlines()[0] if text else "(no output)"
