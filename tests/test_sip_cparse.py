"""The C fast path of parse() (sip/_cparse.c) against the Python parser, its reference.

The contract: for any input, `_cparse.parse` returns None (the Python parser then
decides) or a message whose every part equals what `parse_python` returns; where the
Python parser raises, the C path returns None. So errors and their reasons always come
from one place, and the C path can only be faster, never different.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import CORPORA
from sip_strategies import mutated, requests
from spitguard.sip import STAR, Request, Response, SipParseError, Via, parse
from spitguard.sip import message as sip_message
from spitguard.sip.message import DEFAULT_LIMITS, Limits, parse_python

if sip_message._cparse is None:  # a missing build must fail loudly, never skip
    raise RuntimeError(
        "spitguard.sip._cparse is not built: run `make venv` (needs gcc and the Python "
        "headers; scripts/install-deps.sh installs them)"
    )
cparse = sip_message._cparse


def state(msg: Request | Response) -> dict[str, Any]:
    out: dict[str, Any] = {
        "class": type(msg),
        "fields": msg._fields,
        "body": msg._body,
        "raw": msg._raw,
        "typed": msg._typed,
        "defects": msg.defects,
    }
    if isinstance(msg, Request):
        out["start"] = (msg.method, msg.uri)
    else:
        out["start"] = (msg.status, msg.reason)
    return out


def agree(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Request | Response | None:
    """Check the contract on one input; return what the C path returned."""
    fast = cparse.parse(data, limits)
    try:
        ref = parse_python(data, limits)
    except SipParseError as exc:
        assert fast is None, f"C accepted what Python rejects ({exc.reason}): {data[:200]!r}"
        return None
    if fast is not None:
        assert state(fast) == state(ref), data[:300]
        # What the proxy does next behaves the same too.
        assert fast.to_bytes() == ref.to_bytes()
        fast.set("Max-Forwards", "42")
        ref.set("Max-Forwards", "42")
        assert fast.to_bytes() == ref.to_bytes()
    return fast


def corpus_files(folder: str) -> list[Any]:
    return sorted(p for p in (CORPORA / folder).iterdir() if p.suffix in (".sip", ".dat"))


def test_parse_uses_the_c_path() -> None:
    assert sip_message.PARSER == "c"
    data = (CORPORA / "legit").joinpath(corpus_files("legit")[0].name).read_bytes()
    assert cparse.parse(data, DEFAULT_LIMITS) is not None


def test_pure_python_switch() -> None:
    env = {**os.environ, "SPITGUARD_SIP_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", "from spitguard.sip import message; print(message.PARSER)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "python"


@pytest.mark.parametrize("folder", ["legit", "scanners", "rfc4475"])
def test_corpora_agree(folder: str) -> None:
    files = corpus_files(folder)
    assert files
    for path in files:
        agree(path.read_bytes())


def test_every_legit_message_takes_the_c_path() -> None:
    slow = [p.name for p in corpus_files("legit") if agree(p.read_bytes()) is None]
    assert slow == []


def test_scanner_messages_take_the_c_path() -> None:
    # The two SIPVicious 0.2 messages put a space after ';' ("; tag=..."): valid, rare,
    # left to the Python parser.
    slow = {p.name for p in corpus_files("scanners") if agree(p.read_bytes()) is None}
    assert slow == {
        "svcrack_v02_register_auth_honeynet2010.sip",
        "svmap_v02_options_honeynet2010.sip",
    }


def test_protos_agree() -> None:
    files = sorted((CORPORA / "protos").rglob("*"))
    cases = [p for p in files if p.is_file() and p.suffix not in (".tsv", ".md", ".txt")]
    assert len(cases) > 4000
    fast = sum(agree(p.read_bytes()) is not None for p in cases)
    assert fast > 0


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_generated_requests_agree(case: tuple[bytes, dict[str, object]]) -> None:
    agree(case[0])


@settings(max_examples=2000)
@given(mutated())
def test_mutated_corpus_agrees(data: bytes) -> None:
    agree(data)


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_agree(data: bytes) -> None:
    agree(data)


SMALL = Limits(max_message_size=400, max_headers=6, max_line_length=90, max_uri_length=24)


@settings(max_examples=1000)
@given(mutated())
def test_small_limits_agree(data: bytes) -> None:
    agree(data, SMALL)


def msg(*lines: str, body: bytes = b"", cl: bool = True) -> bytes:
    head = list(lines)
    if cl:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


BASE = [
    "INVITE sip:bob@example.com SIP/2.0",
    "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc;rport",
    'From: "Alice" <sip:alice@example.com>;tag=1928',
    "To: <sip:bob@example.com>",
    "Call-ID: a84b4c76e66710",
    "CSeq: 314159 INVITE",
    "Max-Forwards: 70",
    "Contact: <sip:alice@10.0.0.1:5060>",
]


def with_line(index: int, line: str) -> list[str]:
    out = list(BASE)
    out[index] = line
    return out


# (label, input, True when the C path must take it, False when it must hand it over)
EDGES: list[tuple[str, bytes, bool]] = [
    ("base", msg(*BASE), True),
    ("compact forms", msg(*[ln.replace("Via:", "v:").replace("From:", "f:") for ln in BASE]), True),
    ("leading CRLFs", b"\r\n\r\n" + msg(*BASE), True),
    ("bytes after the body", msg(*BASE, body=b"v=0\r\n") + b"trailing", True),
    ("body framed", msg(*BASE, body=b"v=0\r\n"), True),
    ("no Content-Length", msg(*BASE, cl=False) + b"rest", True),
    ("Content-Length too big", msg(*BASE, "Content-Length: 99", cl=False), False),
    ("two Content-Lengths", msg(*BASE, "Content-Length: 0", "l: 0", cl=False), False),
    ("folded header", msg(*BASE, "Subject: first", " second"), False),
    ("bare LF", msg(*BASE).replace(b"Call-ID", b"X: a\nCall-ID"), False),
    ("tab in value", msg(*BASE, "Subject:\tspaced\tout "), True),
    ("NUL", msg(*BASE, "Subject: a\x00b"), False),
    ("UTF-8 display", msg(*with_line(2, 'From: "Jürgen" <sip:j@example.com>;tag=1')), True),
    ("UTF-8 reason", msg("SIP/2.0 486 Besetzt, später", *BASE[1:]), True),
    ("invalid UTF-8", msg(*BASE, "User-Agent: X1").replace(b"X1", b"X\xff\xc3"), True),
    ("NBSP ends a value", msg(*BASE, "Subject: hi\u00a0"), False),
    ("NBSP inside a value", msg(*BASE, "Subject: hi\u00a0there"), True),
    ("NEL starts a value", msg(*BASE, "Subject: \u0085hi"), False),
    ("NBSP in CSeq", msg(*with_line(5, "CSeq: 1\u00a0INVITE")), False),
    ("NBSP before <", msg(*with_line(2, 'From: "A"\u00a0<sip:a@x>;tag=1')), False),
    ("UTF-8 in a URI", msg(*with_line(3, "To: <sip:jürgen@example.com>")), False),
    ("UTF-8 in a param", msg(*with_line(3, "To: <sip:b@x>;tag=ü")), False),
    ("UTF-8 quoted param", msg(*with_line(3, 'To: <sip:b@x>;x="ü"')), True),
    ("unquoted display", msg(*with_line(2, "From: Alice Smith <sip:a@example.com>;tag=1")), True),
    ("addr-spec", msg(*with_line(3, "To: sip:bob@example.com;tag=9")), True),
    ("addr-spec with comma", msg(*with_line(3, "To: sip:b,ob@example.com")), False),
    ("quoted display, two spaces", msg(*with_line(2, 'From: "A"  <sip:a@x>;tag=1')), True),
    ("escaped quote in display", msg(*with_line(2, r'From: "A\"B" <sip:a@x>;tag=1')), False),
    ("Contact star", msg(*with_line(7, "Contact: *")), True),
    ("two Contact lines", msg(*BASE, "Contact: <sip:b@x>"), False),
    ("Contact list", msg(*with_line(7, 'Contact: <sip:a@x>;q=0.5, "B, C" <sip:b@y>')), True),
    (
        "Vias on one line",
        msg(*with_line(1, "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b")),
        True,
    ),
    ("IPv6", msg(*with_line(1, "Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKx")), True),
    ("port 65536", msg(*with_line(1, "Via: SIP/2.0/UDP 10.0.0.1:65536;branch=z9hG4bKx")), False),
    ("port 6 digits", msg(*with_line(7, "Contact: <sip:a@x:050600>")), False),
    ("port leading zeros", msg(*with_line(7, "Contact: <sip:a@x:05060>")), True),
    ("65 params", msg(*with_line(3, "To: <sip:b@x>" + ";p" * 65)), False),
    ("64 params", msg(*with_line(3, "To: <sip:b@x>" + "".join(f";p{i}" for i in range(64)))), True),
    ("duplicate params", msg(*with_line(3, "To: <sip:b@x>;tag=1;TAG=2")), True),
    ("empty param value", msg(*with_line(3, "To: <sip:b@x>;tag=")), False),
    ("branch rfc2543", msg(*with_line(1, "Via: SIP/2.0/UDP a;branch=1234")), True),
    ("branch missing", msg(*with_line(1, "Via: SIP/2.0/UDP a;rport")), True),
    ("branch bare", msg(*with_line(1, "Via: SIP/2.0/UDP a;branch")), True),
    ("branch only cookie", msg(*with_line(1, "Via: SIP/2.0/UDP a;branch=z9hG4bK")), True),
    ("missing Call-ID", msg(*[ln for ln in BASE if not ln.startswith("Call-ID")]), True),
    ("two To", msg(*BASE, "t: <sip:c@x>"), True),
    ("CSeq method mismatch", msg(*with_line(5, "CSeq: 1 BYE")), False),
    ("CSeq too big", msg(*with_line(5, "CSeq: 2147483648 INVITE")), False),
    ("CSeq leading zeros", msg(*with_line(5, "CSeq: 0001   INVITE")), True),
    ("Max-Forwards 256", msg(*with_line(6, "Max-Forwards: 256")), False),
    ("no Max-Forwards", msg(*[ln for ln in BASE if not ln.startswith("Max")]), True),
    ("Expires big", msg(*BASE, "Expires: 4294967296"), False),
    ("Expires max", msg(*BASE, "Expires: 4294967295"), True),
    ("Date", msg(*BASE, "Date: Sat, 13 Nov 2010 23:29:00 GMT"), True),
    ("bad Date", msg(*BASE, "Date: Sat, 13 Nov 2010 23:29:00 UTC"), False),
    ("Route list", msg(*BASE, "Route: <sip:p1;lr>, <sip:p2;lr>", "Route: <sip:p3;lr>"), True),
    ("bad header name", msg(*BASE, "Bad Name: x"), False),
    ("name with blanks", msg(*BASE, "Subject \t: x"), True),
    ("no colon", msg(*BASE, "Subject"), False),
    ("lower-case version", msg(*with_line(0, "INVITE sip:bob@example.com sip/2.0")), True),
    ("tel Request-URI", msg(*with_line(0, "INVITE tel:+12125550123 SIP/2.0")), False),
    ("sips", msg(*with_line(0, "INVITE sips:bob@example.com SIP/2.0")), True),
    ("URI headers", msg(*with_line(0, "INVITE sip:bob@x?subject=hi SIP/2.0")), False),
    ("two spaces", msg(*with_line(0, "INVITE  sip:bob@x SIP/2.0")), False),
    ("response", msg("SIP/2.0 180 Ringing", *BASE[1:]), True),
    ("response, no reason", msg("SIP/2.0 200", *BASE[1:]), True),
    ("response, empty reason", msg("SIP/2.0 200 ", *BASE[1:]), True),
    ("status 700", msg("SIP/2.0 700 Odd", *BASE[1:]), False),
    ("status 2000", msg("SIP/2.0 2000 OK", *BASE[1:]), False),
]


@pytest.mark.parametrize(("label", "data", "fast"), EDGES, ids=[e[0] for e in EDGES])
def test_edge_cases(label: str, data: bytes, fast: bool) -> None:
    got = agree(data)
    assert (got is not None) == fast, label


def test_contact_star_is_the_star() -> None:
    got = cparse.parse(msg(*with_line(7, "Contact: *")), DEFAULT_LIMITS)
    assert got is not None and got.contacts is STAR


def test_parse_goes_through_python_for_errors() -> None:
    with pytest.raises(SipParseError) as err:
        parse(msg(*with_line(5, "CSeq: 1 BYE")))
    assert err.value.reason == "cseq_method_mismatch"


def test_no_memory_kept_per_message() -> None:
    # Inputs that stop at different points of the C path: taken whole, handed over
    # after building objects (bad Date, CSeq mismatch, two Contacts, bad param), and
    # handed over before (folding).
    inputs = [data for _, data, _ in EDGES]
    for data in inputs:  # warm caches first (interned names, Python-side lru caches)
        agree(data)
    tracemalloc.start()
    try:
        for data in inputs * 20:
            cparse.parse(data, DEFAULT_LIMITS)
        before = tracemalloc.get_traced_memory()[0]
        for data in inputs * 400:
            cparse.parse(data, DEFAULT_LIMITS)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # ~24,000 parses: a leak of even one small object per parse would be ~1 MB.
    assert after - before < 64 * 1024


@pytest.mark.parametrize(
    ("limits", "fast"),
    [
        (Limits(max_message_size=10**20, max_headers=2**63 - 1, max_line_length=2**70), True),
        (Limits(max_uri_length=-(10**30)), False),
        (Limits(max_message_size=-1, max_headers=-5, max_line_length=0), False),
    ],
    ids=["huge", "hugely negative", "negative"],
)
def test_out_of_range_limits(limits: Limits, fast: bool) -> None:
    # Such limits make no sense, but they must not turn into OverflowError or wrap
    # around: the answer is the Python parser's.
    for path in corpus_files("legit"):
        agree(path.read_bytes(), limits)
    assert (agree(msg(*BASE), limits) is not None) == fast


def test_parse_before_setup_hands_over() -> None:
    # The extension loaded on its own, before message.py has told it which classes to
    # build: it must answer None, not touch the missing classes.
    so = cparse.__file__  # type: ignore[attr-defined]
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('spitguard.sip._cparse', {so!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "class L: max_message_size = 65535; max_headers = 128; "
        "max_line_length = 8192; max_uri_length = 2048\n"
        "data = b'OPTIONS sip:a@b SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\\r\\n"
        "CSeq: 1 OPTIONS\\r\\n\\r\\n'\n"
        "print(mod.parse(data, L()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


@settings(max_examples=500)
@given(
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=30),
    st.text(st.characters(codec="utf-8", exclude_characters='\r\n"\\'), max_size=20),
)
def test_unicode_values_agree(subject: str, display: str) -> None:
    # Header values and display names with any UTF-8 text, Unicode whitespace and
    # surrogate-escaped bytes included: the same strings as the Python parser, or None.
    lines = with_line(2, f'From: "{display}" <sip:a@example.com>;tag=1')
    agree(msg(*lines, f"Subject: {subject}"))
    agree(msg(*lines, f"Subject: {subject}").replace(b"Subject: ", b"Subject: \xff"))


def read(obj: object, cls: type, name: str, accessor: Any) -> Any:
    try:
        return ("value", accessor.__get__(obj, cls) if accessor is not None else getattr(obj, name))
    except SipParseError as exc:
        return ("error", exc.reason)


def test_c_accessors_read_what_the_python_ones_read() -> None:
    # Every attribute the C accessors took over, on every parsed corpus message (and on
    # its Vias, From, To, Contacts), before and after the typed cache is dropped: the
    # same value or the same error as the Python accessor it replaced.
    replaced = sip_message.PYTHON_ACCESSORS
    names = {(cls.__name__, name) for cls, name, _ in replaced}
    assert {("Message", "vias"), ("Message", "from_"), ("Via", "branch")} <= names
    assert {("NameAddr", "tag"), ("Request", "uri"), ("Message", "body")} <= names
    checked = 0
    for folder in ("legit", "scanners", "rfc4475"):
        for path in corpus_files(folder):
            try:
                message = parse(path.read_bytes())
            except SipParseError:
                continue
            for drop in (False, True):
                if drop:
                    message.drop_parsed()
                for cls, name, py in replaced:
                    if not isinstance(message, cls):
                        continue
                    if cls.__name__ not in ("Message", "Request", "Response"):
                        continue
                    ours = read(message, cls, name, None)
                    assert ours == read(message, cls, name, py), (path.name, name)
                    checked += 1
            values: list[Any] = []
            for name in ("vias", "contacts", "routes"):
                got = read(message, type(message), name, None)
                if got[0] == "value" and isinstance(got[1], list):
                    values += got[1]
            for name in ("from_", "to"):
                got = read(message, type(message), name, None)
                if got[0] == "value":
                    values.append(got[1])
            for value in values:
                for cls, name, py in replaced:
                    if isinstance(value, cls):
                        assert read(value, cls, name, None) == read(value, cls, name, py)
                        checked += 1
    assert checked > 1000


def test_c_accessors_refuse_foreign_objects() -> None:
    vias = sip_message.Message.__dict__["vias"]
    assert sip_message.Message.vias is vias  # read on the class: the descriptor itself
    with pytest.raises(TypeError):
        vias.__get__(object(), object)
    with pytest.raises(TypeError):
        Via.__dict__["branch"].__get__(("too", "short"), Via)
