"""The `spitguard` command line.

Each subcommand (or group of subcommands) is registered by one `add_*` function listed in
`COMMANDS`: it adds its parser to the subparsers and sets `handler`, a function taking the
parsed arguments and returning the exit code. New groups (serve, tenant, line, device, bans,
events, admin, audit) are added the same way, without touching `main`.
"""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from . import __version__
from .cli_admin import add_admin_commands
from .cli_audit import add_audit
from .cli_devices import add_device_commands
from .cli_guard import add_guard_commands
from .cli_inventory import add_inventory_commands
from .cli_serve import add_serve
from .sip import (
    DEFAULT_LIMITS,
    ContactStar,
    NameAddr,
    Request,
    Response,
    SipParseError,
    SipUri,
    Uri,
    Via,
    parse,
)
from .sip.auth import parse_challenge, parse_credentials
from .sip.headers import canonical_name

if TYPE_CHECKING:
    Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

Handler: TypeAlias = Callable[[argparse.Namespace], int]

EXIT_OK = 0
EXIT_BLOCKED = 1  # inspect --source: the guard would drop, reject or ban it
EXIT_ERROR = 2  # bad input, unreadable file or usage error (argparse uses 2 as well)

EXIT_CODES_HELP = f"""\
exit codes:
  {EXIT_OK}  success (with --source: the guard would pass the message)
  {EXIT_BLOCKED}  with --source: the guard would drop, reject or ban the message
  {EXIT_ERROR}  malformed input, unreadable file or usage error
"""

Json: TypeAlias = dict[str, Any]


# --- main ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spitguard",
        description="SIP outbound proxy and registrar keeping scanners away from desk phones.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"spitguard {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: keep main() -> int
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_ERROR
    handler: Handler = args.handler
    return handler(args)


# --- inspect ------------------------------------------------------------------------------

INSPECT_HELP = """\
Read one raw SIP message (from FILE, or stdin for "-") and print what the parser sees.

Credentials are never printed: for Authorization and Proxy-Authorization only the scheme,
username, realm and algorithm are shown, and passwords in URIs are masked. Control and
other non-printable characters are shown escaped (\\xNN, \\uNNNN; a backslash as \\\\).

Convenience for hand-written files: a file containing no CR at all has its bare LF line
ends converted to CRLF before parsing (this changes the body length accordingly).
"""

DEFECT_HELP: dict[str, str] = {
    "branch:missing": "the top Via has no branch parameter (RFC 2543 style client)",
    "branch:rfc2543": "the top Via branch lacks the z9hG4bK magic cookie (RFC 2543 matching)",
    "branch:empty": "the top Via branch is only the z9hG4bK magic cookie: no transaction id",
    "uri:scheme": "the Request-URI scheme is not sip, sips or tel (RFC 3261: 416)",
    "missing:max-forwards": "the request has no Max-Forwards header (RFC 3261 §8.1.1.6)",
}


def explain_defect(code: str) -> str:
    """One line of plain English for a `Message.defects` code."""
    if code in DEFECT_HELP:
        return DEFECT_HELP[code]
    kind, _, header = code.partition(":")
    if kind == "missing":
        return f"the mandatory {canonical_name(header)} header is missing (RFC 3261: 400)"
    if kind == "multiple":
        return f"{canonical_name(header)} may appear only once but appears more (RFC 3261: 400)"
    return "no explanation available for this defect code"


def add_inspect(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="show how one raw SIP message parses",
        description=INSPECT_HELP,
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", metavar="FILE", help='file holding one SIP message, or "-" for stdin')
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--source",
        metavar="IP[:PORT]",
        help="also show the guard's verdict for this message from this source "
        "(exit 0 pass, 1 drop/reject/ban)",
    )
    p.add_argument("--config", metavar="FILE", type=Path, default=None, help="TOML file")
    p.set_defaults(handler=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    try:
        data = read_input(args.file)
    except OSError as exc:
        name = "stdin" if args.file == "-" else args.file
        reason = exc.strerror or type(exc).__name__
        print(f"spitguard inspect: cannot read {escape(name)}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    converted = b"\r" not in data and b"\n" in data
    if converted:
        data = data.replace(b"\n", b"\r\n")
    try:
        msg = parse(data)
    except SipParseError as exc:
        report_malformed(exc, as_json=args.json)
        return EXIT_ERROR
    summary = summarize(msg, data, converted)
    code = EXIT_OK
    if args.source is not None:
        from .config import ConfigError
        from .inspect_verdict import evaluate

        try:
            verdict, group = evaluate(msg, data, args.source, args.config)
        except (ConfigError, ValueError) as exc:
            print(f"spitguard inspect: {exc}", file=sys.stderr)
            return EXIT_ERROR
        summary["verdict"] = {
            "action": verdict.action,
            "reason": verdict.reason,
            "details": list(verdict.details),
            "code": verdict.code,
            "source": args.source,
            "trusted_group": group,
        }
        code = EXIT_OK if verdict.passes else EXIT_BLOCKED
    if args.json:
        emit(sys.stdout, json.dumps(summary, indent=2) + "\n")
    else:
        emit(sys.stdout, render_text(summary))
        if "verdict" in summary:
            v = summary["verdict"]
            why = f" ({', '.join(v['details'])})" if v["details"] else ""
            group_text = f"trusted: {v['trusted_group']}" if v["trusted_group"] else "untrusted"
            emit(
                sys.stdout,
                f"Verdict: {v['action']} ({v['reason']}){why}; source {v['source']} "
                f"is {group_text}\n",
            )
    return code


def read_input(name: str) -> bytes:
    # One byte over the cap is enough for parse() to report too_large on huge input.
    cap = DEFAULT_LIMITS.max_message_size + 1
    if name == "-":
        return sys.stdin.buffer.read(cap)
    with open(name, "rb") as fh:
        return fh.read(cap)


def report_malformed(exc: SipParseError, *, as_json: bool) -> None:
    detail = safe_detail(exc.detail)
    if as_json:
        out = {"error": "malformed", "reason": escape(exc.reason), "detail": detail}
        emit(sys.stdout, json.dumps(out, indent=2) + "\n")
    else:
        emit(sys.stderr, f"malformed: {escape(exc.reason)} ({detail})\n")


def safe_detail(detail: str) -> str:
    # Details quote up to 60 characters of the offending text; never let that be a digest.
    lowered = detail.lower()
    if any(word in lowered for word in ("response=", "nonce=", "authoriz")):
        return "<redacted>"
    return escape(detail)


# --- building the summary ---------------------------------------------------------------


def summarize(msg: Request | Response, data: bytes, converted: bool) -> Json:
    """Everything `inspect` shows, as JSON-ready values (strings already escaped)."""
    errors: list[Json] = []
    out: Json = {"kind": msg.kind}
    if isinstance(msg, Request):
        out["method"] = escape(msg.method)
        out["request_uri"] = uri_text(msg.uri)
    else:
        out["status"] = msg.status
        out["reason"] = escape(msg.reason)
    raw = msg.to_bytes()
    out["size"] = len(raw)
    out["trailing_bytes"] = len(data) - leading_crlfs(data) - len(raw)
    out["line_ends_converted"] = converted
    out["via"] = [via_info(v) for v in msg.vias]
    out["from"] = guarded(errors, "from", lambda: addr_info(msg.from_))
    out["to"] = guarded(errors, "to", lambda: addr_info(msg.to))
    out["call_id"] = guarded(errors, "call-id", lambda: escape(msg.call_id))
    out["cseq"] = guarded(errors, "cseq", lambda: cseq_info(msg))
    out["max_forwards"] = msg.max_forwards
    out["contacts"] = contacts_info(msg, errors)
    out["expires"] = msg.expires
    out["routes"] = [addr_text(a) for a in msg.routes]
    out["record_routes"] = [addr_text(a) for a in msg.record_routes]
    out["user_agent"] = opt_escape(msg.user_agent)
    out["server"] = opt_escape(msg.server)
    out["event"] = guarded(errors, "event", lambda: opt_str(msg.event))
    out["content_type"] = guarded(errors, "content-type", lambda: opt_str(msg.content_type))
    out["body_length"] = len(msg.body)
    out["credentials"] = credentials_info(msg, errors)
    out["challenges"] = challenges_info(msg, errors)
    out["defects"] = [{"code": escape(d), "explanation": explain_defect(d)} for d in msg.defects]
    out["header_errors"] = errors
    return out


def leading_crlfs(data: bytes) -> int:
    """Length of the CRLFs before the start line, which the parser skips (RFC 3261 §7.5)."""
    n = 0
    while data.startswith(b"\r\n", n):
        n += 2
    return n


def guarded(errors: list[Json], header: str, get: Callable[[], Any]) -> Any:
    """A lazily parsed header: its value, or None (absent or invalid, noted in `errors`)."""
    try:
        return get()
    except SipParseError as exc:
        if exc.reason != "missing_header":
            errors.append({"header": header, "reason": escape(exc.reason)})
        return None


def via_info(via: Via) -> Json:
    rport: int | bool | None = via.rport if via.rport is not None else via.wants_rport or None
    return {
        "transport": escape(via.transport),
        "sent_by": escape(via.sent_by),
        "branch": opt_escape(via.branch),
        "received": opt_escape(via.received),
        "rport": rport,  # a number, true when requested without a value, or null
    }


def addr_info(addr: NameAddr) -> Json:
    return {
        "display": opt_escape(addr.display),
        "uri": uri_text(addr.uri),
        "tag": opt_escape(addr.tag),
    }


def cseq_info(msg: Request | Response) -> Json:
    cseq = msg.cseq
    return {"number": cseq.number, "method": escape(cseq.method)}


def contacts_info(msg: Request | Response, errors: list[Json]) -> list[Json] | str:
    contacts = msg.contacts
    if isinstance(contacts, ContactStar):
        return "*"
    out: list[Json] = []
    for c in contacts:
        info = addr_info(c)
        del info["tag"]
        info["expires"] = contact_expires(c, errors)
        info["q"] = c.q
        info["sip_instance"] = opt_escape(c.sip_instance)
        info["reg_id"] = c.reg_id
        out.append(info)
    return out


def contact_expires(contact: NameAddr, errors: list[Json]) -> int | None:
    return guarded(errors, "contact", lambda: contact.expires)  # type: ignore[no-any-return]


def credentials_info(msg: Request | Response, errors: list[Json]) -> list[Json]:
    """Authorization / Proxy-Authorization without anything secret-derived."""
    out: list[Json] = []
    for header in ("authorization", "proxy-authorization"):
        for value in msg.get_all(header):
            try:
                cred = parse_credentials(value)
            except SipParseError as exc:
                errors.append({"header": header, "reason": escape(exc.reason)})
                continue
            out.append(
                {
                    "header": canonical_name(header),
                    "scheme": escape(cred.scheme),
                    "username": opt_escape(cred.username),
                    "realm": opt_escape(cred.realm),
                    "algorithm": opt_escape(cred.algorithm),
                }
            )
    return out


def challenges_info(msg: Request | Response, errors: list[Json]) -> list[Json]:
    """WWW-/Proxy-Authenticate: scheme, realm, algorithm, qop (nonce and opaque left out)."""
    out: list[Json] = []
    for header in ("www-authenticate", "proxy-authenticate"):
        for value in msg.get_all(header):
            try:
                ch = parse_challenge(value)
            except SipParseError as exc:
                errors.append({"header": header, "reason": escape(exc.reason)})
                continue
            out.append(
                {
                    "header": canonical_name(header),
                    "scheme": escape(ch.scheme),
                    "realm": opt_escape(ch.realm),
                    "algorithm": opt_escape(ch.algorithm),
                    "qop": [escape(q) for q in ch.qop_options],
                }
            )
    return out


PASSWORD_MASK = "***"  # noqa: S105 - what replaces a password, not one


def masked(uri: Uri) -> Uri:
    """The URI with any password replaced: a password in a URI is a credential too."""
    if isinstance(uri, SipUri) and uri.password is not None:
        return uri._replace(password=PASSWORD_MASK)
    return uri


def uri_text(uri: Uri) -> str:
    return escape(str(masked(uri)))


def addr_text(addr: NameAddr) -> str:
    return escape(str(addr._replace(uri=masked(addr.uri))))


def opt_str(value: object) -> str | None:
    return None if value is None else escape(str(value))


def opt_escape(text: str | None) -> str | None:
    return None if text is None else escape(text)


# Unicode categories that must not reach a terminal raw: controls, format characters (bidi
# overrides), surrogates (undecodable bytes), private use, unassigned, line/paragraph seps.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def escape(text: str) -> str:
    """Printable form of untrusted text: unsafe characters as \\xNN / \\uNNNN escapes."""
    if text.isprintable() and "\\" not in text:
        return text
    out: list[str] = []
    for c in text:
        code = ord(c)
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")  # a byte that was not UTF-8
        elif code < 0x100 and (code < 0x20 or 0x7F <= code < 0xA0):
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(c) in _UNSAFE_CATEGORIES:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(c)
    return "".join(out)


# --- text rendering -----------------------------------------------------------------------


def render_text(s: Json) -> str:
    lines: list[tuple[str, str]] = []
    if s["kind"] == "request":
        lines.append(("Request", f"{s['method']} {s['request_uri']}"))
    else:
        lines.append(("Response", f"{s['status']} {s['reason']}"))
    size = f"{s['size']} bytes"
    if s["trailing_bytes"]:
        size += f" ({s['trailing_bytes']} trailing bytes ignored)"
    if s["line_ends_converted"]:
        size += " (bare LF line ends converted to CRLF)"
    lines.append(("Size", size))
    for i, via in enumerate(s["via"]):
        lines.append((f"Via[{i}]", via_line(via)))
    for label, key in (("From", "from"), ("To", "to")):
        lines.append((label, addr_line(s[key])))
    lines.append(("Call-ID", or_absent(s["call_id"])))
    cseq = s["cseq"]
    lines.append(("CSeq", f"{cseq['number']} {cseq['method']}" if cseq else "(absent)"))
    if s["kind"] == "request" or s["max_forwards"] is not None:
        lines.append(("Max-Forwards", or_absent(s["max_forwards"])))
    lines.extend(contact_lines(s["contacts"]))
    if s["expires"] is not None:
        lines.append(("Expires", str(s["expires"])))
    lines.extend(("Route", r) for r in s["routes"])
    lines.extend(("Record-Route", r) for r in s["record_routes"])
    for label, key in (("User-Agent", "user_agent"), ("Server", "server"), ("Event", "event")):
        if s[key] is not None:
            lines.append((label, s[key]))
    if s["content_type"] is not None:
        lines.append(("Content-Type", s["content_type"]))
    lines.append(("Body", f"{s['body_length']} bytes"))
    lines.extend(
        (c["header"], params_line(c, "username", "realm", "algorithm")) for c in s["credentials"]
    )
    lines.extend(
        (c["header"], params_line(c, "realm", "algorithm", "qop")) for c in s["challenges"]
    )
    lines.extend(("Bad header", f"{e['header']}: {e['reason']}") for e in s["header_errors"])
    width = max(len(label) for label, _ in lines) + 2
    text = "".join(f"{label:<{width}}{value}\n" for label, value in lines)
    if s["defects"]:
        text += "Defects:\n" + "".join(f"  {d['code']}: {d['explanation']}\n" for d in s["defects"])
    return text


def via_line(via: Json) -> str:
    parts = [via["transport"], via["sent_by"]]
    for key in ("branch", "received"):
        if via[key] is not None:
            parts.append(f"{key}={via[key]}")
    if via["rport"] is True:
        parts.append("rport")
    elif via["rport"] is not None:
        parts.append(f"rport={via['rport']}")
    return " ".join(parts)


def addr_line(addr: Json | None) -> str:
    if addr is None:
        return "(absent)"
    text = f"<{addr['uri']}>"
    if addr["display"] is not None:
        # Backslashes are already doubled by escape(), so \" below is unambiguous.
        quoted = addr["display"].replace('"', '\\"')
        text = f'"{quoted}" {text}'
    if addr.get("tag") is not None:
        text += f" tag={addr['tag']}"
    return text


def contact_lines(contacts: list[Json] | str) -> Iterable[tuple[str, str]]:
    if isinstance(contacts, str):
        yield ("Contact", "* (remove all bindings)")
        return
    for c in contacts:
        text = addr_line(c)
        for key, label in (
            ("expires", "expires"),
            ("q", "q"),
            ("sip_instance", "+sip.instance"),
            ("reg_id", "reg-id"),
        ):
            if c[key] is not None:
                text += f" {label}={c[key]}"
        yield ("Contact", text)


def params_line(info: Json, *keys: str) -> str:
    parts = [info["scheme"]]
    for key in keys:
        value = info[key]
        if value:
            parts.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
    return " ".join(parts)


def or_absent(value: object) -> str:
    return "(absent)" if value is None else str(value)


def emit(stream: IO[str], text: str) -> None:
    """Write without failing on a terminal encoding that cannot show some characters."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    stream.write(text.encode(encoding, "backslashreplace").decode(encoding))
    stream.flush()


COMMANDS: list[Callable[[Subparsers], None]] = [
    add_inspect,
    add_serve,
    add_inventory_commands,
    add_guard_commands,
    add_device_commands,
    add_admin_commands,
    add_audit,
]
