"""Values of the WWW-/Proxy-Authenticate and (Proxy-)Authorization headers.

Grammar: RFC 3261 §25 (challenge / credentials, auth-param, quoted-string), with the
parameters of RFC 7616 and RFC 8760.  The parser is a single left-to-right scanner with no
regular expressions, so its cost is linear in the input and it cannot be driven into
backtracking by a scanner sending pathological headers.  Hard limits on header length,
parameter count and value length bound memory per header for the same reason.

Deliberate leniency (each keeps delimiters unambiguous):

* unquoted values may contain any visible ASCII except ``"``, ``,`` and ``\\`` (deployed UAs
  send e.g. ``qop="auth"`` quoted or ``uri=sip:x`` unquoted); an unquoted value cannot start
  with ``=`` so that token68 credentials such as ``Bearer abc==`` are recognised as raw text;
* empty list elements (``a=1,,b=2``) are skipped, as RFC 7230 §7 asks of recipients.

Schemes other than Digest whose parameters do not parse keep their text in ``raw``; Digest
input must parse fully.  Parameter names are lowercased; duplicates are rejected because an
ambiguity about which ``realm`` or ``nonce`` counts is exactly what an attacker would exploit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from spitguard.sip.errors import SipParseError

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_PARAMS",
    "MAX_PARAM_NAME_LENGTH",
    "MAX_VALUE_LENGTH",
    "AuthChallenge",
    "AuthCredentials",
    "format_challenge",
    "format_credentials",
    "parse_challenge",
    "parse_credentials",
]

MAX_HEADER_LENGTH = 8192
MAX_PARAMS = 64
MAX_PARAM_NAME_LENGTH = 64
MAX_VALUE_LENGTH = 1024

_REASON_SYNTAX = "bad_auth_header"
_REASON_LIMIT = "auth_header_limit"

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
# RFC 3261 token characters.
_TOKEN = _ALNUM | frozenset("-.!%*_+`'~")
_WSP = frozenset(" \t")
# Unquoted values: visible ASCII minus the characters that delimit or quote.
_BARE_VALUE = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('",\\')

# Parameters that RFC 3261/7616 always send quoted; the rest are sent as tokens when possible.
_QUOTED_PARAMS = frozenset(
    {
        "realm",
        "domain",
        "nonce",
        "opaque",
        "username",
        "uri",
        "response",
        "cnonce",
        "nextnonce",
        "rspauth",
    }
)


def _is_token(s: str) -> bool:
    return bool(s) and all(c in _TOKEN for c in s)


def _is_ctl(c: str) -> bool:
    o = ord(c)
    return (o < 0x20 and c != "\t") or o == 0x7F


# The same set as `_is_ctl`, for whole strings: one C-level scan instead of a Python call per
# character (every Authorization header of every request passes through here).
_CTL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A quoted-string without escapes or controls: read as one slice.
_PLAIN_QUOTED = re.compile(r'"([^"\\\x00-\x08\x0a-\x1f\x7f]*)"')


def _has_ctl(s: str) -> bool:
    return _CTL.search(s) is not None


def _syntax(detail: str) -> SipParseError:
    return SipParseError(_REASON_SYNTAX, detail)


# --------------------------------------------------------------------------- value types


class _AuthFields:
    """Shared accessors; concrete classes are frozen slotted dataclasses."""

    __slots__ = ()
    scheme: str
    params: Mapping[str, str]
    raw: str

    def _init_fields(self, scheme: str, params: Mapping[str, str], raw: str) -> None:
        if not _is_token(scheme):
            raise SipParseError(_REASON_SYNTAX, "scheme is not a token")
        if len(params) > MAX_PARAMS:
            raise SipParseError(_REASON_LIMIT, "too many parameters")
        clean: dict[str, str] = {}
        for name, value in params.items():
            key = name.lower()
            if not _is_token(key) or len(key) > MAX_PARAM_NAME_LENGTH:
                raise SipParseError(_REASON_SYNTAX, "bad parameter name")
            if key in clean:
                raise SipParseError(_REASON_SYNTAX, f"duplicate parameter {key!r}")
            if len(value) > MAX_VALUE_LENGTH:
                raise SipParseError(_REASON_LIMIT, f"value of {key!r} too long")
            # CR/LF in a value would let a formatted header smuggle extra header lines.
            if _has_ctl(value):
                raise SipParseError(_REASON_SYNTAX, f"control character in {key!r}")
            clean[key] = value
        if raw:
            if clean:
                raise SipParseError(_REASON_SYNTAX, "both raw text and parameters")
            if raw != raw.strip(" \t") or _has_ctl(raw):
                raise SipParseError(_REASON_SYNTAX, "bad raw auth data")
            if len(raw) > MAX_HEADER_LENGTH:
                raise SipParseError(_REASON_LIMIT, "raw auth data too long")
        if scheme.lower() == "digest" and not clean:
            raise SipParseError(_REASON_SYNTAX, "Digest needs parameters")
        object.__setattr__(self, "params", MappingProxyType(clean))

    def _hash(self) -> int:
        return hash((type(self).__name__, self.scheme, tuple(self.params.items()), self.raw))

    def __repr__(self) -> str:
        # Credentials carry secret-derived values; only Digest's non-secret fields are shown.
        if isinstance(self, AuthCredentials):
            if self.is_digest:
                shown = {
                    k: ("<redacted>" if k == "response" else v) for k, v in self.params.items()
                }
            else:
                shown = dict.fromkeys(self.params, "<redacted>")
            raw = "<redacted>" if self.raw else ""
        else:
            shown, raw = dict(self.params), self.raw
        return f"{type(self).__name__}(scheme={self.scheme!r}, params={shown!r}, raw={raw!r})"

    @property
    def is_digest(self) -> bool:
        return self.scheme.lower() == "digest"

    def get(self, name: str) -> str | None:
        return self.params.get(name.lower())

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def nonce(self) -> str | None:
        return self.params.get("nonce")

    @property
    def opaque(self) -> str | None:
        return self.params.get("opaque")

    @property
    def algorithm(self) -> str | None:
        """The algorithm as sent; ``None`` means absent, which RFC 7616 defines as MD5."""
        return self.params.get("algorithm")

    @property
    def userhash(self) -> bool:
        return self.params.get("userhash", "").lower() == "true"


@dataclass(frozen=True, slots=True, repr=False)
class AuthChallenge(_AuthFields):
    """Value of WWW-Authenticate / Proxy-Authenticate."""

    scheme: str
    params: Mapping[str, str]
    raw: str = ""

    def __post_init__(self) -> None:
        self._init_fields(self.scheme, self.params, self.raw)

    def __hash__(self) -> int:
        return self._hash()

    @property
    def domain(self) -> str | None:
        return self.params.get("domain")

    @property
    def stale(self) -> bool:
        return self.params.get("stale", "").lower() == "true"

    @property
    def qop_options(self) -> tuple[str, ...]:
        """Lowercased qop values offered; empty when the challenge has no qop (RFC 2069)."""
        value = self.params.get("qop")
        if value is None:
            return ()
        return tuple(p for p in (x.strip(" \t").lower() for x in value.split(",")) if p)


@dataclass(frozen=True, slots=True, repr=False)
class AuthCredentials(_AuthFields):
    """Value of Authorization / Proxy-Authorization. ``repr`` never shows the response."""

    scheme: str
    params: Mapping[str, str]
    raw: str = ""

    def __post_init__(self) -> None:
        self._init_fields(self.scheme, self.params, self.raw)

    def __hash__(self) -> int:
        return self._hash()

    @property
    def username(self) -> str | None:
        return self.params.get("username")

    @property
    def uri(self) -> str | None:
        return self.params.get("uri")

    @property
    def response(self) -> str | None:
        return self.params.get("response")

    @property
    def cnonce(self) -> str | None:
        return self.params.get("cnonce")

    @property
    def nc(self) -> str | None:
        """The nonce-count exactly as sent (it is hashed verbatim)."""
        return self.params.get("nc")

    @property
    def qop(self) -> str | None:
        return self.params.get("qop")


# --------------------------------------------------------------------------- scanner


def _unfold(value: str) -> str:
    """Replace header folding (CRLF 1*WSP) with SP; any other CR/LF is an error."""
    if len(value) > MAX_HEADER_LENGTH:
        raise SipParseError(_REASON_LIMIT, "header value too long")
    if "\r" not in value and "\n" not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in "\r\n":
            j = i + 2
            if value[i:j] != "\r\n" or j >= n or value[j] not in _WSP:
                raise _syntax(f"bare CR or LF at {i}")
            while j < n and value[j] in _WSP:
                j += 1
            out.append(" ")
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WSP:
        i += 1
    return i


def _read_token(s: str, i: int) -> tuple[str, int]:
    start, n = i, len(s)
    while i < n and s[i] in _TOKEN:
        i += 1
    return s[start:i], i


def _read_quoted(s: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at the opening quote; return (unescaped, next index)."""
    plain = _PLAIN_QUOTED.match(s, i)
    if plain is not None and len(plain.group(1)) <= MAX_VALUE_LENGTH:
        return plain.group(1), plain.end()
    start = i
    i += 1
    n = len(s)
    out: list[str] = []
    while i < n:
        c = s[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\":
            i += 1
            if i >= n:
                break
            c = s[i]
            # quoted-pair excludes CR and LF; other controls are legal there but not in values.
            if c in "\r\n" or _is_ctl(c):
                raise _syntax(f"bad escape at {i}")
        elif _is_ctl(c):
            raise _syntax(f"control character at {i}")
        out.append(c)
        if len(out) > MAX_VALUE_LENGTH:
            raise SipParseError(_REASON_LIMIT, f"quoted value at {start} too long")
        i += 1
    raise _syntax(f"unterminated quoted string at {start}")


def _read_bare(s: str, i: int) -> tuple[str, int]:
    start, n = i, len(s)
    if i < n and s[i] == "=":
        return "", i
    while i < n and s[i] in _BARE_VALUE:
        i += 1
        if i - start > MAX_VALUE_LENGTH:
            raise SipParseError(_REASON_LIMIT, f"value at {start} too long")
    return s[start:i], i


def _parse_params(s: str, i: int) -> dict[str, str]:
    params: dict[str, str] = {}
    n = len(s)
    while True:
        name, i = _read_token(s, i)
        if not name:
            raise _syntax(f"expected parameter name at {i}")
        if len(name) > MAX_PARAM_NAME_LENGTH:
            raise SipParseError(_REASON_LIMIT, f"parameter name at {i - len(name)} too long")
        key = name.lower()
        i = _skip_ws(s, i)
        if i >= n or s[i] != "=":
            raise _syntax(f"expected '=' after {key!r}")
        i = _skip_ws(s, i + 1)
        if i < n and s[i] == '"':
            value, i = _read_quoted(s, i)
        else:
            value, i = _read_bare(s, i)
            if not value:
                raise _syntax(f"missing value for {key!r}")
        if key in params:
            raise _syntax(f"duplicate parameter {key!r}")
        if len(params) >= MAX_PARAMS:
            raise SipParseError(_REASON_LIMIT, "too many parameters")
        params[key] = value
        i = _skip_ws(s, i)
        if i >= n:
            return params
        if s[i] != ",":
            raise _syntax(f"expected ',' at {i}")
        while i < n and s[i] in ", \t":
            i += 1
        if i >= n:  # trailing comma: an empty list element
            return params


def _parse(value: str) -> tuple[str, dict[str, str], str]:
    s = _unfold(value)
    i = _skip_ws(s, 0)
    scheme, i = _read_token(s, i)
    if not scheme:
        raise _syntax("missing auth scheme")
    n = len(s)
    if i < n and s[i] not in _WSP:
        raise _syntax(f"unexpected character after scheme at {i}")
    i = _skip_ws(s, i)
    if i >= n:
        if scheme.lower() == "digest":
            raise _syntax("Digest without parameters")
        return scheme, {}, ""
    try:
        return scheme, _parse_params(s, i), ""
    except SipParseError:
        if scheme.lower() == "digest":
            raise
    raw = s[i:].rstrip(" \t")
    if _has_ctl(raw):
        raise _syntax("control character in auth data")
    return scheme, {}, raw


def parse_challenge(value: str) -> AuthChallenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value. Raises SipParseError."""
    scheme, params, raw = _parse(value)
    return AuthChallenge(scheme, params, raw)


def parse_credentials(value: str) -> AuthCredentials:
    """Parse an Authorization / Proxy-Authorization value. Raises SipParseError."""
    scheme, params, raw = _parse(value)
    return AuthCredentials(scheme, params, raw)


# --------------------------------------------------------------------------- formatting


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _format(scheme: str, params: Mapping[str, str], raw: str, quoted: frozenset[str]) -> str:
    if raw:
        return f"{scheme} {raw}"
    if not params:
        return scheme
    parts = []
    for name, value in params.items():
        if name in quoted or not _is_token(value):
            parts.append(f"{name}={_quote(value)}")
        else:
            parts.append(f"{name}={value}")
    return f"{scheme} " + ", ".join(parts)


def format_challenge(ch: AuthChallenge) -> str:
    """Serialise a challenge; qop is a quoted list here (RFC 3261 qop-options)."""
    return _format(ch.scheme, ch.params, ch.raw, _QUOTED_PARAMS | {"qop"})


def format_credentials(cr: AuthCredentials) -> str:
    """Serialise credentials; qop, nc and algorithm stay unquoted as RFC 3261 requires."""
    return _format(cr.scheme, cr.params, cr.raw, _QUOTED_PARAMS)
