"""SIP, SIPS and TEL URIs (RFC 3261 §19.1, RFC 3966), plus opaque absolute URIs.

URIs are immutable values; change one with `._replace(...)`. `str(uri)` writes the
canonical form (lower-case scheme and parameter names, everything else as received).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple

from .errors import SipParseError
from .grammar import (
    EMPTY_PARAMS,
    Params,
    format_params,
    parse_param_text,
    split_hostport,
)

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
# Characters an unescaped SIP URI may contain (RFC 3261 §25.1 reserved/unreserved/escaped).
_URI_CHARS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]]+")
_HEX = frozenset("0123456789abcdefABCDEF")


def unescape(text: str) -> str:
    """Resolve %HH escapes (invalid escapes are kept literally); %00 is kept as NUL."""
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    n = len(text)
    raw = bytearray()
    while i < n:
        c = text[i]
        if c == "%" and i + 2 < n + 0 and text[i + 1] in _HEX and text[i + 2] in _HEX:
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
            continue
        if raw:
            out.append(raw.decode("utf-8", "surrogateescape"))
            raw.clear()
        out.append(c)
        i += 1
    if raw:
        out.append(raw.decode("utf-8", "surrogateescape"))
    return "".join(out)


class SipUri(NamedTuple):
    """sip: or sips: URI. `user` and `password` stay %-escaped as received."""

    scheme: str
    user: str | None
    password: str | None
    host: str
    port: int | None
    params: Params
    headers: str | None  # raw `?a=b&c=d` part without the '?'

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    @property
    def user_unescaped(self) -> str | None:
        return None if self.user is None else unescape(self.user)

    @property
    def transport(self) -> str | None:
        t = self.params.get("transport")
        return None if t is None else t.lower()

    @property
    def lr(self) -> bool:
        return "lr" in self.params

    @property
    def maddr(self) -> str | None:
        return self.params.get("maddr")

    @property
    def host_key(self) -> str:
        return self.host.lower()

    @property
    def aor(self) -> str:
        """Address-of-record key: scheme 'sip', unescaped user, lower-case host, no port."""
        user = self.user_unescaped
        return f"sip:{user}@{self.host.lower()}" if user is not None else f"sip:{self.host.lower()}"

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        parts = [self.scheme, ":"]
        if self.user is not None:
            parts.append(self.user)
            if self.password is not None:
                parts.append(":" + self.password)
            parts.append("@")
        parts.append(self.hostport)
        if self.params:
            parts.append(format_params(self.params))
        if self.headers is not None:
            parts.append("?" + self.headers)
        return "".join(parts)


class TelUri(NamedTuple):
    """tel: URI (RFC 3966): the number and its parameters."""

    number: str
    params: Params

    @property
    def scheme(self) -> str:
        return "tel"

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"


class AbsoluteUri(NamedTuple):
    """Any other scheme (RFC 3261 absoluteURI): kept opaque."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


Uri = SipUri | TelUri | AbsoluteUri


@lru_cache(maxsize=8192)
def parse_uri(text: str, max_length: int = 2048) -> Uri:
    """Parse a URI as it appears in a Request-URI or inside <...>.

    Cached: phones send the same URIs all day and a URI is an immutable value."""
    if len(text) > max_length:
        raise SipParseError("uri_too_long", str(len(text)))
    scheme, colon, rest = text.partition(":")
    if not colon or _SCHEME_RE.fullmatch(scheme) is None:
        raise SipParseError("bad_uri", text[:60])
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        return _parse_sip(lscheme, rest, text)
    if lscheme == "tel":
        number, _, ptext = rest.partition(";")
        if not number:
            raise SipParseError("bad_uri", text[:60])
        params = parse_param_text(ptext, uri=True) if ptext else EMPTY_PARAMS
        return TelUri(number, params)
    if not rest or any(c.isspace() for c in rest):
        raise SipParseError("bad_uri", text[:60])
    return AbsoluteUri(lscheme, rest)


# The everyday shape (plain user, host, port, params, no escapes, no headers) in one C call;
# anything else takes the careful path below. Disjoint classes keep it linear.
_SIP_FAST = re.compile(
    r"(?:([A-Za-z0-9\-_.!~*'()&=+$,]+)(?::([A-Za-z0-9\-_.!~*'()&=+$,]*))?@)?"
    r"([A-Za-z0-9\-.]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]{1,5}))?(?:;([^?@]*))?"
)


def _parse_sip(scheme: str, rest: str, text: str) -> SipUri:
    m = _SIP_FAST.fullmatch(rest)
    if m is not None:
        return _from_fast_match(scheme, m, text)
    return _parse_sip_slow(scheme, rest, text)


def _from_fast_match(scheme: str, m: re.Match[str], text: str) -> SipUri:
    user, password, host, port_text, ptext = m.groups()
    port = None
    if port_text is not None:
        port = int(port_text)
        if port > 65535:
            raise SipParseError("bad_port", text[:60])
    params = parse_param_text(ptext, uri=True) if ptext is not None else EMPTY_PARAMS
    return SipUri(scheme, user, password, host, port, params, None)


def _parse_sip_slow(scheme: str, rest: str, text: str) -> SipUri:
    if _URI_CHARS_RE.fullmatch(rest) is None:
        raise SipParseError("bad_uri", text[:60])
    user: str | None = None
    password: str | None = None
    at = rest.find("@")
    if at >= 0:
        userinfo = rest[:at]
        rest = rest[at + 1 :]
        if not userinfo:
            raise SipParseError("bad_uri", text[:60])
        user, colon, pw = userinfo.partition(":")
        if colon:
            password = pw
        if not user:
            raise SipParseError("bad_uri", text[:60])
    headers: str | None = None
    q = rest.find("?")
    if q >= 0:
        headers = rest[q + 1 :]
        rest = rest[:q]
    semi = rest.find(";")
    if semi >= 0:
        params: Params = parse_param_text(rest[semi + 1 :], uri=True)
        rest = rest[:semi]
    else:
        params = EMPTY_PARAMS
    host, port = split_hostport(rest)
    return SipUri(scheme, user, password, host, port, params, headers)
