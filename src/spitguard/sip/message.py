"""SIP requests and responses: parsing, typed access, modification and serialization.

`parse()` is the first thing every packet from the Internet meets, so it frames the
message, validates the start line and every header the edge relies on (Via, From, To,
Call-ID, CSeq, Max-Forwards, Content-Length, Contact, Expires, Route, Record-Route,
Date) up front and caches their typed values; rarer headers are parsed on first access.
Anything malformed raises `SipParseError`. Messages that are well-formed but that RFC
3261 says to answer with an error (missing Call-ID, two To headers, a Via without a
branch ...) parse, and list what is wrong in `defects`, so the guard and proxy decide.

An unmodified message serializes byte-exact (`raw`); once changed it is written
canonically, with full header names and a recomputed Content-Length.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Generic, Protocol, TypeVar, overload

from .auth import AuthChallenge, AuthCredentials, parse_challenge, parse_credentials
from .errors import SipParseError
from .grammar import EMPTY_PARAMS, TOKEN_RE, parse_uint
from .headers import (
    BRANCH_COOKIE,
    CANONICAL_NAMES,
    COMPACT,
    MAX_UINT32,
    STAR,
    ContactStar,
    CSeq,
    Event,
    MediaType,
    NameAddr,
    Via,
    canonical_name,
    header_key,
    parse_contacts,
    parse_cseq,
    parse_event,
    parse_media_type,
    parse_name_addr,
    parse_name_addrs,
    parse_token_list,
    parse_vias,
)
from .uri import SipUri, Uri, parse_uri


@dataclass(frozen=True, slots=True)
class Limits:
    """Size caps applied before any parsing work; all configurable."""

    max_message_size: int = 65_535  # the largest UDP payload; TCP frames use the same cap
    max_headers: int = 128
    max_line_length: int = 8_192
    max_uri_length: int = 2_048


DEFAULT_LIMITS = Limits()
T = TypeVar("T")

# Headers that carry one value; a second copy is a defect the proxy answers with 400.
SINGLE_VALUED = ("from", "to", "call-id", "cseq", "max-forwards", "content-type", "expires")
_REQUIRED = ("via", "from", "to", "call-id", "cseq")
_NAMES_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+(?:\n[A-Za-z0-9\-.!%*_+`'~]+)*")
_VALID_NAMES: set[str] = set()  # lower-case header names that passed the token check
_VALID_NAMES_MAX = 4096
_FOLD_RE = re.compile(r"\r?\n[ \t]+")  # no leading [ \t]*: that would backtrack on long runs
_DATE_RE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)

REASONS: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    603: "Decline",
}


# --- typed parsers used by the accessors (and eagerly by parse) ---------------------


def _header_text(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\r" in text or "\n" in text:
        raise ValueError("header values cannot contain line breaks")
    return text


def _all_vias(msg: Message) -> list[Via]:
    out: list[Via] = []
    for v in msg.get_all("via"):
        out.extend(parse_vias(v))
    return out


def _required_name_addr(key: str) -> Callable[[Message], NameAddr]:
    def parse(msg: Message) -> NameAddr:
        value = msg.get(key)
        if value is None:
            raise SipParseError("missing_header", key)
        return parse_name_addr(value)

    return parse


def _name_addr_list(key: str) -> Callable[[Message], list[NameAddr]]:
    def parse(msg: Message) -> list[NameAddr]:
        out: list[NameAddr] = []
        for v in msg.get_all(key):
            out.extend(parse_name_addrs(v))
        return out

    return parse


def _token_list(key: str) -> Callable[[Message], list[str]]:
    def parse(msg: Message) -> list[str]:
        out: list[str] = []
        for v in msg.get_all(key):
            out.extend(parse_token_list(v))
        return out

    return parse


# The accessors' parsers, built once: the proxy reads From, To, Route and Proxy-Require
# of every request, and building a closure per access showed up in profiles.
_FROM = _required_name_addr("from")
_TO = _required_name_addr("to")
_ROUTES = _name_addr_list("route")
_RECORD_ROUTES = _name_addr_list("record-route")
_PATHS = _name_addr_list("path")
_SUPPORTED = _token_list("supported")
_REQUIRE = _token_list("require")
_PROXY_REQUIRE = _token_list("proxy-require")


def _call_id(msg: Message) -> str:
    value = msg.get("call-id")
    if value is None:
        raise SipParseError("missing_header", "call-id")
    return _check_call_id(value)


def _check_call_id(value: str) -> str:
    if not value or " " in value or "\t" in value:
        raise SipParseError("bad_call_id", value[:60])
    return value


def _cseq(msg: Message) -> CSeq:
    value = msg.get("cseq")
    if value is None:
        raise SipParseError("missing_header", "cseq")
    return parse_cseq(value)


def _max_forwards(msg: Message) -> int | None:
    value = msg.get("max-forwards")
    return None if value is None else parse_uint(value, 255, "bad_max_forwards")


def _contacts(msg: Message) -> list[NameAddr] | ContactStar:
    values = msg.get_all("contact")
    if len(values) == 1:
        return parse_contacts(values[0])
    out: list[NameAddr] = []
    for v in values:
        parsed = parse_contacts(v)
        if isinstance(parsed, ContactStar):
            raise SipParseError("bad_contact", "'*' mixed with other contacts")
        out.extend(parsed)
    return out


def _expires(msg: Message) -> int | None:
    value = msg.get("expires")
    return None if value is None else parse_uint(value, MAX_UINT32, "bad_expires")


def _content_type(msg: Message) -> MediaType | None:
    value = msg.get("content-type")
    return None if value is None else parse_media_type(value)


def _event(msg: Message) -> Event | None:
    value = msg.get("event")
    return None if value is None else parse_event(value)


class _Cached(Generic[T]):
    """A message attribute parsed from its header on first read and kept in the typed
    cache (`parse()` fills the cache for the headers it validates). Where the C
    extension is built, `_cparse.CachedAttr` takes its place: the same, without a
    Python frame per read."""

    __slots__ = ("compute", "doc", "key")

    def __init__(self, key: str, compute: Callable[[Message], T], doc: str | None = None):
        self.key = key
        self.compute = compute
        self.doc = doc

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> _Cached[T]: ...
    @overload
    def __get__(self, obj: Message, owner: type[Any]) -> T: ...
    def __get__(self, obj: Message | None, owner: type[Any]) -> T | _Cached[T]:
        if obj is None:
            return self
        typed = obj._typed
        try:
            return typed[self.key]  # type: ignore[no-any-return]
        except KeyError:
            value = typed[self.key] = self.compute(obj)
            return value


class Message:
    """Common part of requests and responses."""

    __slots__ = ("_body", "_fields", "_raw", "_typed", "defects")

    kind: ClassVar[str]

    # Header lines are (key, name as written, value) tuples, never lists: a tuple of
    # strings is untracked by the cyclic GC, and a proxy keeps thousands of messages
    # alive in lingering transactions, which every full collection would otherwise walk.
    _fields: list[tuple[str, str, str]]

    def __init__(
        self,
        fields: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self._fields = [(header_key(n), n, v) for n, v in fields]
        self._body = body
        self._raw: bytes | None = None
        self._typed: dict[str, Any] = {}
        self.defects: tuple[str, ...] = ()

    # --- raw header access -------------------------------------------------------
    def get(self, name: str) -> str | None:
        """First value of a header (any spelling or compact form), or None."""
        key = header_key(name)
        for k, _, v in self._fields:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every line of a header, in order (comma-joined values stay joined)."""
        key = header_key(name)
        return [v for k, _, v in self._fields if k == key]

    def has(self, name: str) -> bool:
        key = header_key(name)
        return any(f[0] == key for f in self._fields)

    @property
    def fields(self) -> Iterator[tuple[str, str]]:
        """(name as written, value) for every header line."""
        return ((n, v) for _, n, v in self._fields)

    def _copy_to(self, other: Message) -> None:
        # Header lines are immutable tuples and the typed cache's values are never changed
        # in place (edits replace them), so shallow copies of both lists are enough.
        other._fields = list(self._fields)
        other._body = self._body
        other._typed = dict(self._typed)

    def drop_parsed(self) -> None:
        """Forget the parsed header values; they are parsed again if read. For messages
        kept only to answer a retransmission: a proxy holds thousands of them for the
        32 s its transactions linger, and their parsed values are most of the objects
        the cyclic GC has to walk."""
        self._typed = {}

    def _changed(self, key: str) -> None:
        self._raw = None
        self._typed.pop(key, None)

    def set(self, name: str, value: object) -> None:
        """Replace every line of a header with one value (at the first one's place)."""
        key = header_key(name)
        text = _header_text(value)
        out: list[tuple[str, str, str]] = []
        placed = False
        for f in self._fields:
            if f[0] != key:
                out.append(f)
            elif not placed:
                out.append((key, canonical_name(key), text))
                placed = True
        if not placed:
            out.append((key, canonical_name(key), text))
        self._fields = out
        self._changed(key)

    def add(self, name: str, value: object, *, first: bool = False) -> None:
        """Add a header line; with `first`, before any existing line of that header."""
        key = header_key(name)
        entry = (key, canonical_name(key), _header_text(value))
        if first:
            for i, f in enumerate(self._fields):
                if f[0] == key:
                    self._fields.insert(i, entry)
                    break
            else:
                self._fields.append(entry)
        else:
            self._fields.append(entry)
        self._changed(key)

    def remove(self, name: str) -> None:
        key = header_key(name)
        self._fields = [f for f in self._fields if f[0] != key]
        self._changed(key)

    # --- Via ---------------------------------------------------------------------
    def push_via(self, via: Via) -> None:
        vias = self._typed.get("via")
        text = _header_text(via)
        self.add("via", text, first=True)
        if vias is not None:
            # Every request the proxy forwards gets a Via: parse only the new line rather
            # than all of them again at the next access (the result is the same).
            self._typed["via"] = [*parse_vias(text), *vias]

    def pop_via(self) -> Via:
        """Remove and return the top Via value (splitting a comma-joined line)."""
        vias = self.vias
        if not vias:
            raise SipParseError("missing_header", "via")
        top = vias[0]
        for i, f in enumerate(self._fields):
            if f[0] == "via":
                if "," not in f[2]:
                    # One Via on the line (the usual case; a comma may also sit in a
                    # quoted parameter, which takes the slow path): drop the line, and
                    # the parsed Vias below it stay valid, so keep them.
                    del self._fields[i]
                    self._raw = None
                    self._typed["via"] = vias[1:]
                    return top
                rest = parse_vias(f[2])[1:]
                if rest:
                    self._fields[i] = (f[0], f[1], ", ".join(str(v) for v in rest))
                else:
                    del self._fields[i]
                break
        self._changed("via")
        return top

    # --- typed access --------------------------------------------------------------
    # Parsed on first read and cached; parse() fills the cache for the headers it
    # validates (Via, From, To, Call-ID, CSeq, Max-Forwards, Contact, Expires, Route,
    # Record-Route, and an absent Proxy-Require).
    vias = _Cached("via", _all_vias)
    from_ = _Cached("from", _FROM)
    to = _Cached("to", _TO)
    call_id = _Cached("call-id", _call_id)
    cseq = _Cached("cseq", _cseq)
    max_forwards = _Cached("max-forwards", _max_forwards)
    contacts = _Cached("contact", _contacts, "Contact values; `STAR` for `Contact: *`; [] if none.")
    expires = _Cached("expires", _expires)
    routes = _Cached("route", _ROUTES)
    record_routes = _Cached("record-route", _RECORD_ROUTES)
    paths = _Cached("path", _PATHS)
    content_type = _Cached("content-type", _content_type)
    event = _Cached("event", _event)
    supported = _Cached("supported", _SUPPORTED)
    require = _Cached("require", _REQUIRE)
    proxy_require = _Cached("proxy-require", _PROXY_REQUIRE)

    @property
    def via(self) -> Via:
        """The top Via."""
        vias = self.vias
        if not vias:
            raise SipParseError("missing_header", "via")
        return vias[0]

    @property
    def content_length(self) -> int:
        return len(self._body)

    @property
    def user_agent(self) -> str | None:
        return self.get("user-agent")

    @property
    def server(self) -> str | None:
        return self.get("server")

    @property
    def authorization(self) -> list[AuthCredentials]:
        return [parse_credentials(v) for v in self.get_all("authorization")]

    @property
    def proxy_authorization(self) -> list[AuthCredentials]:
        return [parse_credentials(v) for v in self.get_all("proxy-authorization")]

    @property
    def www_authenticate(self) -> list[AuthChallenge]:
        return [parse_challenge(v) for v in self.get_all("www-authenticate")]

    @property
    def proxy_authenticate(self) -> list[AuthChallenge]:
        return [parse_challenge(v) for v in self.get_all("proxy-authenticate")]

    @property
    def body(self) -> bytes:
        return self._body

    @body.setter
    def body(self, value: bytes) -> None:
        self._body = value
        self._raw = None

    @property
    def transaction_branch(self) -> str | None:
        vias = self.vias
        return vias[0].branch if vias else None

    # --- serialization -----------------------------------------------------------
    def start_line(self) -> str:
        raise NotImplementedError

    @property
    def modified(self) -> bool:
        return self._raw is None

    def to_bytes(self) -> bytes:
        raw = self._raw
        if raw is not None:
            return raw
        # Every forwarded message is written here: look the usual names up inline
        # rather than calling canonical_name for each line.
        names = CANONICAL_NAMES
        lines = [self.start_line()]
        lines += [
            f"{names.get(key) or canonical_name(key)}: {value}"
            for key, _, value in self._fields
            if key != "content-length"
        ]
        lines.append(f"Content-Length: {len(self._body)}")
        head = "\r\n".join(lines).encode("utf-8", "surrogateescape")
        return head + b"\r\n\r\n" + self._body

    def __bytes__(self) -> bytes:
        return self.to_bytes()


class Request(Message):
    __slots__ = ("_uri", "method")

    kind = "request"

    def __init__(
        self,
        method: str,
        uri: Uri,
        fields: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(fields, body)
        self.method = method
        self._uri = uri

    @property
    def uri(self) -> Uri:
        return self._uri

    @uri.setter
    def uri(self, value: Uri) -> None:
        self._uri = value
        self._raw = None

    def copy(self) -> Request:
        """A copy to modify and forward: same header lines and body, the parsed values
        kept (a proxy forwards every request, and re-keying and re-parsing the headers
        showed up in profiles); no defects; serialized canonically like any edit."""
        new = Request(self.method, self._uri)
        self._copy_to(new)
        return new

    def start_line(self) -> str:
        return f"{self.method} {self._uri} SIP/2.0"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self._uri}>"


class Response(Message):
    __slots__ = ("reason", "status")

    kind = "response"

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        fields: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        super().__init__(fields, body)
        self.status = status
        self.reason = REASONS.get(status, "Unknown") if reason is None else reason

    def start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"

    @property
    def provisional(self) -> bool:
        return self.status < 200

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


# --- parse ----------------------------------------------------------------------------


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """Parse one SIP message (a UDP datagram or one frame from the stream framer).

    Raises only `SipParseError`. Octets after the Content-Length body are ignored
    (RFC 3261 §18.3, RFC 4475 dblreq).
    """
    if _cparse is not None:
        msg = _cparse.parse(data, limits)
        if msg is not None:
            return msg
    return parse_python(data, limits)


def parse_python(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response:
    """The parser in Python: the reference for the C fast path, and the one that
    handles (and names the fault of) everything that path does not recognise."""
    try:
        return _parse(data, limits)
    except SipParseError:
        raise
    except (ValueError, IndexError, KeyError, UnicodeError, OverflowError) as exc:
        # A grammar corner we did not anticipate: still malformed input, never a crash.
        raise SipParseError("malformed", type(exc).__name__) from None


def _parse(data: bytes, limits: Limits) -> Request | Response:
    size = len(data)
    if size > limits.max_message_size:
        raise SipParseError("too_large", str(size))
    start = 0
    while data.startswith(b"\r\n", start):  # RFC 3261 §7.5: ignore leading CRLFs
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end >= 0:
        body_start = end + 4
        eol = "\r\n"
    else:
        end = data.find(b"\n\n", start)
        if end >= 0 and b"\r" not in data[start:end]:
            body_start = end + 2  # bare-LF line ends, as some hand-made tools send
            eol = "\n"
        elif data.endswith(b"\r\n") and size > start + 2:
            end = body_start = size - 2  # datagram ends without the empty line
            eol = "\r\n"
        else:
            raise SipParseError("no_header_end", "")
    head = data[start:end].decode("utf-8", "surrogateescape")
    if not head:
        raise SipParseError("empty", "")
    if "\n " in head or "\n\t" in head:
        head = _FOLD_RE.sub(" ", head)
    lines = head.split(eol)
    nlines = len(lines)
    if nlines > limits.max_headers + 1:
        raise SipParseError("too_many_headers", str(nlines - 1))
    if max(map(len, lines)) > limits.max_line_length:
        raise SipParseError("line_too_long", "")
    # A CR or LF left inside a line is a bare line break: header injection, not SIP.
    if head.count("\n") != nlines - 1 or (eol == "\r\n" and head.count("\r") != nlines - 1):
        raise SipParseError("bare_line_break", "")

    # One pass: split every header, remember each key's first value and which repeat.
    fields: list[tuple[str, str, str]] = []
    first: dict[str, str] = {}
    repeated: set[str] = set()
    vias: list[str] = []
    compact = COMPACT
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError("bad_header", line[:60])
        lname = name.rstrip().lower()
        key = compact.get(lname, lname)
        value = value.strip()
        fields.append((key, name, value))
        if key in first:
            repeated.add(key)
        else:
            first[key] = value
        if key == "via":
            vias.append(value)
    # Checking each key once checks every name: a name that is not its own key is a
    # compact form (a valid token), and a key's first line comes first in `first`.
    # Names already seen valid are remembered (a bounded set: names come from the net).
    unseen = [k for k in first if k not in _VALID_NAMES]
    if unseen:
        if _NAMES_RE.fullmatch("\n".join(unseen)) is None:
            bad = next(k for k in unseen if TOKEN_RE.fullmatch(k) is None)
            raise SipParseError("bad_header_name", bad[:60])
        if len(_VALID_NAMES) < _VALID_NAMES_MAX:
            _VALID_NAMES.update(unseen)

    # Body framing by Content-Length; without one (UDP) the body is the rest.
    rest_len = size - body_start
    cl = first.get("content-length")
    if cl is None:
        body = data[body_start:]
        raw = data
    else:
        length = parse_uint(cl, MAX_UINT32, "bad_content_length")
        if "content-length" in repeated:
            for key, _, value in fields:
                if (
                    key == "content-length"
                    and parse_uint(value, MAX_UINT32, "bad_content_length") != length
                ):
                    raise SipParseError("content_length_conflict", "")
        if length > rest_len:
            raise SipParseError("body_truncated", f"{length} > {rest_len}")
        body = data[body_start : body_start + length]
        raw = data if length == rest_len else data[: body_start + length]
    if start:
        raw = raw[start:]

    line0 = lines[0]
    msg: Request | Response
    msg = _response_line(line0) if line0.startswith("SIP/") else _request_line(line0, limits)
    msg._fields = fields
    msg._body = body
    msg._raw = raw
    _validate(msg, first, repeated, vias)
    return msg


def _request_line(line: str, limits: Limits) -> Request:
    parts = line.split(" ")
    if len(parts) != 3:
        raise SipParseError("bad_request_line", line[:80])
    method, uri_text, version = parts
    if TOKEN_RE.fullmatch(method) is None:
        raise SipParseError("bad_method", method[:40])
    if version.upper() != "SIP/2.0":
        raise SipParseError("bad_version", version[:20])
    if not uri_text or uri_text[0] == "<":
        raise SipParseError("bad_request_uri", uri_text[:60])
    uri = parse_uri(uri_text, limits.max_uri_length)
    if isinstance(uri, SipUri) and uri.headers is not None:
        # Table 1 of RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
        raise SipParseError("bad_request_uri", "headers in Request-URI")
    return Request(method, uri)


def _response_line(line: str) -> Response:
    version, _, rest = line.partition(" ")
    if version.upper() != "SIP/2.0":
        raise SipParseError("bad_version", version[:20])
    code = rest[:3]
    if len(code) != 3 or not code.isdigit() or not code.isascii() or rest[3:4] not in ("", " "):
        raise SipParseError("bad_status_line", line[:80])
    status = int(code)
    if not 100 <= status <= 699:
        raise SipParseError("bad_status_line", line[:80])
    return Response(status, rest[4:])


def _validate(
    msg: Request | Response, first: dict[str, str], repeated: set[str], via_lines: list[str]
) -> None:
    """Parse the headers the edge relies on now (filling the typed cache) and note
    RFC-level defects."""
    typed = msg._typed
    defects: list[str] = []
    for key in _REQUIRED:
        if key not in first:
            defects.append(f"missing:{key}")
    if repeated:
        for key in SINGLE_VALUED:
            if key in repeated:
                defects.append(f"multiple:{key}")

    if len(via_lines) == 1:
        vias = parse_vias(via_lines[0])
    else:
        vias = [v for line in via_lines for v in parse_vias(line)]
    typed["via"] = vias
    value = first.get("from")
    if value is not None:
        typed["from"] = parse_name_addr(value)
    value = first.get("to")
    if value is not None:
        typed["to"] = parse_name_addr(value)
    value = first.get("call-id")
    if value is not None:
        typed["call-id"] = _check_call_id(value)
    value = first.get("cseq")
    if value is not None:
        cseq = typed["cseq"] = parse_cseq(value)
        if isinstance(msg, Request) and cseq.method != msg.method:
            raise SipParseError("cseq_method_mismatch", f"{msg.method} / {cseq.method}")
    value = first.get("max-forwards")
    if value is not None:
        typed["max-forwards"] = parse_uint(value, 255, "bad_max_forwards")
    value = first.get("contact")
    if value is not None:
        # One line (the usual case) is parsed as it is, without looking for others.
        typed["contact"] = _contacts(msg) if "contact" in repeated else parse_contacts(value)
    value = first.get("expires")
    if value is not None:
        typed["expires"] = parse_uint(value, MAX_UINT32, "bad_expires")
    # Route and Record-Route are parsed now; absent ones, and an absent Proxy-Require
    # (the proxy checks it on every request), are cached as empty so that reading them
    # later does not scan the header list again.
    for key, parse_all in (("route", _ROUTES), ("record-route", _RECORD_ROUTES)):
        value = first.get(key)
        if value is None:
            typed[key] = []
        else:
            typed[key] = parse_all(msg) if key in repeated else parse_name_addrs(value)
    if "proxy-require" not in first:
        typed["proxy-require"] = []
    value = first.get("date")
    if value is not None and _DATE_RE.fullmatch(value) is None:
        raise SipParseError("bad_date", value[:40])

    if isinstance(msg, Request):
        if "max-forwards" not in first:
            defects.append("missing:max-forwards")
        uri = msg.uri
        if not isinstance(uri, SipUri) and uri.scheme != "tel":
            defects.append("uri:scheme")
    if vias:
        branch = vias[0].branch
        if branch is None:
            defects.append("branch:missing")
        elif not branch.startswith(BRANCH_COOKIE):
            defects.append("branch:rfc2543")
        elif branch == BRANCH_COOKIE:
            defects.append("branch:empty")
    if defects:
        msg.defects = tuple(defects)


# --- building messages ----------------------------------------------------------------


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    fields: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """A response to `request` (RFC 3261 §8.2.6): Via, From, To, Call-ID, CSeq copied,
    the To tag added when given and absent."""
    out: list[tuple[str, str]] = [("Via", v) for v in request.get_all("via")]
    out.append(("From", request.get("from") or ""))
    to = request.get("to") or ""
    if to_tag is not None and status > 100 and request.to.tag is None:
        to = f"{to};tag={to_tag}"
    out.append(("To", to))
    out.append(("Call-ID", request.get("call-id") or ""))
    out.append(("CSeq", request.get("cseq") or ""))
    if status == 100:
        ts = request.get("timestamp")
        if ts is not None:
            out.append(("Timestamp", ts))
    out.extend(fields)
    return Response(status, reason, out, body)


def short_summary(msg: Message) -> str:
    """One line for logs: never includes header values that may carry secrets."""
    if isinstance(msg, Request):
        return f"{msg.method} {msg.uri}"
    if isinstance(msg, Response):
        return f"{msg.status} {msg.reason}"
    return "?"


# --- the C fast path --------------------------------------------------------------------


class _FastParser(Protocol):
    def parse(self, data: bytes, limits: Limits, /) -> Request | Response | None: ...


def _load_cparse() -> _FastParser | None:
    """The C fast path of parse() (_cparse.c), or None where it is not built or is
    switched off with SPITGUARD_SIP_PURE_PYTHON=1 (the tests run both ways)."""
    if os.environ.get("SPITGUARD_SIP_PURE_PYTHON") == "1":
        return None
    try:
        from . import _cparse as module
    except ImportError:
        return None
    module.setup(
        Message,
        Request,
        Response,
        SipUri,
        Via,
        NameAddr,
        CSeq,
        STAR,
        EMPTY_PARAMS,
        dict(COMPACT),
    )
    _install_accessors(module)
    return module


# (class, attribute, the Python accessor the C one replaced): tests hold them equal.
PYTHON_ACCESSORS: list[tuple[type, str, Any]] = []


def _install_accessors(module: Any) -> None:
    """Put C accessors in place of the hot Python ones: the same values, without a
    Python frame per read (the proxy reads these several times per message)."""

    def replace(cls: type, name: str, new: Any) -> None:
        PYTHON_ACCESSORS.append((cls, name, vars(cls)[name]))
        setattr(cls, name, new)

    for name, attr in list(vars(Message).items()):
        if isinstance(attr, _Cached):
            replace(Message, name, module.CachedAttr(attr.key, attr.compute, attr.doc))
    for header, names in ((Via, ("branch", "received")), (NameAddr, ("tag",))):
        index = header._fields.index("params")
        for name in names:
            replace(header, name, module.ParamAttr(index, name, getattr(header, name).__doc__))
    # Plain slot reads, with their setters kept: property() calling a C getter.
    for cls, name, slot in ((Request, "uri", "_uri"), (Message, "body", "_body")):
        old = vars(cls)[name]
        replace(cls, name, property(attrgetter(slot), old.fset, doc=old.__doc__))


_cparse = _load_cparse()
# What parse() runs, for tests and benchmarks to report: "c" or "python".
PARSER = "python" if _cparse is None else "c"
