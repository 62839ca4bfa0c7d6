"""`spitguard audit TARGET... | --registrations`: probe phones the way a scanner would.

Prints a table sorted worst first (or `--json`), stores the results (unless `--no-store`)
and exits 0 when every target is silent, 1 when any is exposed (rings, answers, a web UI
or a configuration without authentication), 2 on bad input. `--dry-run` lists what would
be sent and sends nothing. What is sent and why: docs/audit.md.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from typing import IO, TYPE_CHECKING, TypeAlias

from .cli_inventory import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, CommandError, _config_option

if TYPE_CHECKING:
    from .audit import AuditOptions, Target, TargetResult
    from .store import Store

    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_EXPOSED = 1

AUDIT_HELP = """\
Probe SIP phones (or a SIP edge) from outside, the way an Internet scanner would, and say
which are exposed. Per target, over UDP and TCP: an OPTIONS, then an INVITE shaped like a
scanner's (To = From = 100, the target's IP as host), CANCELled at its first provisional
response so a phone rings for a moment at most (--no-invite: OPTIONS only). Also GETs
/ on the web ports and the provisioning paths, without credentials.

Verdicts: rings (a stranger can make it ring), answers (it responds, e.g. 400: a scanner
learns it is there), silent (no response: best). Only the targets given are contacted.
"""

EXIT_HELP = """\
exit codes:
  0  every target is silent: no SIP response, no web UI, no configuration handed out
  1  some target rings, answers, shows a web UI or hands out a configuration
  2  bad input or usage error (nothing was sent), or a target could not be probed
"""


# --- parser -------------------------------------------------------------------------------


def add_audit(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "audit",
        help="probe phones from outside like a scanner and report which are exposed",
        description=AUDIT_HELP,
        epilog=EXIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="host, host:port, [v6]:port or a CIDR range such as 192.0.2.0/28 (port 5060 "
        "unless given)",
    )
    p.add_argument(
        "--registrations",
        action="store_true",
        help="also audit the public address of every phone registered at the edge",
    )
    p.add_argument("--tenant", metavar="T", help="with --registrations: only this tenant")
    p.add_argument("--no-invite", action="store_true", help="send OPTIONS only, never INVITE")
    p.add_argument(
        "--transport",
        action="append",
        choices=("udp", "tcp"),
        help="SIP transport to probe (repeat for both; default: udp and tcp)",
    )
    p.add_argument(
        "--web-ports",
        default="80,443,8080",
        metavar="LIST",
        help='web ports to check, comma-separated, or "none"; 443, 8443 and PORT/tls '
        "speak TLS (default: 80,443,8080)",
    )
    p.add_argument(
        "--provisioning-paths",
        default="/000000000000.cfg,/provision/000000000000.cfg",
        metavar="LIST",
        help="paths asked for on each web port that answers, comma-separated, or "
        '"none" (default: /000000000000.cfg,/provision/000000000000.cfg)',
    )
    p.add_argument(
        "--source",
        metavar="IP",
        help="send from this local address (e.g. one the edge does not trust)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=20.0,
        metavar="N",
        help="at most N packets, connections and requests per second in all (default: 20)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds to wait for an answer after the last try (default: 2)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=2,
        metavar="N",
        help="UDP retransmissions per request, T1 apart and doubling (default: 2)",
    )
    p.add_argument("--t1", type=float, default=0.5, metavar="S", help="RFC 3261 T1 (default: 0.5)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=16,
        metavar="N",
        help="targets probed at the same time (default: 16)",
    )
    p.add_argument(
        "--max-targets",
        type=int,
        default=256,
        metavar="N",
        help="refuse to audit more addresses than this (default: 256)",
    )
    p.add_argument(
        "--user-agent",
        metavar="UA",
        help="User-Agent of the probes (default: spitguard-audit/VERSION)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be sent; send nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-store", action="store_true", help="do not store the results")
    _config_option(p)
    p.set_defaults(handler=run_audit_command)


# --- options ------------------------------------------------------------------------------


def _ports(text: str) -> tuple[tuple[int, ...], frozenset[int]]:
    """Web ports and which of them speak TLS: 443 and 8443, and any written PORT/tls."""
    if text.strip().lower() in ("", "none"):
        return (), frozenset()
    ports: list[int] = []
    tls: set[int] = set()
    for part in text.split(","):
        number, _, suffix = part.strip().lower().partition("/")
        if not number.isdigit() or not 1 <= int(number) <= 65535 or suffix not in ("", "tls"):
            raise CommandError(
                f"bad web port {part.strip()!r} in --web-ports: give ports from 1 to 65535, "
                'comma-separated, PORT/tls for TLS (e.g. 80,443,8080,9443/tls), or "none"'
            )
        ports.append(int(number))
        if suffix == "tls" or int(number) in (443, 8443):
            tls.add(int(number))
    return tuple(dict.fromkeys(ports)), frozenset(tls)


def _paths(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    out = [p.strip() for p in text.split(",") if p.strip()]
    for path in out:
        if not path.startswith("/") or any(c.isspace() for c in path):
            raise CommandError(
                f"bad path {path!r} in --provisioning-paths: paths start with / and hold no "
                'spaces (e.g. /000000000000.cfg), or give "none"'
            )
    return tuple(out)


def build_options(args: argparse.Namespace) -> AuditOptions:
    """AuditOptions from the command line; CommandError says what to fix."""
    from .audit import AuditOptions, Timing
    from .audit.runner import DEFAULT_USER_AGENT

    if args.tenant is not None and not args.registrations:
        raise CommandError("--tenant needs --registrations")
    try:
        timing = Timing(
            t1=args.t1, t2=max(4.0, args.t1), retries=args.retries, timeout=args.timeout
        )
    except ValueError as exc:
        raise CommandError(
            f"{exc}: give --t1 and --timeout above 0 and --retries from 0 to 10"
        ) from None
    if not args.rate > 0:
        raise CommandError("--rate must be above 0 (packets per second)")
    if args.concurrency < 1 or args.max_targets < 1:
        raise CommandError("--concurrency and --max-targets must be at least 1")
    if args.source is not None:
        try:
            ipaddress.ip_address(args.source)
        except ValueError:
            raise CommandError(
                f"--source {args.source!r} is not an IP address: give one of this host's "
                "addresses, e.g. 127.0.66.1"
            ) from None
    web_ports, tls_ports = _ports(args.web_ports)
    transports = tuple(dict.fromkeys(args.transport or ("udp", "tcp")))
    try:
        return AuditOptions(
            transports=transports,
            invite=not args.no_invite,
            web_ports=web_ports,
            tls_ports=tls_ports,
            config_paths=_paths(args.provisioning_paths),
            source=args.source,
            rate=args.rate,
            burst=max(1, min(5, int(args.rate))),
            timing=timing,
            concurrency=args.concurrency,
            user_agent=args.user_agent or DEFAULT_USER_AGENT,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


# --- the command ----------------------------------------------------------------------------


def run_audit_command(args: argparse.Namespace) -> int:
    from .audit import AuditError, TargetError, expand_targets

    try:
        options = build_options(args)
        targets = expand_targets(args.targets, max_targets=args.max_targets)
        if not targets and not args.registrations:
            raise CommandError(
                "nothing to audit: give one or more TARGETs (host[:port] or a CIDR range) "
                "or --registrations"
            )
    except (CommandError, TargetError) as exc:
        return _error(str(exc))
    try:
        return asyncio.run(_main(args, options, targets))
    except (CommandError, TargetError, AuditError) as exc:
        return _error(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        from .cli_inventory import _report

        return _report(exc, args)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


async def _main(args: argparse.Namespace, options: AuditOptions, targets: list[Target]) -> int:
    from .audit import plan, run_audit

    store: Store | None = None
    needs_store = args.registrations or not (args.no_store or args.dry_run)
    try:
        if needs_store:
            store = await _open_store(args)
        if args.registrations:
            assert store is not None
            targets = await _with_registrations(store, targets, args)
            if not targets:
                raise CommandError(
                    "no live registrations to audit"
                    + (f" for tenant {args.tenant}" if args.tenant else "")
                )
        if args.dry_run:
            lines = plan(targets, options)
            if args.json:
                print(json.dumps({"dry_run": True, "sends": lines}, indent=2))
            else:
                print("\n".join(lines))
                print(f"(dry run: {len(lines)} requests to {len(targets)} targets; nothing sent)",
                      file=sys.stderr)  # fmt: skip
            return EXIT_OK
        bar = _ProgressBar(sys.stderr) if sys.stderr.isatty() and len(targets) > 1 else None
        started = time.time()
        results = await run_audit(targets, options, progress=bar.update if bar else None)
        if bar is not None:
            bar.clear()
        if store is not None and not args.no_store:
            from .audit.storage import record_results

            tenant = args.tenant if args.registrations and not args.targets else None
            await record_results(store, results, options, started_at=started, tenant=tenant)
    finally:
        if store is not None:
            await store.close()
    _print_results(results, as_json=args.json)
    if any(r.exposed for r in results):
        return EXIT_EXPOSED
    return EXIT_ERROR if any(r.error for r in results) else EXIT_OK


async def _open_store(args: argparse.Namespace) -> Store:
    from .config import load_settings
    from .store import open_store

    return await open_store(load_settings(getattr(args, "config", None)))


async def _with_registrations(
    store: Store, targets: list[Target], args: argparse.Namespace
) -> list[Target]:
    from .audit.storage import registered_targets
    from .audit.targets import cap_targets

    seen = {(t.host, t.port) for t in targets}
    out = list(targets)
    for target in await registered_targets(store, tenant=args.tenant):
        if (target.host, target.port) not in seen:
            seen.add((target.host, target.port))
            out.append(target)
    return cap_targets(out, args.max_targets)


# --- output ---------------------------------------------------------------------------------


class _ProgressBar:
    """`audit [#####.....] 12/40` on one stderr line, redrawn in place (TTY only)."""

    WIDTH = 30

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def update(self, done: int, total: int) -> None:
        filled = self.WIDTH * done // max(total, 1)
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\raudit [{bar}] {done}/{total} targets")
        self.stream.flush()

    def clear(self) -> None:
        self.stream.write("\r" + " " * (self.WIDTH + 30) + "\r")
        self.stream.flush()


def _sip_cell(result: TargetResult, transport: str) -> str:
    for r in result.sip:
        if r.transport == transport:
            codes = sorted({f"{s.status}" for s in r.responses})
            return r.verdict + (f" ({','.join(codes)})" if codes else "")
    return "-"


def _web_cell(result: TargetResult, config: bool) -> str:
    found = [
        f"{f.port}{f.path}" if config else f"{f.kind} :{f.port}"
        for f in result.http
        if (f.kind == "config") == config and f.exposed
    ]
    return ", ".join(found) or "-"


def _print_results(results: list[TargetResult], *, as_json: bool) -> None:
    from .audit.results import worst_first
    from .cli_inventory import _print_table

    ordered = worst_first(results)
    counts = {v: sum(1 for r in results if r.verdict == v) for v in ("rings", "answers", "silent")}
    summary = {
        "targets": len(results),
        "exposed": sum(1 for r in results if r.exposed),
        **counts,
        "web_ui": sum(1 for r in results if r.web_ui),
        "config": sum(1 for r in results if r.config),
        "errors": sum(1 for r in results if r.error),
    }
    if as_json:
        print(json.dumps({"results": [r.to_json() for r in ordered], "summary": summary}, indent=2))
        return
    rows = [
        (
            r.target.label,
            "error" if r.error else r.verdict,
            _sip_cell(r, "udp"),
            _sip_cell(r, "tcp"),
            _web_cell(r, config=False),
            _web_cell(r, config=True),
            r.target.device or r.target.aor or "",
        )
        for r in ordered
    ]
    _print_table(("TARGET", "VERDICT", "UDP", "TCP", "WEB UI", "CONFIG", "DEVICE"), rows)
    for r in ordered:
        if r.error:
            print(f"{r.target.label}: {r.error}", file=sys.stderr)
    print(
        f"{summary['targets']} targets: {summary['exposed']} exposed ({counts['rings']} ring, "
        f"{counts['answers']} answer, {summary['web_ui']} web UI, {summary['config']} "
        f"configuration); {counts['silent']} silent on SIP"
    )
