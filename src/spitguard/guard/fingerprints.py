"""Scanner fingerprints: a scored set of rules loaded from a data file.

The rules live in `data/fingerprints.toml` (each with an id, a citation, a kind, its
parameters and a weight); this module knows the *kinds* only. Matching adds the weights
of the rules a message matches; the message is a scanner when the score reaches the
file's threshold. A User-Agent alone is weak evidence because scanners change it; tool
artefacts in the message structure (tags, Call-IDs, placeholder hosts, SDP) are strong.

Everything is prepared at load time (lower-cased prefix tuples, sets, encoded SDP
patterns), so `match` does no I/O, compiles nothing and allocates little: a few
microseconds per message.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..sip.message import Request, Response
from ..sip.uri import SipUri

# Where rules may look for hosts; the bit is the field's flag in `_Facts.host_index`.
FIELD_BITS = {"ruri": 1, "from": 2, "to": 4, "contact": 8, "via": 16}
FIELDS = frozenset(FIELD_BITS)
_PRINTABLE = bytes(range(0x20, 0x7F))
_MAX_PLANS = 64
_EPSILON = 1e-9  # weights are decimals; 0.1 + 0.2 must still reach 0.3


@dataclass(frozen=True, slots=True)
class FingerprintResult:
    score: float
    rules: tuple[str, ...]  # ids of the rules that matched, in file order
    is_scanner: bool


NOT_MATCHED = FingerprintResult(0.0, (), False)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule as loaded (for display and audit); matching uses its compiled test."""

    id: str
    kind: str
    description: str
    source: str
    weight: float
    untrusted_only: bool
    ignore_methods: frozenset[str]
    params: Mapping[str, Any]


class _Facts:
    """What the rules look at, read from a message once per `match` call."""

    __slots__ = (
        "_hosts",
        "body",
        "branch",
        "call_id",
        "from_tag",
        "from_uri",
        "msg",
        "to_uri",
        "ua",
    )

    def __init__(self, msg: Request | Response) -> None:
        self.msg = msg
        ua = msg.get("user-agent")
        self.ua = ua.lower() if ua is not None else None
        self.body = msg.body
        self._hosts: dict[str, int] | None = None
        self.from_uri: object = None
        self.to_uri: object = None
        self.from_tag: str | None = None
        self.call_id: str | None = None
        self.branch: str | None = None
        if isinstance(msg, Request):
            defects = msg.defects
            # `parse` lets a request without From/To/Call-ID through (the sanity gate
            # refuses it); the accessors would raise, so look only when present.
            if not defects or "missing:from" not in defects:
                from_ = msg.from_
                self.from_uri = from_.uri
                self.from_tag = from_.tag
            if not defects or "missing:to" not in defects:
                self.to_uri = msg.to.uri
            if not defects or "missing:call-id" not in defects:
                self.call_id = msg.call_id
            vias = msg.vias
            if vias:
                self.branch = vias[0].branch

    def host_index(self) -> dict[str, int]:
        """Every lower-cased host in the R-URI, From, To, Contacts and top Via, mapped to
        the bits (`FIELD_BITS`) of the fields it appears in. Built once, on first use."""
        index = self._hosts
        if index is not None:
            return index
        index = {}
        msg = self.msg
        if isinstance(msg, Request):
            _index(index, msg.uri, 1)
        _index(index, self.from_uri, 2)
        _index(index, self.to_uri, 4)
        contacts = msg.contacts
        if isinstance(contacts, list):
            for c in contacts:
                _index(index, c.uri, 8)
        vias = msg.vias
        if vias:
            host = vias[0].host.lower()
            index[host] = index.get(host, 0) | 16
        self._hosts = index
        return index


def _index(index: dict[str, int], uri: object, bit: int) -> None:
    if isinstance(uri, SipUri):
        host = uri.host.lower()
        index[host] = index.get(host, 0) | bit


def is_ip_literal(host: str) -> bool:
    """IPv6 reference, or a dotted name whose last label is numeric (an IPv4 address:
    RFC 3261 toplabels start with a letter, so no host name ends in a number)."""
    return host.startswith("[") or host.rpartition(".")[2].isdigit()


# --- kinds: each turns validated parameters into a test over _Facts ------------------

Test = Callable[[_Facts], bool]


def _ua_prefix(p: Mapping[str, Any]) -> Test:
    prefixes = tuple(s.lower() for s in p["prefixes"])
    exact = frozenset(s.lower() for s in p["exact"])

    def test(f: _Facts) -> bool:
        ua = f.ua
        return ua is not None and (ua.startswith(prefixes) or ua in exact)

    return test


def _server_prefix(p: Mapping[str, Any]) -> Test:
    prefixes = tuple(s.lower() for s in p["prefixes"])
    exact = frozenset(s.lower() for s in p["exact"])

    def test(f: _Facts) -> bool:
        server = f.msg.get("server")
        if server is None:
            return False
        server = server.lower()
        return server.startswith(prefixes) or server in exact

    return test


def _to_equals_from_numeric(p: Mapping[str, Any]) -> Test:
    def test(f: _Facts) -> bool:
        a = f.from_uri
        b = f.to_uri
        if not isinstance(a, SipUri) or not isinstance(b, SipUri):
            return False
        user = a.user
        return (
            user is not None
            and user == b.user
            and user.isdigit()
            and user.isascii()
            and a.host.lower() == b.host.lower()
            and a.port == b.port
            and a.scheme == b.scheme
        )

    return test


def _mask(fields: frozenset[str]) -> int:
    return sum(FIELD_BITS[name] for name in fields)


def _ip_literal_host(p: Mapping[str, Any]) -> Test:
    mask = _mask(p["fields"])

    def test(f: _Facts) -> bool:
        return any(bits & mask and is_ip_literal(h) for h, bits in f.host_index().items())

    return test


def _placeholder_host(p: Mapping[str, Any]) -> Test:
    mask = _mask(p["fields"])
    hosts = frozenset(h.lower() for h in p["hosts"])

    def test(f: _Facts) -> bool:
        index = f.host_index()
        common = hosts.intersection(index)  # almost always empty: one C call
        return bool(common) and any(index[h] & mask for h in common)

    return test


def _tag_byte(p: Mapping[str, Any]) -> Test:
    byte: int = p["byte"]
    raw = chr(byte)
    marker = f"{byte:02x}"
    sep = bytes([byte])

    def test(f: _Facts) -> bool:
        tag = f.from_tag
        if tag is None:
            return False
        if raw in tag:
            return True
        low = tag.lower()
        if marker not in low or len(tag) % 2:  # the cheap exit for almost every tag
            return False
        try:
            data = bytes.fromhex(low)
        except ValueError:
            return False
        # createTag() is hex(<text> + byte + <decimal digits>); demanding that whole shape
        # keeps random hex tags that merely contain the byte (1 in 16 for 16 bytes) out.
        head, found, tail = data.partition(sep)
        return bool(found) and tail.isdigit() and not head.translate(None, _PRINTABLE)

    return test


def _fixed_tag(p: Mapping[str, Any]) -> Test:
    tags = frozenset(p["tags"])

    def test(f: _Facts) -> bool:
        return f.from_tag in tags

    return test


def _callid_decimal_with_digit_branch(p: Mapping[str, Any]) -> Test:
    prefix: str = p["branch_prefix"]
    n = len(prefix)

    def test(f: _Facts) -> bool:
        cid = f.call_id
        if cid is None or not cid.isdigit() or not cid.isascii():
            return False
        branch = f.branch
        if branch is None or not branch.startswith(prefix):
            return False
        rest = branch[n:]
        return rest.isdigit() and rest.isascii()

    return test


def _sdp_line(p: Mapping[str, Any]) -> Test:
    # Each pattern is a line prefix: at the start of the body or after a line break.
    starts = tuple(s.encode() for s in p["lines"])
    inner = tuple(b"\n" + s for s in starts)

    def test(f: _Facts) -> bool:
        body = f.body
        if not body:
            return False
        return body.startswith(starts) or any(s in body for s in inner)

    return test


# --- parameter validation -----------------------------------------------------------


class _Bad(Exception):
    """A parameter problem; the loader adds the file, rule and field."""


def _str(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad("must be a non-empty string")
    return value


def _str_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Bad("must be a non-empty list of strings")
    if not all(isinstance(v, str) and v for v in value):
        raise _Bad("every entry must be a non-empty string")
    return tuple(value)


def _opt_str_list(value: object) -> tuple[str, ...]:
    return () if value == [] else _str_list(value)


def _fields(value: object) -> frozenset[str]:
    items = frozenset(_str_list(value))
    unknown = items - FIELDS
    if unknown:
        raise _Bad(f"unknown field(s) {sorted(unknown)}; choose from {sorted(FIELDS)}")
    return items


def _byte(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise _Bad("must be an integer 0..255")
    return value


REQUEST = "request"
RESPONSE = "response"
ANY = "any"
# kind -> (parameters: name -> (converter, default or _REQUIRED), build, scope). Scope:
# the messages a kind looks at; rules on request structure skip responses, and a Server
# header is a response's.
_REQUIRED: Any = object()
_Param = tuple[Callable[[object], Any], Any]
_KINDS: dict[str, tuple[dict[str, _Param], Callable[[Mapping[str, Any]], Test], str]] = {
    "user_agent_prefix": (
        {"prefixes": (_str_list, _REQUIRED), "exact": (_opt_str_list, [])},
        _ua_prefix,
        ANY,
    ),
    "server_prefix": (
        {"prefixes": (_str_list, _REQUIRED), "exact": (_opt_str_list, [])},
        _server_prefix,
        RESPONSE,
    ),
    "to_equals_from_numeric": ({}, _to_equals_from_numeric, REQUEST),
    "ip_literal_host": (
        {"fields": (_fields, ["ruri", "from", "to"])},
        _ip_literal_host,
        REQUEST,
    ),
    "placeholder_host": (
        {"hosts": (_str_list, _REQUIRED), "fields": (_fields, sorted(FIELDS))},
        _placeholder_host,
        REQUEST,
    ),
    "tag_byte": ({"byte": (_byte, 1)}, _tag_byte, REQUEST),
    "fixed_tag": ({"tags": (_str_list, _REQUIRED)}, _fixed_tag, REQUEST),
    "callid_decimal_with_digit_branch": (
        {"branch_prefix": (_str, "z9hG4bK-")},
        _callid_decimal_with_digit_branch,
        REQUEST,
    ),
    "sdp_line": ({"lines": (_str_list, _REQUIRED)}, _sdp_line, ANY),
}
_COMMON = frozenset(
    {"id", "kind", "description", "source", "weight", "untrusted_only", "ignore_methods"}
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    id: str
    weight: float
    untrusted_only: bool
    ignore_methods: frozenset[str]
    scope: str  # REQUEST, RESPONSE or ANY
    test: Test


def _compile(raw: object, index: int, seen: set[str], origin: str) -> tuple[Rule, _Compiled]:
    label = f"rule #{index + 1}"

    def bad(field: str, problem: str) -> ValueError:
        return ValueError(f"{origin}: {label}: field {field!r}: {problem}")

    if not isinstance(raw, dict):
        raise ValueError(f"{origin}: {label}: must be a table ([[rule]])")
    rid = raw.get("id")
    if not isinstance(rid, str) or not rid or not all(c.isalnum() or c in "-_." for c in rid):
        raise bad("id", "must be a non-empty string of letters, digits, '-', '_' or '.'")
    label = f"rule {rid!r}"
    if rid in seen:
        raise bad("id", "duplicate rule id")
    seen.add(rid)

    kind = raw.get("kind")
    if kind not in _KINDS:
        raise bad("kind", f"unknown kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}")
    spec, build, scope = _KINDS[kind]
    for name in ("description", "source"):
        try:
            _str(raw.get(name))
        except _Bad as exc:
            raise bad(name, str(exc)) from None
    weight = raw.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise bad("weight", "must be a number")
    if not math.isfinite(weight) or weight < 0:
        raise bad("weight", "must be a finite number >= 0")
    untrusted_only = raw.get("untrusted_only", False)
    if not isinstance(untrusted_only, bool):
        raise bad("untrusted_only", "must be true or false")
    try:
        ignore = frozenset(_opt_str_list(raw.get("ignore_methods", [])))
    except _Bad as exc:
        raise bad("ignore_methods", str(exc)) from None

    unknown = set(raw) - _COMMON - set(spec)
    if unknown:
        allowed = ", ".join(sorted(spec)) or "none"
        raise bad(sorted(unknown)[0], f"not a parameter of kind {kind!r} (parameters: {allowed})")
    params: dict[str, Any] = {}
    for name, (convert, default) in spec.items():
        if name not in raw:
            if default is _REQUIRED:
                raise bad(name, f"required by kind {kind!r}")
            params[name] = convert(default)
            continue
        try:
            params[name] = convert(raw[name])
        except _Bad as exc:
            raise bad(name, str(exc)) from None

    rule = Rule(
        rid, kind, raw["description"], raw["source"], float(weight), untrusted_only, ignore, params
    )
    return rule, _Compiled(rid, float(weight), untrusted_only, ignore, scope, build(params))


class Fingerprints:
    """The loaded rule set. Immutable; share one instance between all packets."""

    __slots__ = ("_compiled", "_plans", "origin", "rules", "threshold")

    def __init__(self, rules: list[tuple[Rule, _Compiled]], threshold: float, origin: str):
        self.rules: tuple[Rule, ...] = tuple(r for r, _ in rules)
        self.threshold = threshold
        self.origin = origin
        self._compiled = tuple(c for _, c in rules)
        self._plans: dict[tuple[bool, str | None], tuple[_Compiled, ...]] = {}

    def _plan(self, trusted: bool, method: str | None) -> tuple[_Compiled, ...]:
        """The rules that apply to a request of `method` (None: a response), so that the
        loop in `match` tests nothing else. Cached for the methods seen so far."""
        key = (trusted, method)
        plan = self._plans.get(key)
        if plan is None:
            plan = tuple(
                c
                for c in self._compiled
                if not (trusted and c.untrusted_only)
                and (
                    c.scope != RESPONSE and method not in c.ignore_methods
                    if method is not None
                    else c.scope != REQUEST
                )
            )
            if len(self._plans) < _MAX_PLANS:  # unknown methods are unbounded: don't keep
                self._plans[key] = plan
        return plan

    @classmethod
    def load(cls, path: Path | None = None) -> Fingerprints:
        """Load a rule file (default: the packaged `data/fingerprints.toml`).

        Raises ValueError naming the file, the rule and the field for any problem.
        """
        if path is None:
            res = resources.files(__package__ or "spitguard.guard") / "data" / "fingerprints.toml"
            return cls.loads(res.read_text(encoding="utf-8"), origin=str(res))
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{path}: cannot read fingerprint rules: {exc}") from None
        return cls.loads(text, origin=str(path))

    @classmethod
    def loads(cls, text: str, *, origin: str = "<string>") -> Fingerprints:
        """Load rules from TOML text; `origin` names it in error messages."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{origin}: not valid TOML: {exc}") from None
        unknown = set(data) - {"threshold", "rule"}
        if unknown:
            raise ValueError(f"{origin}: unknown top-level key {sorted(unknown)[0]!r}")
        threshold = data.get("threshold")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise ValueError(f"{origin}: 'threshold' must be a number > 0")
        raw_rules = data.get("rule")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise ValueError(f"{origin}: no rules: add [[rule]] tables")
        seen: set[str] = set()
        rules = [_compile(r, i, seen, origin) for i, r in enumerate(raw_rules)]
        return cls(rules, float(threshold), origin)

    def match(self, msg: Request | Response, *, trusted: bool) -> FingerprintResult:
        """Score `msg`. Rules marked untrusted_only are skipped when `trusted`."""
        facts = _Facts(msg)
        method = msg.method if isinstance(msg, Request) else None
        score = 0.0
        hits: list[str] = []
        for rule in self._plan(trusted, method):
            if rule.test(facts):
                score += rule.weight
                hits.append(rule.id)
        if not hits:
            return NOT_MATCHED
        return FingerprintResult(score, tuple(hits), score >= self.threshold - _EPSILON)

    def __repr__(self) -> str:
        return f"<Fingerprints {len(self.rules)} rules, threshold {self.threshold}>"


__all__ = ["FIELDS", "FingerprintResult", "Fingerprints", "Rule", "is_ip_literal"]
