"""`spitguard bans list|add|remove` and `spitguard events tail|show`: the guard's state.

Bans added or removed here bump the "bans" revision in the store; a running edge polls it
and reloads its ban list, so no restart is needed. Events are read-only here: the edge
writes them, aggregated per (source, reason, minute). Untrusted text (user agents, targets,
sampled SIP traces) is printed with control characters escaped, so a scanner cannot drive
the operator's terminal. Errors follow the inventory commands: one `error:` line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

# The inventory commands' plumbing, so every store command loads settings, reports errors
# and exits the same way.
from .cli_inventory import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandError,
    _config_option,
    _print_json,
    _print_table,
    _report,
    _run,
)

if TYPE_CHECKING:
    from .store import Store
    from .store.repos import BanInfo, EventInfo

    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_BAN = "24h"
MAX_BAN_SECONDS = 3650 * 86_400.0
FOLLOW_INTERVAL = 1.0  # seconds between polls of the store
# A row keeps merging counts while its minute is still being flushed by the edge; rows last
# seen this recently are re-checked for changes on every poll.
FOLLOW_WINDOW = 180.0
FOLLOW_PAGE = 500

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

EVENT_COLUMNS = (
    "ID",
    "TIME",
    "SOURCE",
    "REASON",
    "COUNT",
    "ACTION",
    "METHOD",
    "TARGET",
    "USER AGENT",
)


# --- parsers ------------------------------------------------------------------------------


def add_guard_commands(subparsers: Subparsers) -> None:
    """Register the `bans` and `events` command groups."""
    _add_bans(subparsers)
    _add_events(subparsers)


def _add_bans(subparsers: Subparsers) -> None:
    bans = subparsers.add_parser(
        "bans",
        help="list, add and lift bans of source addresses",
        description="Banned sources are dropped without a reply. A running edge picks up "
        "changes made here within seconds.",
    )
    _config_option(bans)
    actions = bans.add_subparsers(dest="bans_action", metavar="ACTION", required=True)

    lst = actions.add_parser("list", help="list the bans in force")
    lst.add_argument("--all", action="store_true", help="include expired bans not yet purged")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(lst)
    lst.set_defaults(handler=run_bans_list)

    add = actions.add_parser(
        "add",
        help="ban an address",
        description="Ban one IPv4 or IPv6 address. A ban of the same address is replaced.",
    )
    add.add_argument("ip", metavar="IP", help="the address to ban, e.g. 192.0.2.10")
    add.add_argument(
        "--duration",
        default=DEFAULT_BAN,
        metavar="D",
        help=f"how long: SECONDS or a number with s, m, h, d or w, e.g. 30m, 1h30m, 2d "
        f"(default: {DEFAULT_BAN})",
    )
    add.add_argument("--reason", default="manual", metavar="TEXT", help="shown in the lists")
    _config_option(add)
    add.set_defaults(handler=run_bans_add)

    remove = actions.add_parser("remove", help="lift the ban of an address")
    remove.add_argument("ip", metavar="IP", help="the banned address")
    _config_option(remove)
    remove.set_defaults(handler=run_bans_remove)


def _add_events(subparsers: Subparsers) -> None:
    events = subparsers.add_parser(
        "events",
        help="show blocked traffic (security events)",
        description="Each event aggregates the requests of one source failing one check in "
        "one minute, with a sampled SIP trace (credentials redacted).",
    )
    _config_option(events)
    actions = events.add_subparsers(dest="events_action", metavar="ACTION", required=True)

    tail = actions.add_parser(
        "tail",
        help="show the latest events",
        description="Show the latest events, newest last. With --follow, keep printing new "
        "events and events whose count grew, until Ctrl-C.",
    )
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument("--limit", type=int, default=20, metavar="N", help="rows (default: 20)")
    tail.add_argument("--reason", metavar="R", help="only events of this reason")
    tail.add_argument("--source", metavar="IP", help="only events from this address")
    tail.add_argument(
        "--json", action="store_true", help="print a JSON array (with --follow: one per line)"
    )
    _config_option(tail)
    tail.set_defaults(handler=run_events_tail)

    show = actions.add_parser("show", help="show one event with its sampled SIP trace")
    show.add_argument("id", metavar="ID", help="the event id (first column of events tail)")
    _config_option(show)
    show.set_defaults(handler=run_events_show)


# --- bans ---------------------------------------------------------------------------------


def run_bans_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        now = time.time()
        bans = await store.bans.list(now, include_expired=args.all)
        if args.json:
            _print_json([_ban_json(b, now) for b in bans])
        elif not bans:
            print("no bans in force", file=sys.stderr)
        else:
            rows = [
                (
                    b.source,
                    _escape(b.reason),
                    str(b.level),
                    format_duration(b.remaining(now)) if b.until > now else "expired",
                    "yes" if b.manual else "no",
                )
                for b in bans
            ]
            _print_table(("SOURCE", "REASON", "LEVEL", "REMAINING", "MANUAL"), rows)
        return EXIT_OK

    return _run(args, action)


def run_bans_add(args: argparse.Namespace) -> int:
    from .store.repos import normalize_ip

    # Checked before the store is opened: a typo must not create a data directory.
    try:
        source = normalize_ip(args.ip)
        seconds = parse_duration(args.duration)
    except Exception as exc:  # _report: known errors → one line
        return _report(exc, args)

    async def action(store: Store) -> int:
        ban = await store.bans.add_manual(source, duration=seconds, reason=args.reason)
        print(
            f"banned {ban.source} for {format_duration(seconds)} "
            f"(until {_local(ban.until)}, reason: {_escape(ban.reason)})"
        )
        return EXIT_OK

    return _run(args, action)


def run_bans_remove(args: argparse.Namespace) -> int:
    from .store.repos import normalize_ip

    try:
        source = normalize_ip(args.ip)
    except Exception as exc:  # _report: known errors → one line
        return _report(exc, args)

    async def action(store: Store) -> int:
        if not await store.bans.remove_manual(source):
            raise CommandError(f"{source} is not banned; see the bans with: spitguard bans list")
        print(f"lifted the ban on {source}")
        return EXIT_OK

    return _run(args, action)


def parse_duration(text: str) -> float:
    """`3600`, `30m`, `1h30m`, `2d`, `1w` → seconds."""
    value = text.strip().lower()
    if _NUMBER.fullmatch(value):
        seconds = float(value)
    elif _DURATION.fullmatch(value):
        seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise CommandError(
            f"invalid duration {text!r}: use SECONDS or a number with s, m, h, d or w, "
            "e.g. 30m, 1h30m, 2d"
        )
    if not 0 < seconds <= MAX_BAN_SECONDS:
        raise CommandError(f"invalid duration {text!r}: use more than 0s and at most 3650d")
    return seconds


def format_duration(seconds: float) -> str:
    """Two most significant units, rounded up to the second: `1d2h`, `59m59s`, `12s`."""
    left = math.ceil(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, left = divmod(left, size)
        if amount or (parts and len(parts) < 2):
            parts.append(f"{amount}{unit}")
        if len(parts) == 2:
            break
    while len(parts) > 1 and parts[-1].startswith("0"):
        parts.pop()
    return "".join(parts) or "0s"


def _ban_json(ban: BanInfo, now: float) -> dict[str, Any]:
    return {
        "source": ban.source,
        "reason": ban.reason,
        "level": ban.level,
        "manual": ban.manual,
        "active": ban.until > now,
        "until": _utc(ban.until),
        "remaining_seconds": math.ceil(ban.remaining(now)),
        "created_at": _utc(ban.created_at),
    }


# --- events -------------------------------------------------------------------------------


def run_events_tail(args: argparse.Namespace) -> int:
    from .store.repos import normalize_ip

    try:
        if args.limit < 1:
            raise CommandError(f"invalid --limit {args.limit}: use 1 or more")
        source = None if args.source is None else normalize_ip(args.source)
    except Exception as exc:  # _report: known errors → one line
        return _report(exc, args)

    async def action(store: Store) -> int:
        rows = await store.events.tail(args.limit, reason=args.reason, source=source)
        try:
            if args.follow:
                return await _follow(store, args, source, rows)
            if args.json:
                _print_json([_event_json(e) for e in rows])
            elif not rows:
                print("no events", file=sys.stderr)
            else:
                _print_table(EVENT_COLUMNS, [_event_row(e) for e in rows])
        except BrokenPipeError:
            _quiet_stdout()  # `… | head`: the reader has what it wanted
        return EXIT_OK

    code = _run(args, action)
    # Ctrl-C is how a follower ends: not an error.
    return EXIT_OK if args.follow and code == EXIT_INTERRUPTED else code


async def _follow(
    store: Store, args: argparse.Namespace, source: str | None, rows: Sequence[EventInfo]
) -> int:
    """Print `rows`, then poll for new rows (by id) and for recent rows whose count grew."""
    printer = _FollowPrinter(args.json, rows)
    last_id = rows[-1].id if rows else 0
    seen = {e.id: (e.count, e.last_seen) for e in rows}
    seen.update((e.id, (e.count, e.last_seen)) for e in await _recent(store, args, source))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # no signal handlers: SIGINT cancels us
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_INTERVAL)
            if stop.is_set():
                return EXIT_OK
            fresh: list[EventInfo] = []
            while True:
                page = await store.events.tail(
                    FOLLOW_PAGE, after_id=last_id, reason=args.reason, source=source
                )
                fresh += page
                if page:
                    last_id = page[-1].id
                if len(page) < FOLLOW_PAGE:
                    break
            recent = await _recent(store, args, source)
            fresh_ids = {e.id for e in fresh}
            grown = sorted(
                (
                    e
                    for e in recent
                    if e.id not in fresh_ids and seen.get(e.id) != (e.count, e.last_seen)
                ),
                key=lambda e: e.id,
            )
            # Only the recent window is remembered, so memory stays bounded.
            seen = {e.id: (e.count, e.last_seen) for e in (*recent, *fresh)}
            printer.print(grown + fresh)
    except asyncio.CancelledError:
        return EXIT_OK
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
            loop.remove_signal_handler(signal.SIGTERM)


async def _recent(store: Store, args: argparse.Namespace, source: str | None) -> list[EventInfo]:
    return await store.events.query(
        since=time.time() - FOLLOW_WINDOW, reason=args.reason, source=source, limit=5000
    )


class _FollowPrinter:
    """Rows as they come: a table whose column widths are fixed by the first rows, or JSON
    Lines."""

    def __init__(self, as_json: bool, first: Sequence[EventInfo]) -> None:
        self.as_json = as_json
        cells = [_event_row(e) for e in first]
        self.widths = [
            max(len(r[i]) for r in (EVENT_COLUMNS, *cells)) for i in range(len(EVENT_COLUMNS))
        ]
        self.widths[1] = max(self.widths[1], 25)  # a local ISO time with its UTC offset
        self.widths[2] = max(self.widths[2], 15)  # a dotted IPv4 address
        if not as_json:
            self._line(EVENT_COLUMNS)
        self.print(first)

    def print(self, events: Sequence[EventInfo]) -> None:
        for e in events:
            if self.as_json:
                _print_json_line(_event_json(e))
            else:
                self._line(_event_row(e))
        sys.stdout.flush()

    def _line(self, cells: Sequence[str]) -> None:
        text = "  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True))
        print(text.rstrip())


def run_events_show(args: argparse.Namespace) -> int:
    try:
        event_id = int(args.id)
        if event_id < 1:
            raise ValueError
    except ValueError:
        error = CommandError(
            f"invalid event id {args.id!r}: use the number in the first column of "
            "spitguard events tail"
        )
        return _report(error, args)

    async def action(store: Store) -> int:
        event = await store.events.get(event_id)
        if event is None:
            raise CommandError(
                f"event {event_id} does not exist (or was purged by retention); "
                "see the events with: spitguard events tail"
            )
        print(render_event(event), end="")
        return EXIT_OK

    return _run(args, action)


def render_event(e: EventInfo) -> str:
    fields = [
        ("Event", str(e.id)),
        ("Source", e.source),
        ("Reason", e.reason),
        ("Action", e.action),
        ("Transport", e.transport),
        ("Count", str(e.count)),
        ("First seen", _local(e.first_seen)),
        ("Last seen", _local(e.last_seen)),
        ("Method", e.method or "-"),
        ("Target", e.target or "-"),
        ("User agent", e.user_agent or "-"),
    ]
    width = max(len(label) for label, _ in fields) + 2
    text = "".join(f"{label:<{width}}{_escape(value)}\n" for label, value in fields)
    if not e.sample:
        return text + "\nNo sampled trace.\n"
    text += (
        f"\nSampled trace ({len(e.sample)} bytes, the first request of that minute; "
        "credentials redacted):\n"
    )
    return text + "".join(f"  {line}\n" for line in trace_lines(e.sample))


def trace_lines(sample: bytes) -> list[str]:
    """The trace line by line (CRLF or LF ends), every line escaped; undecodable bytes and
    stray control characters (a bare CR, ESC) appear as \\xNN."""
    text = sample.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [_escape(line.removesuffix("\r")) for line in lines]


def _event_row(e: EventInfo) -> tuple[str, ...]:
    return (
        str(e.id),
        _local(e.last_seen),
        _escape(e.source),
        _escape(e.reason),
        str(e.count),
        _escape(e.action),
        _escape(e.method or "-"),
        _escape(e.target or "-"),
        _escape(e.user_agent or "-"),
    )


def _event_json(e: EventInfo) -> dict[str, Any]:
    # Raw values: json.dumps escapes control and non-ASCII characters itself.
    return {
        "id": e.id,
        "source": e.source,
        "reason": e.reason,
        "minute": e.minute,
        "count": e.count,
        "first_seen": _utc(e.first_seen),
        "last_seen": _utc(e.last_seen),
        "action": e.action,
        "transport": e.transport,
        "method": e.method,
        "user_agent": e.user_agent,
        "target": e.target,
    }


# --- helpers ------------------------------------------------------------------------------


def _escape(text: str) -> str:
    from .cli import escape  # cli imports this module: import when used

    return escape(text)


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _print_json_line(value: object) -> None:
    print(json.dumps(value))


def _quiet_stdout() -> None:
    # Point stdout at /dev/null so the interpreter's final flush does not fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
