"""`spitguard tenant add|list` and `spitguard line add|list|passwd`: the inventory commands.

Bad input ends in one line on stderr saying what to do, and exit status 2; never a
traceback. Passwords are printed only when spitguard generated them, exactly once.
The store and settings modules are imported when a command runs, so that other commands
(`inspect`) do not pay for SQLAlchemy at start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from datetime import datetime

    from .store import LineInfo, Store, TenantInfo

    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

StoreAction: TypeAlias = "Callable[[Store], Coroutine[Any, Any, int]]"


class CommandError(Exception):
    """Bad input detected by the CLI itself; the message is the whole error line."""


# --- parsers ------------------------------------------------------------------------------


def add_inventory_commands(subparsers: Subparsers) -> None:
    """Register the `tenant` and `line` command groups."""
    _add_tenant(subparsers)
    _add_line(subparsers)


def _config_option(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS on both the group and the action parser, so "--config" works in either
    # position without the action's default overwriting the group's value.
    parser.add_argument(
        "--config",
        metavar="FILE",
        type=Path,
        default=argparse.SUPPRESS,
        help="TOML configuration file (default: built-in defaults + SPITGUARD_* variables)",
    )


def _password_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--password", metavar="P", help="the SIP password (visible in the process list)"
    )
    group.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (for scripts)",
    )
    group.add_argument(
        "--generate",
        action="store_true",
        help="generate a strong random password and print it once",
    )


def _add_tenant(subparsers: Subparsers) -> None:
    tenant = subparsers.add_parser(
        "tenant",
        help="manage tenants and their SIP domains",
        description="A tenant is one customer; it owns one or more SIP domains.",
    )
    _config_option(tenant)
    actions = tenant.add_subparsers(dest="tenant_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add a tenant with its SIP domains",
        description="Add a tenant. Each SIP domain belongs to exactly one tenant.",
    )
    add.add_argument("name", metavar="NAME", help="short name, e.g. acme")
    add.add_argument(
        "--domain",
        action="append",
        required=True,
        metavar="DOMAIN",
        help="a SIP domain of the tenant, e.g. acme.example.com (repeat for more)",
    )
    _config_option(add)
    add.set_defaults(handler=run_tenant_add)

    lst = actions.add_parser("list", help="list tenants and their domains")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(lst)
    lst.set_defaults(handler=run_tenant_list)


def _add_line(subparsers: Subparsers) -> None:
    line = subparsers.add_parser(
        "line",
        help="manage lines (SIP accounts phones register)",
        description="A line is one SIP account (address of record) of a tenant.",
    )
    _config_option(line)
    actions = line.add_subparsers(dest="line_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add a line",
        description=(
            "Add a line. Without --password, --password-stdin or --generate, the password is "
            "asked for when running in a terminal."
        ),
    )
    add.add_argument("aor", metavar="AOR", help="user@domain or sip:user@domain")
    add.add_argument("--tenant", required=True, metavar="NAME", help="the owning tenant")
    add.add_argument(
        "--auth-user", metavar="U", help="digest user name (default: the AOR's user part)"
    )
    add.add_argument("--display-name", metavar="N", help="a name shown for the line")
    _password_options(add)
    _config_option(add)
    add.set_defaults(handler=run_line_add)

    lst = actions.add_parser("list", help="list lines (never their passwords)")
    lst.add_argument("--tenant", metavar="NAME", help="only this tenant's lines")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(lst)
    lst.set_defaults(handler=run_line_list)

    passwd = actions.add_parser("passwd", help="set a line's password")
    passwd.add_argument("aor", metavar="AOR", help="user@domain or sip:user@domain")
    _password_options(passwd)
    _config_option(passwd)
    passwd.set_defaults(handler=run_line_passwd)


# --- handlers -----------------------------------------------------------------------------


def run_tenant_add(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        tenant = await store.tenants.add(args.name, args.domain)
        print(f'added tenant "{tenant.name}" with domains: {", ".join(tenant.domains)}')
        return EXIT_OK

    return _run(args, action)


def run_tenant_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        tenants = await store.tenants.list()
        if args.json:
            _print_json([_tenant_json(t) for t in tenants])
        elif not tenants:
            print(
                "no tenants; add one with: spitguard tenant add NAME --domain DOMAIN",
                file=sys.stderr,
            )
        else:
            rows = [(t.name, ", ".join(t.domains), _date(t.created_at)) for t in tenants]
            _print_table(("TENANT", "DOMAINS", "CREATED"), rows)
        return EXIT_OK

    return _run(args, action)


def run_line_add(args: argparse.Namespace) -> int:
    from .store import parse_aor

    try:
        aor = parse_aor(args.aor)
        password, generated = _obtain_password(args)
    except Exception as exc:  # _report: known errors → one line
        return _report(exc, args)

    async def action(store: Store) -> int:
        line = await store.lines.add(
            aor.aor,
            tenant=args.tenant,
            password=password,
            auth_user=args.auth_user,
            display_name=args.display_name,
        )
        print(f'added line {line.aor} to tenant "{line.tenant}" (auth user {line.auth_user})')
        if generated:
            _print_generated(password)
        return EXIT_OK

    return _run(args, action, tenant_domain=aor.domain)


def run_line_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        lines = await store.lines.list(args.tenant)
        if args.json:
            _print_json([_line_json(line) for line in lines])
        elif not lines:
            print("no lines; add one with: spitguard line add AOR --tenant NAME", file=sys.stderr)
        else:
            rows = [
                (
                    line.aor,
                    line.tenant,
                    line.auth_user,
                    line.display_name or "-",
                    _date(line.updated_at),
                )
                for line in lines
            ]
            _print_table(("AOR", "TENANT", "AUTH USER", "DISPLAY NAME", "UPDATED"), rows)
        return EXIT_OK

    return _run(args, action)


def run_line_passwd(args: argparse.Namespace) -> int:
    from .store import parse_aor

    try:
        aor = parse_aor(args.aor)
        password, generated = _obtain_password(args)
    except Exception as exc:  # _report: known errors → one line
        return _report(exc, args)

    async def action(store: Store) -> int:
        line = await store.lines.set_password(aor.aor, password)
        print(f"changed the password of line {line.aor}")
        if generated:
            _print_generated(password)
        return EXIT_OK

    return _run(args, action)


# --- plumbing -----------------------------------------------------------------------------


def _run(args: argparse.Namespace, action: StoreAction, *, tenant_domain: str = "DOMAIN") -> int:
    """Load settings, open the store, run `action`, close; errors become one stderr line."""
    from .config import load_settings
    from .store import open_store

    async def with_store() -> int:
        store = await open_store(load_settings(getattr(args, "config", None)))
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(with_store())
    except Exception as exc:  # _report re-raises what it does not know
        return _report(exc, args, tenant_domain=tenant_domain)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _report(exc: Exception, args: argparse.Namespace, *, tenant_domain: str = "DOMAIN") -> int:
    from .config import ConfigError
    from .store import StoreError, UnknownLineError, UnknownTenantError

    if isinstance(exc, UnknownTenantError):
        message = (
            f"{exc}; create it with: spitguard tenant add {exc.tenant} --domain {tenant_domain}"
        )
    elif isinstance(exc, UnknownLineError):
        message = f"{exc}; see the existing lines with: spitguard line list"
    elif isinstance(exc, StoreError | ConfigError | CommandError):
        message = str(exc)
    else:
        raise exc  # a bug, not bad input: keep the traceback
    print(f"error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _obtain_password(args: argparse.Namespace) -> tuple[str, bool]:
    """(password, generated) from the options, stdin, or a terminal prompt."""
    from .store import check_password, generate_password

    if args.generate:
        return generate_password(), True
    if args.password is not None:
        password: str = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("SIP password: ")
        check_password(password)  # complain before asking for the confirmation
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ; nothing changed")
    else:
        raise CommandError(
            "no password given: use --password P, --password-stdin or --generate "
            "(or run in a terminal to be prompted)"
        )
    check_password(password)
    return password, False


def _print_generated(password: str) -> None:
    print(f"password: {password}")
    print("(shown only this once; spitguard keeps it encrypted)", file=sys.stderr)


def _tenant_json(tenant: TenantInfo) -> dict[str, Any]:
    return {
        "name": tenant.name,
        "domains": list(tenant.domains),
        "created_at": tenant.created_at.isoformat(),
    }


def _line_json(line: LineInfo) -> dict[str, Any]:
    return {
        "aor": line.aor,
        "tenant": line.tenant,
        "domain": line.domain,
        "auth_user": line.auth_user,
        "display_name": line.display_name,
        "created_at": line.created_at.isoformat(),
        "updated_at": line.updated_at.isoformat(),
    }


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2))


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _date(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")
