"""`spitguard admin add|passwd|list` and `spitguard admin token create|revoke|list`:
portal and API accounts. Passwords are read from a terminal prompt or stdin, never taken
as an argument; API tokens are printed once, when created."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from .cli_inventory import (
    EXIT_OK,
    CommandError,
    _config_option,
    _print_json,
    _print_table,
    _run,
)

if TYPE_CHECKING:
    from .cli_inventory import Subparsers
    from .store import Store


def add_admin_commands(subparsers: Subparsers) -> None:
    admin = subparsers.add_parser(
        "admin",
        help="manage portal/API users and their API tokens",
        description="Operators see every tenant; tenant admins only their own tenant.",
    )
    _config_option(admin)
    actions = admin.add_subparsers(dest="admin_action", metavar="ACTION", required=True)

    add = actions.add_parser("add", help="add a user (asks for the password)")
    add.add_argument("username", metavar="USER")
    add.add_argument(
        "--role", choices=("operator", "tenant_admin"), default="operator", help="default: operator"
    )
    add.add_argument("--tenant", metavar="NAME", help="the tenant of a tenant admin")
    _password_stdin(add)
    _config_option(add)
    add.set_defaults(handler=run_admin_add)

    passwd = actions.add_parser("passwd", help="set a user's password (ends their sessions)")
    passwd.add_argument("username", metavar="USER")
    _password_stdin(passwd)
    _config_option(passwd)
    passwd.set_defaults(handler=run_admin_passwd)

    lst = actions.add_parser("list", help="list users")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(lst)
    lst.set_defaults(handler=run_admin_list)

    token = actions.add_parser("token", help="API tokens for scripts")
    _config_option(token)
    token_actions = token.add_subparsers(dest="token_action", metavar="ACTION", required=True)
    create = token_actions.add_parser("create", help="create a token and print it once")
    create.add_argument("username", metavar="USER", help="the token acts as this user")
    create.add_argument("--name", required=True, metavar="NAME", help="what the token is for")
    _config_option(create)
    create.set_defaults(handler=run_token_create)
    revoke = token_actions.add_parser("revoke", help="revoke a token")
    revoke.add_argument("username", metavar="USER")
    revoke.add_argument("--name", required=True, metavar="NAME")
    _config_option(revoke)
    revoke.set_defaults(handler=run_token_revoke)
    tlist = token_actions.add_parser("list", help="list tokens (never their values)")
    tlist.add_argument("--user", metavar="USER", help="only this user's tokens")
    _config_option(tlist)
    tlist.set_defaults(handler=run_token_list)


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (for scripts)",
    )


def _obtain_admin_password(args: argparse.Namespace) -> str:
    from .store.repos.admin import check_admin_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("password: ")
        check_admin_password(password)
        if getpass.getpass("again: ") != password:
            raise CommandError("the two passwords differ; nothing changed")
    else:
        raise CommandError("no password given: use --password-stdin or run in a terminal")
    check_admin_password(password)
    return password


def run_admin_add(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        if args.role == "tenant_admin" and not args.tenant:
            raise CommandError("a tenant admin needs --tenant NAME")
        if args.role == "operator" and args.tenant:
            raise CommandError(
                "operators see every tenant: drop --tenant or use --role tenant_admin"
            )
        password = _obtain_admin_password(args)
        user = await store.admins.add(args.username, password, role=args.role, tenant=args.tenant)
        where = f' of tenant "{user.tenant}"' if user.tenant else ""
        print(f'added {user.role} "{user.username}"{where}')
        return EXIT_OK

    return _run(args, action, tenant_domain="DOMAIN")


def run_admin_passwd(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        password = _obtain_admin_password(args)
        user = await store.admins.set_password(args.username, password)
        print(f'password of "{user.username}" changed; their portal sessions ended')
        return EXIT_OK

    return _run(args, action)


def run_admin_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        users = await store.admins.list()
        if args.json:
            _print_json(
                [{"username": u.username, "role": u.role, "tenant": u.tenant} for u in users]
            )
        else:
            _print_table(
                ("USER", "ROLE", "TENANT"), [(u.username, u.role, u.tenant or "-") for u in users]
            )
        return EXIT_OK

    return _run(args, action)


def run_token_create(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        token = await store.admins.create_token(args.username, args.name)
        print(token)
        print("(shown only this once; send it as 'Authorization: Bearer <token>')", file=sys.stderr)
        return EXIT_OK

    return _run(args, action)


def run_token_revoke(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        if not await store.admins.revoke_token(args.username, args.name):
            raise CommandError(f'user "{args.username}" has no token named "{args.name}"')
        print(f'revoked token "{args.name}" of "{args.username}"')
        return EXIT_OK

    return _run(args, action)


def run_token_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        tokens = await store.admins.tokens(args.user)
        _print_table(
            ("USER", "NAME", "CREATED", "LAST USED"),
            [(t.username, t.name, _ts(t.created_at), _ts(t.last_used_at)) for t in tokens],
        )
        return EXIT_OK

    return _run(args, action)


def _ts(value: float | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value).astimezone().strftime("%F %T")
