"""RFC 3261 §25 lexical helpers shared by the header and URI parsers.

Every scanner here is a single left-to-right pass (or a `re` pattern without nested
quantifiers), so the cost of garbage is linear in its length: the parser is the first
thing every packet from the Internet meets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import SipParseError

# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# gen-value = token / host / quoted-string; hosts add ':' and brackets (IPv6 received=).
_PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]/]+")
# URI params (RFC 3261 §25.1): pname/pvalue = 1*paramchar.
_URI_PARAM_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+")
_HOST_RE = re.compile(r"[A-Za-z0-9\-.]+")
_IPV6_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]")

Params = Mapping[str, str | None]
EMPTY_PARAMS: Params = {}


def is_token(text: str) -> bool:
    return TOKEN_RE.fullmatch(text) is not None


def read_quoted(text: str, start: int) -> int:
    """Return the index just past the closing quote of the quoted string at `start`."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            return i + 1
        if c == "\\":
            i += 2
        else:
            i += 1
    raise SipParseError("unterminated_quote", text[start : start + 40])


def unquote(text: str) -> str:
    """Inner value of a quoted string, with quoted-pairs resolved."""
    inner = text[1:-1]
    if "\\" not in inner:
        return inner
    out: list[str] = []
    i = 0
    n = len(inner)
    while i < n:
        c = inner[i]
        if c == "\\" and i + 1 < n:
            out.append(inner[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quoted strings and angle brackets."""
    if '"' not in text:
        parts = text.split(sep)
        if "<" not in text:
            return parts
        # Without quotes only the brackets matter: glue back the pieces split inside
        # <...> (a separator splits where the running bracket depth is zero, as below).
        # Route and Record-Route lines take this path, and a loop per character is slow.
        out: list[str] = []
        depth = 0
        for part in parts:
            if depth == 0:
                out.append(part)
            else:
                out[-1] += sep + part
            depth += part.count("<") - part.count(">")
        return out
    parts = []
    depth = 0
    last = 0
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = read_quoted(text, i)
            continue
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[last:i])
            last = i + 1
        i += 1
    parts.append(text[last:])
    return parts


def split_comma_values(text: str) -> list[str]:
    """Comma-separated header values, respecting quotes and <...>; empty values are errors."""
    parts = split_top(text, ",")
    out = [p.strip() for p in parts]
    for p in out:
        if not p:
            raise SipParseError("empty_value", text[:60])
    return out


# Fast path for the common shape (no quotes, no whitespace). Names and values exclude
# ';' and '=', so each repetition splits one way only: linear, no backtracking blow-up.
_TOK = r"[A-Za-z0-9\-.!%*_+`'~]+"
_HVAL = r"[A-Za-z0-9\-.!%*_+`'~:\[\]/]+"
_UCH = r"[A-Za-z0-9\-_.!~*'()%\[\]/:&+$]+"
_QSTR = r'"[^"\\\r\n]*"'
_HDR_PARAMS_FAST = re.compile(
    f"{_TOK}(?:=(?:{_HVAL}|{_QSTR}))?(?:;{_TOK}(?:=(?:{_HVAL}|{_QSTR}))?)*"
)
_URI_PARAMS_FAST = re.compile(f"{_UCH}(?:={_UCH})?(?:;{_UCH}(?:={_UCH})?)*")


def parse_param_text(
    text: str, *, uri: bool = False, max_params: int = 64
) -> dict[str, str | None]:
    """Params after the first ';' (`a=b;c;d=e`)."""
    fast = _URI_PARAMS_FAST if uri else _HDR_PARAMS_FAST
    if fast.fullmatch(text) is not None:
        params: dict[str, str | None] = {}
        # Quoted values in the fast shape hold no ';' only if there is no quote at all.
        segs = text.split(";") if '"' not in text else split_top(text, ";")
        if len(segs) > max_params:
            raise SipParseError("too_many_params", str(len(segs)))
        for seg in segs:
            name, eq, value = seg.partition("=")
            params[name.lower()] = value if eq else None
        return params
    return parse_params(split_top(text, ";") if not uri else text.split(";"), uri=uri)


def parse_params(
    segments: list[str], start: int = 0, max_params: int = 64, *, uri: bool = False
) -> dict[str, str | None]:
    """`;name=value` params already split on ';'. Names are case-insensitive (lowercased).

    Header params follow generic-param; with `uri`, URI params follow paramchar."""
    name_re = _URI_PARAM_RE if uri else TOKEN_RE
    value_re = _URI_PARAM_RE if uri else _PARAM_VALUE_RE
    params: dict[str, str | None] = {}
    if len(segments) - start > max_params:
        raise SipParseError("too_many_params", str(len(segments) - start))
    for seg in segments[start:]:
        name, eq, value = seg.partition("=")
        name = name.strip()
        if not name or name_re.fullmatch(name) is None:
            raise SipParseError("bad_param", seg[:60])
        if eq:
            value = value.strip()
            if not value:
                raise SipParseError("bad_param", seg[:60])
            if value[0] == '"' and not uri:
                if read_quoted(value, 0) != len(value):
                    raise SipParseError("bad_param", seg[:60])
            elif value_re.fullmatch(value) is None:
                raise SipParseError("bad_param", seg[:60])
            params[name.lower()] = value
        else:
            params[name.lower()] = None
    return params


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def check_host(host: str) -> str:
    """Validate a hostname, IPv4 address or bracketed IPv6 reference; return it."""
    if not host:
        raise SipParseError("bad_host", "empty host")
    if host[0] == "[":
        if _IPV6_RE.fullmatch(host) is None:
            raise SipParseError("bad_host", host[:60])
    elif _HOST_RE.fullmatch(host) is None:
        raise SipParseError("bad_host", host[:60])
    return host


def split_hostport(text: str) -> tuple[str, int | None]:
    """`host[:port]` with IPv6 references; ports must be 0..65535."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError("bad_host", text[:60])
        host = text[: end + 1]
        rest = text[end + 1 :]
        if not rest:
            return check_host(host), None
        if rest[0] != ":":
            raise SipParseError("bad_host", text[:60])
        port_text = rest[1:]
    else:
        host, colon, port_text = text.partition(":")
        if not colon:
            return check_host(host), None
    if not port_text.isdigit() or not port_text.isascii() or len(port_text) > 5:
        raise SipParseError("bad_port", text[:60])
    port = int(port_text)
    if port > 65535:
        raise SipParseError("bad_port", text[:60])
    return check_host(host), port


def parse_uint(text: str, limit: int, reason: str) -> int:
    """Non-negative decimal integer, at most `limit` (leading zeros allowed, as RFC 4475)."""
    text = text.strip()
    if not text or not text.isdigit() or not text.isascii() or len(text) > 20:
        raise SipParseError(reason, text[:40])
    value = int(text)
    if value > limit:
        raise SipParseError(reason, text[:40])
    return value
