"""Typed SIP header values: Via, name-addr (From/To/Contact/Route...), CSeq.

Values are immutable NamedTuples (cheap to build on the hot path); change one with
`._replace(...)` and put it back through the message's header API.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple

from .errors import SipParseError
from .grammar import (
    EMPTY_PARAMS,
    TOKEN_RE,
    Params,
    format_params,
    parse_param_text,
    parse_params,
    parse_uint,
    quote,
    read_quoted,
    split_comma_values,
    split_hostport,
    split_top,
    unquote,
)
from .uri import SipUri, Uri, parse_uri

BRANCH_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**31 - 1  # RFC 3261 §8.1.1.5: "MUST be less than 2**31"
MAX_UINT32 = 2**32 - 1

# Compact forms (RFC 3261 §7.3.3 and later RFCs) -> full lower-case name. Read-only:
# the C fast path of parse() takes its copy once, at import.
COMPACT: Mapping[str, str] = MappingProxyType(
    {
        "i": "call-id",
        "m": "contact",
        "e": "content-encoding",
        "l": "content-length",
        "c": "content-type",
        "f": "from",
        "s": "subject",
        "k": "supported",
        "t": "to",
        "v": "via",
        "o": "event",
        "u": "allow-events",
        "r": "refer-to",
        "b": "referred-by",
        "j": "reject-contact",
        "a": "accept-contact",
        "d": "request-disposition",
        "x": "session-expires",
        "y": "identity",
    }
)

# How canonical serialization spells header names (lower-case key -> wire name).
CANONICAL_NAMES: dict[str, str] = {
    "call-id": "Call-ID",
    "cseq": "CSeq",
    "www-authenticate": "WWW-Authenticate",
    "mime-version": "MIME-Version",
    "rack": "RAck",
    "rseq": "RSeq",
    "sip-etag": "SIP-ETag",
    "sip-if-match": "SIP-If-Match",
}


def canonical_name(key: str) -> str:
    name = CANONICAL_NAMES.get(key)
    if name is None:
        name = _capitalized(key)
    return name


# Serializing a modified message names every header line; headers outside the table
# (Subject, Allow, X-...) recur in every message of a call, so spelling them once pays.
# Bounded, as header names come from the network.
@lru_cache(maxsize=1024)
def _capitalized(key: str) -> str:
    return "-".join(p[:1].upper() + p[1:] for p in key.split("-"))


def header_key(name: str) -> str:
    """Lower-case full header name for a name as written on the wire."""
    key = name.lower()
    return COMPACT.get(key, key) if len(key) == 1 else key


class Via(NamedTuple):
    """One Via value: `SIP/2.0/UDP host:port;branch=...;rport;received=...`."""

    protocol: str  # "SIP/2.0"
    transport: str  # upper-case: UDP, TCP, TLS, WS, WSS, SCTP or an unknown token
    host: str
    port: int | None
    params: Params

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @property
    def rport(self) -> int | None:
        """The rport value filled in by a server; None when absent or empty."""
        v = self.params.get("rport")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def wants_rport(self) -> bool:
        return "rport" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_params(self.params)}"


_VIA_FAST = re.compile(
    r"SIP/2\.0/([A-Za-z0-9\-.!%*_+`'~]+) ([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::([0-9]{1,5}))?(?:;(.*))?"
)


@lru_cache(maxsize=8192)
def parse_via(value: str) -> Via:
    """Parse one Via value. Cached like `parse_name_addr`: a request's Via comes back in
    each of its responses, and the result is immutable."""
    m = _VIA_FAST.fullmatch(value)
    if m is not None:
        transport, host, port_text, ptext = m.groups()
        port = None
        if port_text is not None:
            port = int(port_text)
            if port > 65535:
                raise SipParseError("bad_port", value[:60])
        params = parse_param_text(ptext) if ptext is not None else EMPTY_PARAMS
        return Via("SIP/2.0", transport.upper(), host, port, params)
    return _parse_via_slow(value)


def _parse_via_slow(value: str) -> Via:
    segments = split_top(value, ";") if '"' in value else value.split(";")
    sent = segments[0]
    proto_name, s1, rest = sent.partition("/")
    version, s2, rest = rest.partition("/")
    if not s1 or not s2:
        raise SipParseError("bad_via", value[:60])
    rest = rest.strip()
    transport = rest
    sent_by = ""
    for i, c in enumerate(rest):
        if c == " " or c == "\t":
            transport = rest[:i]
            sent_by = rest[i:].strip()
            break
    proto_name = proto_name.strip()
    version = version.strip()
    if (
        TOKEN_RE.fullmatch(proto_name) is None
        or TOKEN_RE.fullmatch(version) is None
        or TOKEN_RE.fullmatch(transport) is None
        or not sent_by
    ):
        raise SipParseError("bad_via", value[:60])
    host, port = split_hostport(sent_by)
    params = parse_params(segments, 1) if len(segments) > 1 else EMPTY_PARAMS
    protocol = f"{proto_name}/{version}"
    if protocol.upper() != "SIP/2.0":
        raise SipParseError("bad_version", protocol[:20])
    return Via("SIP/2.0", transport.upper(), host, port, params)


def parse_vias(value: str) -> list[Via]:
    if "," not in value:
        return [parse_via(value)]
    return [parse_via(v) for v in split_comma_values(value)]


class NameAddr(NamedTuple):
    """name-addr or addr-spec with header parameters (From, To, Contact, Route...)."""

    display: str | None  # unquoted display name, None when absent
    uri: Uri
    params: Params

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @property
    def expires(self) -> int | None:
        v = self.params.get("expires")
        return None if v is None else parse_uint(v, MAX_UINT32, "bad_expires")

    @property
    def q(self) -> float | None:
        v = self.params.get("q")
        try:
            return None if v is None else float(v)
        except ValueError:
            return None

    @property
    def sip_instance(self) -> str | None:
        v = self.params.get("+sip.instance")
        if v is None:
            return None
        if v.startswith('"'):
            v = unquote(v)
        return v.strip("<>")

    @property
    def reg_id(self) -> int | None:
        v = self.params.get("reg-id")
        return int(v) if v is not None and v.isdigit() else None

    @property
    def sip_uri(self) -> SipUri | None:
        return self.uri if isinstance(self.uri, SipUri) else None

    def __str__(self) -> str:
        if self.display is not None:
            return f"{quote(self.display)} <{self.uri}>{format_params(self.params)}"
        return f"<{self.uri}>{format_params(self.params)}"


def _check_display_tokens(display: str, value: str) -> None:
    # Unquoted display name: *(token LWS). A comma or other separator means garbage.
    for word in display.split():
        if TOKEN_RE.fullmatch(word) is None:
            raise SipParseError("bad_display_name", value[:60])


# `"Display" <uri>;params` or `<uri>;params` with a plain quoted display name.
_NAME_ADDR_FAST = re.compile(r'(?:"([^"\\\r\n]*)" ?)?<([^<>"\s]+)>(?:;(.*))?')


@lru_cache(maxsize=8192)
def parse_name_addr(value: str, max_uri: int = 2048) -> NameAddr:
    """Parse a name-addr or addr-spec with header params.

    Cached: the same Contact, Route and To values come back with every REGISTER and
    call, and the result is immutable. A flood of unique values only costs evictions.
    """
    m = _NAME_ADDR_FAST.fullmatch(value)
    if m is not None:
        display, uri_text, ptext = m.groups()
        params = parse_param_text(ptext) if ptext is not None else EMPTY_PARAMS
        return NameAddr(display, parse_uri(uri_text, max_uri), params)
    return _parse_name_addr_slow(value, max_uri)


def _parse_name_addr_slow(value: str, max_uri: int) -> NameAddr:
    value = value.strip()
    if not value:
        raise SipParseError("empty_value", "")
    display: str | None = None
    if value[0] == '"':
        end = read_quoted(value, 0)
        display = unquote(value[:end])
        rest = value[end:].lstrip()
        if not rest.startswith("<"):
            raise SipParseError("bad_name_addr", value[:60])
    else:
        lt = _find_unquoted(value, "<") if '"' in value else value.find("<")
        if lt > 0:
            text = value[:lt].strip()
            if text:
                _check_display_tokens(text, value)
                display = text
            rest = value[lt:]
        elif lt == 0:
            rest = value
        else:
            return _parse_addr_spec(value, max_uri)
    gt = rest.find(">")
    if gt < 0:
        raise SipParseError("bad_name_addr", value[:60])
    uri_text = rest[1:gt]
    if not uri_text or uri_text != uri_text.strip() or " " in uri_text or "\t" in uri_text:
        raise SipParseError("bad_name_addr", value[:60])
    uri = parse_uri(uri_text, max_uri)
    tail = rest[gt + 1 :].strip()
    params: Params = EMPTY_PARAMS
    if tail:
        if tail[0] != ";":
            raise SipParseError("bad_name_addr", value[:60])
        params = parse_param_text(tail[1:])
    return NameAddr(display, uri, params)


def _find_unquoted(text: str, char: str) -> int:
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i = read_quoted(text, i)
            continue
        if c == char:
            return i
        i += 1
    return -1


def _parse_addr_spec(value: str, max_uri: int) -> NameAddr:
    # In an addr-spec, ';' starts header params, and the URI may carry no '?' or ','
    # (RFC 3261 §20): such a URI must be enclosed in <...>.
    uri_text, semi, ptext = value.partition(";")
    uri_text = uri_text.strip()
    if "?" in uri_text or "," in uri_text or " " in uri_text or "\t" in uri_text:
        raise SipParseError("bad_name_addr", value[:60])
    uri = parse_uri(uri_text, max_uri)
    params = parse_param_text(ptext) if semi else EMPTY_PARAMS
    return NameAddr(None, uri, params)


class ContactStar(NamedTuple):
    """`Contact: *` (remove all bindings)."""

    def __str__(self) -> str:
        return "*"


STAR = ContactStar()


def parse_contacts(value: str, max_uri: int = 2048) -> list[NameAddr] | ContactStar:
    if value.strip() == "*":
        return STAR
    if "," not in value:
        return [parse_name_addr(value, max_uri)]
    return [parse_name_addr(v, max_uri) for v in split_comma_values(value)]


def parse_name_addrs(value: str, max_uri: int = 2048) -> list[NameAddr]:
    if "," not in value:
        return [parse_name_addr(value, max_uri)]
    return [parse_name_addr(v, max_uri) for v in split_comma_values(value)]


class CSeq(NamedTuple):
    number: int
    method: str

    def __str__(self) -> str:
        return f"{self.number} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or TOKEN_RE.fullmatch(parts[1]) is None:
        raise SipParseError("bad_cseq", value[:60])
    return CSeq(parse_uint(parts[0], MAX_CSEQ, "bad_cseq"), parts[1])


def parse_token_list(value: str) -> list[str]:
    """Supported / Require / Allow style lists of tokens."""
    out: list[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if TOKEN_RE.fullmatch(item) is None:
            raise SipParseError("bad_token", item[:60])
        out.append(item)
    return out


class MediaType(NamedTuple):
    type: str
    subtype: str
    params: Params

    @property
    def mime(self) -> str:
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return self.mime + format_params(self.params)


def parse_media_type(value: str) -> MediaType:
    segments = split_top(value, ";")
    t, slash, sub = segments[0].partition("/")
    t = t.strip().lower()
    sub = sub.strip().lower()
    if not slash or TOKEN_RE.fullmatch(t) is None or TOKEN_RE.fullmatch(sub) is None:
        raise SipParseError("bad_content_type", value[:60])
    params = parse_params(segments, 1) if len(segments) > 1 else EMPTY_PARAMS
    return MediaType(t, sub, params)


class Event(NamedTuple):
    package: str
    params: Params

    def __str__(self) -> str:
        return self.package + format_params(self.params)


def parse_event(value: str) -> Event:
    segments = split_top(value, ";")
    package = segments[0].strip()
    if TOKEN_RE.fullmatch(package) is None:
        raise SipParseError("bad_event", value[:60])
    params = parse_params(segments, 1) if len(segments) > 1 else EMPTY_PARAMS
    return Event(package.lower(), params)
