"""`spitguard device add|import|list|show|remove` and `spitguard device profile show|set`.

Passwords are printed only by `device show --secrets`: an operator may need a phone's
admin or provisioning password, but no listing or log should carry them by accident.
`list` and `show` also say whether each phone runs its current hardened configuration:
the file is rendered as the boot server would render it now (edge from the settings) and
its version compared with the last one the phone fetched. Errors follow the inventory
commands: `error:` lines on stderr, exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .cli_inventory import (
    EXIT_OK,
    CommandError,
    _config_option,
    _print_json,
    _print_table,
    _report,
    _run,
)

if TYPE_CHECKING:
    from .provision.inventory import Assessment, Edge
    from .store import Store
    from .store.repos import (
        DeviceInfo,
        DeviceRow,
        FetchInfo,
        ProfileInfo,
        RowProblem,
        UploadInfo,
    )

    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

VALIDATION_CHOICES = ("source", "digest", "both")
ON_OFF = {"on": True, "off": False}
EXIT_NOT_ALL = 1  # compliance/resync: some phone is not where it should be
VERSION_SHOWN = 12  # hex digits of a version in tables; --json has all 64
RECENT_SHOWN = 5

_LINE_SPEC = re.compile(r"\s*(\d{1,3})\s*=\s*(\S.*?)\s*")
_LINE_COLUMN = re.compile(r"line(\d{1,3})")
_CSV_COLUMNS = ("mac", "model", "label")


# --- parsers ------------------------------------------------------------------------------


def add_device_commands(subparsers: Subparsers) -> None:
    """Register the `device` command group."""
    device = subparsers.add_parser(
        "device",
        help="manage desk phones and their tenant's hardening profile",
        description="A device is one desk phone, known by its MAC address, with lines of its "
        "tenant on its line keys. spitguard generates its admin and provisioning passwords.",
    )
    _config_option(device)
    actions = device.add_subparsers(dest="device_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        help="add a device",
        description="Add a device with one or more lines. Its admin and provisioning "
        "passwords are generated; see them with: spitguard device show MAC --secrets",
    )
    add.add_argument("mac", metavar="MAC", help="e.g. 0004f2abcdef or 00:04:F2:AB:CD:EF")
    add.add_argument("--tenant", required=True, metavar="NAME", help="the owning tenant")
    add.add_argument("--vendor", default="polycom", metavar="V", help="default: polycom")
    add.add_argument("--model", metavar="M", help="e.g. VVX_400 (informational)")
    add.add_argument("--label", metavar="L", help="where the phone is, e.g. Front desk")
    add.add_argument(
        "--line",
        action="append",
        required=True,
        metavar="KEY=AOR",
        help="a line of the tenant on line key KEY, e.g. 1=1001@acme.example.com (repeat)",
    )
    _config_option(add)
    add.set_defaults(handler=run_device_add)

    imp = actions.add_parser(
        "import",
        help="add devices from a CSV file (all or nothing)",
        description="Add the devices of a CSV file with the header mac,model,label,line1,"
        "line2,... (model, label and all but one line column may be left empty). Every bad "
        "row is reported with its line number, and then nothing is imported.",
    )
    imp.add_argument("csv", metavar="CSV", type=Path, help="the CSV file")
    imp.add_argument("--tenant", required=True, metavar="NAME", help="the owning tenant")
    _config_option(imp)
    imp.set_defaults(handler=run_device_import)

    lst = actions.add_parser(
        "list",
        help="list devices and whether they run their current configuration",
        description="List devices (never their passwords). CONFIG is compliant when the "
        "phone last fetched exactly the configuration it would get now, stale when it "
        "fetched an older one, never when it has not fetched one, invalid when its "
        "configuration cannot be rendered.",
    )
    lst.add_argument("--tenant", metavar="NAME", help="only this tenant's devices")
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(lst)
    lst.set_defaults(handler=run_device_list)

    show = actions.add_parser("show", help="show one device, its fetches and uploads")
    show.add_argument("mac", metavar="MAC", help="the device's MAC address")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.add_argument(
        "--secrets",
        action="store_true",
        help="also print the admin and provisioning passwords",
    )
    _config_option(show)
    show.set_defaults(handler=run_device_show)

    remove = actions.add_parser("remove", help="remove a device (its fetch log stays)")
    remove.add_argument("mac", metavar="MAC", help="the device's MAC address")
    _config_option(remove)
    remove.set_defaults(handler=run_device_remove)

    compliance = actions.add_parser(
        "compliance",
        help="how many phones still run an old configuration, per tenant",
        description="Per tenant: phones running their current configuration, phones "
        "still on an old one (stale), phones that never fetched one, and phones whose "
        "configuration cannot be rendered. Exit 0 when every phone is compliant, 1 otherwise.",
    )
    compliance.add_argument("--tenant", metavar="NAME", help="only this tenant")
    compliance.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(compliance)
    compliance.set_defaults(handler=run_device_compliance)

    resync = actions.add_parser(
        "resync",
        help="make phones fetch their configuration now (SIP NOTIFY check-sync)",
        description="Queue a re-sync for the running edge (`spitguard serve`), which sends "
        "NOTIFY Event: check-sync to each registered phone through its own flow and answers "
        "the phone's digest challenge with the line's credentials. Waits for the outcomes. "
        "Exit 0 when every phone took the NOTIFY, 1 when any did not (not registered, "
        "refused, timed out), 2 on errors.",
    )
    resync.add_argument("macs", nargs="*", metavar="MAC", help="the devices to re-sync")
    resync.add_argument("--tenant", metavar="NAME", help="every device of this tenant")
    resync.add_argument(
        "--stale", action="store_true", help="only devices not running their current config"
    )
    resync.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for the edge's outcomes (default 60)",
    )
    resync.add_argument("--json", action="store_true", help="print a JSON array")
    _config_option(resync)
    resync.set_defaults(handler=run_device_resync)

    _add_profile(actions)


def _add_profile(actions: Subparsers) -> None:
    profile = actions.add_parser(
        "profile",
        help="show or change a tenant's hardening profile",
        description="The hardening every phone of a tenant gets. The defaults are strict: "
        "web UI off, INVITEs accepted only from the edge (source), check-sync NOTIFYs "
        "digest-challenged.",
    )
    _config_option(profile)
    sub = profile.add_subparsers(dest="profile_action", metavar="ACTION", required=True)

    show = sub.add_parser("show", help="show a tenant's profile")
    show.add_argument("--tenant", required=True, metavar="NAME", help="the tenant")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    _config_option(show)
    show.set_defaults(handler=run_profile_show)

    set_ = sub.add_parser(
        "set",
        help="change a tenant's profile",
        description="Change a tenant's profile. Phones get the change with their next "
        "configuration fetch; `device list` shows them as stale until then.",
    )
    set_.add_argument("--tenant", required=True, metavar="NAME", help="the tenant")
    set_.add_argument(
        "--web-ui", choices=sorted(ON_OFF), help="the phones' web interface (default: off)"
    )
    set_.add_argument(
        "--invite-validation",
        choices=VALIDATION_CHOICES,
        help="how phones check INVITEs: source (only from the edge), digest, or both",
    )
    set_.add_argument(
        "--checksync-validation",
        choices=VALIDATION_CHOICES,
        help="how phones check check-sync NOTIFYs (default: digest)",
    )
    set_.add_argument(
        "--resync-reboots",
        choices=["on", "off", "unset"],
        help="whether a check-sync always reboots the phone (unset: the phone's own default)",
    )
    _config_option(set_)
    set_.set_defaults(handler=run_profile_set)


# --- handlers -----------------------------------------------------------------------------


def run_device_add(args: argparse.Namespace) -> int:
    from .store import InvalidInputError

    # Checked before the store is opened: a typo must not create a data directory.
    try:
        lines = [parse_line_spec(spec) for spec in args.line]
        _check_mac(args.mac)
    except (CommandError, InvalidInputError) as exc:
        return _report(exc, args)

    async def action(store: Store) -> int:
        device = await store.devices.add(
            args.mac,
            tenant=args.tenant,
            vendor=args.vendor,
            model=args.model,
            label=args.label,
            lines=lines,
        )
        where = ", ".join(f"{line.key}={line.aor}" for line in device.lines)
        print(f'added device {device.mac} ({device.vendor}) to tenant "{device.tenant}": {where}')
        print(
            f"its passwords: spitguard device show {device.mac} --secrets",
            file=sys.stderr,
        )
        return EXIT_OK

    return _run(args, action)


def run_device_import(args: argparse.Namespace) -> int:
    try:
        rows, problems = read_device_csv(args.csv, args.tenant)
    except CommandError as exc:
        return _report(exc, args)

    async def action(store: Store) -> int:
        from .store import UnknownTenantError
        from .store.repos import DeviceImportError

        if await store.tenants.get(args.tenant) is None:
            raise UnknownTenantError(args.tenant.strip().lower())
        found: list[RowProblem] = list(problems)
        try:
            devices = await store.devices.import_rows(rows, check_only=bool(found))
        except DeviceImportError as exc:
            found.extend(exc.problems)
        if found:
            _print_row_problems(args.csv, found)
            bad = len({p.line for p in found})
            total = len(rows) + len({p.line for p in problems})
            raise CommandError(f"{bad} of {total} rows are bad; nothing was imported")
        print(f'imported {len(devices)} devices into tenant "{args.tenant.strip().lower()}"')
        return EXIT_OK

    return _run(args, action)


def run_device_list(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        devices = await store.devices.list(args.tenant)
        edge = _edge(args)
        profiles: dict[str, ProfileInfo] = {}
        assessed: list[tuple[DeviceInfo, Assessment]] = []
        for device in devices:
            if device.tenant not in profiles:
                profiles[device.tenant] = await store.profiles.get(device.tenant)
            assessed.append((device, await _assess(store, device, edge, profiles[device.tenant])))
        if args.json:
            _print_json([_device_json(d, a) for d, a in assessed])
        elif not devices:
            print(
                "no devices; add one with: spitguard device add MAC --tenant NAME "
                "--line 1=USER@DOMAIN",
                file=sys.stderr,
            )
        else:
            rows = [
                (
                    d.mac,
                    d.tenant,
                    d.model or "-",
                    d.label or "-",
                    ", ".join(f"{line.key}={line.aor.removeprefix('sip:')}" for line in d.lines),
                    a.state,
                    _short(a.desired_version),
                    _short(a.last_version),
                    _when(a.last_at),
                )
                for d, a in assessed
            ]
            header = ("MAC", "TENANT", "MODEL", "LABEL", "LINES", "CONFIG", "DESIRED", "FETCHED")
            _print_table((*header, "LAST FETCH"), rows)
        return EXIT_OK

    return _run(args, action)


def run_device_show(args: argparse.Namespace) -> int:
    from .store import InvalidInputError

    try:
        mac = _check_mac(args.mac)
    except InvalidInputError as exc:
        return _report(exc, args)

    async def action(store: Store) -> int:
        device = await store.devices.get(mac)
        if device is None:
            raise CommandError(
                f'device "{mac}" does not exist; see the devices with: spitguard device list'
            )
        assessment = await _assess(store, device, _edge(args))
        fetches = await store.fetches.recent(mac, limit=RECENT_SHOWN)
        uploads = await store.uploads.list(mac, limit=RECENT_SHOWN)
        secrets = await store.devices.credentials(mac) if args.secrets else None
        out = _device_json(device, assessment)
        out["recent_fetches"] = [_fetch_json(f) for f in fetches]
        out["recent_uploads"] = [_upload_json(u) for u in uploads]
        noted = await store.fetches.last_note(mac)
        out["last_note"] = None if noted is None else {"at": _iso(noted.at), "note": noted.note}
        if secrets is not None:
            out["admin_password"] = secrets.admin_password
            out["provisioning_password"] = secrets.provisioning_password
        if args.json:
            _print_json(out)
        else:
            _print_device(out)
        return EXIT_OK

    return _run(args, action)


def run_device_compliance(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        edge = _edge(args)
        tenants: dict[str, dict[str, int]] = {}
        for device in await store.devices.list(args.tenant):
            counts = tenants.setdefault(
                device.tenant, {"compliant": 0, "stale": 0, "never": 0, "invalid": 0}
            )
            counts[(await _assess(store, device, edge)).state] += 1
        out: list[dict[str, Any]] = [
            {"tenant": t, "devices": sum(c.values()), **c} for t, c in sorted(tenants.items())
        ]
        if args.json:
            _print_json(out)
        elif not out:
            print("no devices", file=sys.stderr)
        for row in [] if args.json else out:
            old = row["stale"] + row["never"] + row["invalid"]
            phones = "phone still runs" if old == 1 else "phones still run"
            line = f"{row['tenant']}: {old} of {row['devices']} {phones} an old configuration"
            details = [f"{row[k]} {k}" for k in ("stale", "never", "invalid") if row[k]]
            print(line + (f" ({', '.join(details)})" if details else ""))
        all_ok = all(row["compliant"] == row["devices"] for row in out)
        return EXIT_OK if all_ok else EXIT_NOT_ALL

    return _run(args, action)


def run_device_resync(args: argparse.Namespace) -> int:
    import asyncio
    import time

    from .store import InvalidInputError

    if not args.macs and args.tenant is None and not args.stale:
        return _report(
            CommandError("name devices: MAC ..., --tenant NAME or --stale (or a mix)"), args
        )
    try:
        named = [_check_mac(mac) for mac in args.macs]
    except InvalidInputError as exc:
        return _report(exc, args)

    async def action(store: Store) -> int:
        for mac in named:
            if await store.devices.get(mac) is None:
                raise CommandError(
                    f'device "{mac}" does not exist; see the devices with: spitguard device list'
                )
        macs = list(named)
        if args.tenant is not None or (args.stale and not named):
            macs += [d.mac for d in await store.devices.list(args.tenant)]
        if args.stale:
            edge = _edge(args)
            kept = []
            for mac in dict.fromkeys(macs):
                device = await store.devices.get(mac)
                if device is not None and (await _assess(store, device, edge)).state != "compliant":
                    kept.append(mac)
            macs = kept
        macs = list(dict.fromkeys(macs))
        if not macs:
            print("nothing to re-sync: every named device runs its current configuration")
            return EXIT_OK
        queued = await store.resyncs.enqueue(macs)
        deadline = time.monotonic() + args.timeout
        done = queued
        while time.monotonic() < deadline:
            done = await store.resyncs.get(r.id for r in queued)
            if all(r.finished for r in done):
                break
            await asyncio.sleep(0.2)
        rows = [
            (r.mac, (r.outcome or "-") if r.finished else f"no answer from the edge ({r.state})")
            for r in done
        ]
        if args.json:
            _print_json([{"mac": mac, "outcome": outcome} for mac, outcome in rows])
        else:
            _print_table(("MAC", "OUTCOME"), rows)
        if any(not r.finished for r in done):
            print(
                "error: the edge did not carry out every re-sync in time; is `spitguard serve` "
                "running with this configuration?",
                file=sys.stderr,
            )
        ok = all(r.finished and (r.outcome or "").startswith("ok") for r in done)
        return EXIT_OK if ok else EXIT_NOT_ALL

    return _run(args, action)


def run_device_remove(args: argparse.Namespace) -> int:
    from .store import InvalidInputError

    try:
        mac = _check_mac(args.mac)
    except InvalidInputError as exc:
        return _report(exc, args)

    async def action(store: Store) -> int:
        if not await store.devices.delete(mac):
            raise CommandError(
                f'device "{mac}" does not exist; see the devices with: spitguard device list'
            )
        print(f"removed device {mac}")
        return EXIT_OK

    return _run(args, action)


def run_profile_show(args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        profile = await store.profiles.get(args.tenant)
        _show_profile(profile, as_json=args.json)
        return EXIT_OK

    return _run(args, action)


def run_profile_set(args: argparse.Namespace) -> int:
    from .store.repos import KEEP

    changes: dict[str, Any] = {}
    if args.web_ui is not None:
        changes["web_ui"] = ON_OFF[args.web_ui]
    if args.invite_validation is not None:
        changes["invite_validation"] = args.invite_validation
    if args.checksync_validation is not None:
        changes["checksync_validation"] = args.checksync_validation
    if args.resync_reboots is not None:
        changes["resync_reboots"] = {"on": True, "off": False, "unset": None}[args.resync_reboots]
    if not changes:
        return _report(
            CommandError(
                "nothing to change: give --web-ui, --invite-validation, "
                "--checksync-validation or --resync-reboots"
            ),
            args,
        )

    async def action(store: Store) -> int:
        profile = await store.profiles.set(
            args.tenant,
            web_ui=changes.get("web_ui", KEEP),
            invite_validation=changes.get("invite_validation", KEEP),
            checksync_validation=changes.get("checksync_validation", KEEP),
            resync_reboots=changes.get("resync_reboots", KEEP),
        )
        _show_profile(profile, as_json=False)
        print("phones get the change with their next configuration fetch", file=sys.stderr)
        return EXIT_OK

    return _run(args, action)


# --- input --------------------------------------------------------------------------------


def parse_line_spec(spec: str) -> tuple[int, str]:
    """`1=1001@acme.example.com` → (1, "1001@acme.example.com")."""
    match = _LINE_SPEC.fullmatch(spec)
    if match is None:
        raise CommandError(
            f"invalid --line {spec!r}: write KEY=AOR, e.g. --line 1=1001@acme.example.com"
        )
    return int(match.group(1)), match.group(2)


def _check_mac(mac: str) -> str:
    from .provision.profile import InvalidDeviceConfig, normalize_mac
    from .store import InvalidInputError

    try:
        return normalize_mac(mac)
    except InvalidDeviceConfig as exc:
        raise InvalidInputError(
            f"{exc}; give 12 hex digits, e.g. 0004f2abcdef or 00:04:F2:AB:CD:EF"
        ) from None


def read_device_csv(path: Path, tenant: str) -> tuple[list[DeviceRow], list[RowProblem]]:
    """The file's rows as DeviceRows (each with its line number) and the problems found in
    rows the store cannot see (too many cells). File-level problems raise CommandError."""
    from .store.repos import DeviceRow, RowProblem

    try:
        # utf-8-sig: spreadsheet programs start their CSV exports with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{path} is not UTF-8 text; save it as CSV UTF-8") from None
    reader = csv.reader(text.splitlines(keepends=True))
    rows: list[DeviceRow] = []
    problems: list[RowProblem] = []
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            if header is None:
                header = _csv_header(path, cells)
                continue
            if len(cells) > len(header):
                problems.append(
                    RowProblem(line, f"{len(cells)} cells, but the header has {len(header)}")
                )
                continue
            values = dict(zip(header, (c.strip() for c in cells), strict=False))
            lines = [
                (int(name[4:]), value)
                for name, value in values.items()
                if name.startswith("line") and value
            ]
            rows.append(
                DeviceRow(
                    mac=values.get("mac", ""),
                    tenant=tenant,
                    model=values.get("model") or None,
                    label=values.get("label") or None,
                    lines=lines,
                    source_line=line,
                )
            )
    except csv.Error as exc:
        raise CommandError(f"{path}, line {reader.line_num}: not valid CSV ({exc})") from None
    if header is None or (not rows and not problems):
        raise CommandError(f"{path} holds no devices: give a header line and one row per device")
    return rows, problems


def _csv_header(path: Path, cells: Sequence[str]) -> list[str]:
    names = [cell.strip().lower() for cell in cells]
    for name in names:
        match = _LINE_COLUMN.fullmatch(name)
        if name not in _CSV_COLUMNS and (match is None or not 1 <= int(match.group(1)) <= 255):
            raise CommandError(
                f"{path}: unknown column {name!r} in the header; use mac, model, label, "
                "line1, line2, ..."
            )
        if names.count(name) > 1:
            raise CommandError(f"{path}: column {name!r} appears twice in the header")
    if "mac" not in names or not any(n.startswith("line") for n in names):
        raise CommandError(f"{path}: the header needs a mac column and at least a line1 column")
    return names


def _print_row_problems(path: Path, problems: Sequence[RowProblem]) -> None:
    for problem in sorted(problems, key=lambda p: p.line):
        print(f"error: {path}, line {problem.line}: {problem.message}", file=sys.stderr)


# --- output -------------------------------------------------------------------------------


def _edge(args: argparse.Namespace) -> Edge:
    from .config import load_settings
    from .provision.inventory import edge_from_settings

    return edge_from_settings(load_settings(getattr(args, "config", None)))


async def _assess(
    store: Store, device: DeviceInfo, edge: Edge, profile: ProfileInfo | None = None
) -> Assessment:
    from .provision.inventory import assess

    return await assess(store, device, edge, profile)


def _device_json(device: DeviceInfo, a: Assessment) -> dict[str, Any]:
    return {
        "mac": device.mac,
        "tenant": device.tenant,
        "vendor": device.vendor,
        "model": device.model,
        "label": device.label,
        "lines": [{"key": line.key, "aor": line.aor} for line in device.lines],
        "overrides": dict(device.overrides),
        "config": a.state,
        "config_problem": a.problem,
        "config_file": a.path,
        "desired_version": a.desired_version,
        "last_fetched_version": a.last_version,
        "last_fetched_at": None if a.last_at is None else _iso(a.last_at),
        "created_at": device.created_at.isoformat(),
        "updated_at": device.updated_at.isoformat(),
    }


def _fetch_json(f: FetchInfo) -> dict[str, Any]:
    return {
        "at": _iso(f.at),
        "source": f.source,
        "path": f.path,
        "status": f.status,
        "version": f.version,
        "user_agent": f.user_agent,
        "model": f.model,
        "firmware": f.firmware,
        "note": f.note,
    }


def _upload_json(u: UploadInfo) -> dict[str, Any]:
    return {
        "at": _iso(u.at),
        "kind": u.kind,
        "path": u.path,
        "size": u.size,
        "weakening": [
            {"parameter": w.parameter, "reason": w.reason, "value": w.value} for w in u.weakening
        ],
    }


def _print_device(out: dict[str, Any]) -> None:
    from .cli import escape

    rows: list[tuple[str, str]] = [
        ("MAC", out["mac"]),
        ("Tenant", out["tenant"]),
        ("Vendor", out["vendor"]),
        ("Model", out["model"] or "-"),
        ("Label", out["label"] or "-"),
    ]
    rows += [("Line", f"{line['key']}  {line['aor']}") for line in out["lines"]]
    rows += [("Override", f"{k}={v}") for k, v in out["overrides"].items()]
    config = out["config"]
    if out["config_problem"]:
        config += f" ({out['config_problem']})"
    rows += [
        ("Config", config),
        ("Desired version", out["desired_version"] or "-"),
        ("Fetched version", out["last_fetched_version"] or "-"),
        ("Last fetch", out["last_fetched_at"] or "-"),
        ("Flagged", "-" if not out.get("last_note") else _flag(out["last_note"])),
        ("Created", out["created_at"]),
        ("Updated", out["updated_at"]),
    ]
    if "admin_password" in out:
        rows += [
            ("Admin password", out["admin_password"]),
            ("Provisioning password", out["provisioning_password"]),
        ]
    width = max(len(label) for label, _ in rows) + 2
    text = "".join(f"{label:<{width}}{value}\n" for label, value in rows)
    if out["recent_fetches"]:
        text += "Recent fetches:\n"
        for f in out["recent_fetches"]:
            agent = escape(f["user_agent"]) if f["user_agent"] else "-"
            text += f"  {f['at']}  {f['source']}  {f['status']}  {escape(f['path'])}  {agent}\n"
    if out["recent_uploads"]:
        text += "Recent uploads:\n"
        for u in out["recent_uploads"]:
            text += f"  {u['at']}  {u['kind']}  {u['size']} bytes  {escape(u['path'])}\n"
            for w in u["weakening"]:
                value = "" if w["value"] is None else f" = {escape(w['value'])}"
                text += f"    weakens: {escape(w['parameter'])}{value} ({w['reason']})\n"
    sys.stdout.write(text)


def _show_profile(profile: ProfileInfo, *, as_json: bool) -> None:
    polling = None
    if profile.polling is not None:
        p = profile.polling
        polling = {
            "mode": p.mode,
            "period": p.period,
            "time": p.time,
            "time_random_end": p.time_random_end,
        }
    out: dict[str, Any] = {
        "tenant": profile.tenant,
        "web_ui": profile.web_ui,
        "invite_validation": profile.invite_validation,
        "checksync_validation": profile.checksync_validation,
        "polling": polling,
        "resync_reboots": profile.resync_reboots,
        "updated_at": None if profile.updated_at is None else profile.updated_at.isoformat(),
    }
    if as_json:
        _print_json(out)
        return
    reboots = {None: "phone default", True: "on", False: "off"}[profile.resync_reboots]
    rows = [
        ("Tenant", profile.tenant),
        ("Web UI", "on" if profile.web_ui else "off"),
        ("INVITE validation", profile.invite_validation),
        ("check-sync validation", profile.checksync_validation),
        ("Polling", "phone default" if polling is None else _polling_text(polling)),
        ("Resync reboots", reboots),
        ("Updated", out["updated_at"] or "never (defaults)"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    sys.stdout.write("".join(f"{label:<{width}}{value}\n" for label, value in rows))


def _polling_text(polling: dict[str, Any]) -> str:
    if polling["mode"] == "rel":
        return f"every {polling['period']} s"
    end = f"-{polling['time_random_end']}" if polling["time_random_end"] else ""
    return f"{polling['mode']} at {polling['time']}{end}"


def _flag(noted: dict[str, Any]) -> str:
    from .cli import escape

    return f"{escape(noted['note'])} ({noted['at']})"


def _short(version: str | None) -> str:
    return "-" if version is None else version[:VERSION_SHOWN]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
