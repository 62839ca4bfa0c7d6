"""The parser against externally-authored corpora: RFC 4475, real traffic, scanners, PROTOS."""

from __future__ import annotations

import contextlib
import time

import pytest

from corpus import manifest, read
from spitguard.sip import (
    AbsoluteUri,
    Request,
    Response,
    SipParseError,
    SipUri,
    parse,
)

RFC4475 = {row["name"]: row for row in manifest("rfc4475")}

# §3.1.2 messages are syntactically invalid: each must raise, for the right reason.
INVALID_REASONS = {
    "badinv01.dat": {"empty_value", "bad_param"},
    "clerr.dat": {"body_truncated"},
    "ncl.dat": {"bad_content_length"},
    "scalar02.dat": {"bad_cseq", "bad_max_forwards", "bad_expires"},
    "scalarlg.dat": {"bad_cseq"},
    "quotbal.dat": {"unterminated_quote"},
    "ltgtruri.dat": {"bad_request_uri"},
    "lwsruri.dat": {"bad_request_line"},
    "lwsstart.dat": {"bad_request_line"},
    "trws.dat": {"bad_request_line"},
    "escruri.dat": {"bad_request_uri"},
    "baddate.dat": {"bad_date"},
    "regbadct.dat": {"bad_name_addr"},
    "badaspec.dat": {"bad_name_addr"},
    "baddn.dat": {"bad_display_name"},
    "badvers.dat": {"bad_version"},
    "mismatch01.dat": {"cseq_method_mismatch"},
    "mismatch02.dat": {"cseq_method_mismatch"},
    "bigcode.dat": {"bad_status_line"},
    "test.dat": {"bad_header", "bad_request_line"},  # archive-only, no version in start line
}

# §3.2/§3.3: parse, then the proxy answers with an error. The parser's part is the flag.
DEFECTS = {
    "badbranch.dat": {"branch:empty"},
    "insuf.dat": {"missing:call-id", "missing:from", "missing:to", "missing:max-forwards"},
    "unkscm.dat": {"uri:scheme"},
    "novelsc.dat": {"uri:scheme"},
    "multi01.dat": {
        "multiple:call-id",
        "multiple:to",
        "multiple:from",
        "multiple:max-forwards",
        "multiple:cseq",
    },
    "inv2543.dat": {"branch:missing", "missing:max-forwards"},
    "wsinv.dat": {"branch:rfc2543"},  # top Via branch "390skdjuw" lacks the magic cookie
    "longreq.dat": {"branch:missing"},
}

# Conflicting Content-Length values leave no way to frame the body (RFC 4475 §3.3.9 says
# "framing error"), so it is malformed input here: dropped over UDP, connection closed on TCP.
FRAMING_ERRORS = {"mcl01.dat": "content_length_conflict"}


@pytest.mark.parametrize("name", sorted(RFC4475))
def test_rfc4475_row(name: str) -> None:
    row = RFC4475[name]
    data = read("rfc4475", name)
    if row["expected"] == "invalid" or name in FRAMING_ERRORS:
        with pytest.raises(SipParseError) as err:
            parse(data)
        expected = INVALID_REASONS.get(name) or {FRAMING_ERRORS[name]}
        assert err.value.reason in expected, (name, err.value)
        return
    msg = parse(data)
    assert set(msg.defects) == DEFECTS.get(name, set()), (name, msg.defects)
    if name != "dblreq.dat":
        assert msg.to_bytes() == data, "unmodified message must re-serialize byte-exact"


def test_wsinv_tricky_values() -> None:
    msg = parse(read("rfc4475", "wsinv.dat"))
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.params == {"unknownparam": None}
    assert str(msg.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.max_forwards == 68
    assert (msg.cseq.number, msg.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contacts = msg.contacts
    assert isinstance(contacts, list) and len(contacts) == 1
    assert contacts[0].display == 'Quoted string ""'
    assert contacts[0].q == 0.33
    assert contacts[0].params["newparam"] == "newvalue"
    assert msg.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert msg.get("subject") == ""
    assert msg.routes[0].uri.lr  # type: ignore[union-attr]
    assert len(msg.body) == 150
    ct = msg.content_type
    assert ct is not None and ct.mime == "application/sdp"


def test_intmeth_unusual_characters() -> None:
    msg = parse(read("rfc4475", "intmeth.dat"))
    assert isinstance(msg, Request)
    assert msg.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert msg.cseq.method == msg.method
    assert isinstance(msg.uri, SipUri)
    assert msg.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert msg.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    display = msg.to.display
    assert display is not None
    assert "\x00" in display and "\x07" in display and "\x7f" in display
    assert msg.from_.tag == "_token~1'+`*%!-."
    assert msg.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert msg.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert msg.via.branch == "z9hG4bK-.!%66*_+`'~"
    assert msg.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes() -> None:
    esc01 = parse(read("rfc4475", "esc01.dat"))
    assert isinstance(esc01, Request) and isinstance(esc01.uri, SipUri)
    assert esc01.uri.user_unescaped == "sips:user@example.com"
    assert esc01.from_.uri.user_unescaped == "I have spaces"  # type: ignore[union-attr]
    assert esc01.to.uri.user_unescaped == "user"  # type: ignore[union-attr]

    escnull = parse(read("rfc4475", "escnull.dat"))
    assert escnull.to.uri.user_unescaped == "null-\x00-null"  # type: ignore[union-attr]
    contacts = escnull.contacts
    assert isinstance(contacts, list)
    users = [c.uri.user_unescaped for c in contacts]  # type: ignore[union-attr]
    assert users == ["\x00", "\x00\x00"]  # distinct, not truncated at NUL

    esc02 = parse(read("rfc4475", "esc02.dat"))
    assert isinstance(esc02, Request)
    assert esc02.method == "RE%47IST%45R"  # not REGISTER: % is not an escape in a method
    assert esc02.to.display == "%Z%45"
    contacts = esc02.contacts
    assert isinstance(contacts, list) and len(contacts) == 2  # C%6Fntact is another header
    assert esc02.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_semiuri_transports_longreq() -> None:
    assert parse(read("rfc4475", "lwsdisp.dat")).from_.display == "caller"

    semi = parse(read("rfc4475", "semiuri.dat"))
    assert isinstance(semi, Request) and isinstance(semi.uri, SipUri)
    assert semi.uri.user == "user;par=u%40example.net"
    assert semi.uri.user_unescaped == "user;par=u@example.net"
    assert semi.uri.host == "example.com" and not semi.uri.params

    tr = parse(read("rfc4475", "transports.dat"))
    assert [v.transport for v in tr.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]

    long = parse(read("rfc4475", "longreq.dat"))
    assert len(long.vias) == 34
    assert long.vias[-1].received == "192.0.2.5"
    assert long.to.display is not None and "extremeextreme" in long.to.display
    assert long.to.uri.port == 6000  # type: ignore[union-attr]
    assert long.from_.tag is not None and len(long.from_.tag) > 150
    assert long.call_id.endswith("longcallid")


def test_dblreq_ignores_trailing_octets() -> None:
    data = read("rfc4475", "dblreq.dat")
    msg = parse(data)
    assert isinstance(msg, Request) and msg.method == "REGISTER"
    assert msg.body == b""
    assert b"INVITE" not in msg.to_bytes()
    assert data.startswith(msg.to_bytes())


def test_mpart_binary_body_and_reasons() -> None:
    mp = parse(read("rfc4475", "mpart01.dat"))
    assert b"\x00" in mp.body
    assert len(mp.body) == int(mp.get("content-length") or -1)
    ct = mp.content_type
    assert ct is not None and ct.mime == "multipart/mixed"

    un = parse(read("rfc4475", "unreason.dat"))
    assert isinstance(un, Response) and un.status == 200
    assert un.reason == "= 2**3 * 5**2 но сто девяносто девять - простое"

    no = parse(read("rfc4475", "noreason.dat"))
    assert isinstance(no, Response) and no.status == 100 and no.reason == ""


def test_section3_parse_then_reject_values() -> None:
    unk = parse(read("rfc4475", "unkscm.dat"))
    assert isinstance(unk, Request) and isinstance(unk.uri, AbsoluteUri)
    assert unk.uri.scheme == "nobodyknowsthisscheme"
    unksm2 = parse(read("rfc4475", "unksm2.dat"))
    assert isinstance(unksm2.to.uri, AbsoluteUri) and unksm2.to.uri.scheme == "isbn"
    assert parse(read("rfc4475", "zeromf.dat")).max_forwards == 0
    c1 = parse(read("rfc4475", "cparam01.dat")).contacts
    assert isinstance(c1, list) and "unknownparam" in c1[0].params  # a header param
    c2 = parse(read("rfc4475", "cparam02.dat")).contacts
    assert isinstance(c2, list) and "unknownparam" in c2[0].uri.params  # type: ignore[union-attr]
    rc = parse(read("rfc4475", "regescrt.dat")).contacts
    assert isinstance(rc, list)
    assert rc[0].uri.headers == "Route=%3Csip:sip.example.com%3E"  # type: ignore[union-attr]
    assert "255.255.255.255" in [v.host for v in parse(read("rfc4475", "bcast.dat")).vias]
    multi = parse(read("rfc4475", "multi01.dat"))
    assert multi.call_id == "multi01.98asdh@192.0.2.1"  # the first copy wins
    aut = parse(read("rfc4475", "regaut01.dat"))
    assert aut.authorization[0].scheme.lower() == "nooneknowsthisscheme"
    inv = parse(read("rfc4475", "inv2543.dat"))
    assert inv.get("content-length") is None and inv.body.startswith(b"v=0")


LEGIT = manifest("legit")
SCANNERS = manifest("scanners")


@pytest.mark.parametrize("row", LEGIT, ids=[r["name"] for r in LEGIT])
def test_legit_corpus(row: dict[str, str]) -> None:
    data = read("legit", row["name"])
    msg = parse(data)
    assert msg.to_bytes() == data
    method = row["method"].split()[0]
    if isinstance(msg, Request):
        assert msg.method == method
        assert msg.cseq.method == method
    else:
        assert str(msg.status) == method
    ua = msg.user_agent or msg.server or ""
    expected_ua = row["user_agent_or_server"]
    if not expected_ua.startswith(("(", '"')) and " (" not in expected_ua:
        assert ua == expected_ua
    assert msg.call_id and msg.via.sent_by and msg.from_.uri
    assert len(msg.body) == int(msg.get("content-length") or len(msg.body))


@pytest.mark.parametrize("row", SCANNERS, ids=[r["name"] for r in SCANNERS])
def test_scanner_corpus(row: dict[str, str]) -> None:
    data = read("scanners", row["name"])
    msg = parse(data)
    assert isinstance(msg, Request)
    assert msg.method == row["method"]
    assert msg.to_bytes() == data
    assert msg.call_id and msg.cseq.method == msg.method and msg.via.host


def test_scanner_key_fields() -> None:
    svmap = parse(read("scanners", "svmap_v03_options.sip"))
    assert svmap.user_agent == "friendly-scanner"
    assert isinstance(svmap, Request) and svmap.uri.user == "100"  # type: ignore[union-attr]
    assert svmap.to.uri == svmap.from_.uri
    pplsip = parse(read("scanners", "pplsip_invite_glutton.sip"))
    assert b"s=portsip.com" in pplsip.body or (pplsip.user_agent or "").startswith("pplsip")
    crack = parse(read("scanners", "svcrack_v03_register_auth.sip"))
    creds = crack.authorization[0]
    assert creds.username and creds.realm == "asterisk"


PROTOS = [r for r in manifest("protos") if r["included"] == "yes"]


def test_protos_never_crash_nor_hang() -> None:
    """Every PROTOS c07-sip case parses or raises SipParseError, each in a few ms."""
    slowest = (0.0, "")
    outcomes = {"parsed": 0, "rejected": 0}
    for row in PROTOS:
        data = read("protos", row["file"])
        t0 = time.perf_counter()
        try:
            msg = parse(data)
            outcomes["parsed"] += 1
            _touch_everything(msg)
        except SipParseError as exc:
            assert exc.reason != "malformed", (row["file"], exc)  # no unforeseen exception
            outcomes["rejected"] += 1
        took = time.perf_counter() - t0
        slowest = max(slowest, (took, row["file"]))
    assert len(PROTOS) == 4446
    assert outcomes["parsed"] > 0 and outcomes["rejected"] > 0
    # A generous bound against pathological (super-linear) behaviour, not a speed test.
    assert slowest[0] < 0.05, slowest


def test_protos_reference_case_is_valid() -> None:
    msg = parse(read("protos", "0000000.sip"))
    assert isinstance(msg, Request) and msg.method == "INVITE" and not msg.defects


def _touch_everything(msg: Request | Response) -> None:
    """Lazy accessors must also raise nothing but SipParseError."""
    for attr in (
        "paths",
        "content_type",
        "event",
        "supported",
        "require",
        "proxy_require",
        "authorization",
        "proxy_authorization",
        "www_authenticate",
        "proxy_authenticate",
    ):
        with contextlib.suppress(SipParseError):
            getattr(msg, attr)
