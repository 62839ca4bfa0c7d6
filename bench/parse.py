"""SIP parse throughput: spitguard.sip.parse vs aiosipua.SipMessage.parse, one run.

"Full parse" is the same work on both sides, per message: parse the bytes, then get
the typed values a proxy needs: the Request-URI as a URI object, every Via parsed
(top branch read), From and To parsed (URI and tag read), Call-ID, CSeq (number and
method), the Contact(s) parsed, Content-Length and the body. spitguard does most of
this inside parse() and caches it; aiosipua does it in its properties (and
`aiosipua.parse_uri` for the Request-URI), each read exactly once here.

The mix is every .sip file of shared/corpora/legit plus generated desk-phone traffic
(Polycom / Yealink / Grandstream phones and an Asterisk PBX behind the edge).

Usage: bench/parse.py [--quick] [--seconds N] [--rounds N] [--profile [--sort KEY]]
                      [--repeat-mix]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiosipua

from _common import (
    interleaved,
    machine_summary,
    pin_to_one_cpu,
    print_profile,
    result_line,
)
from spitguard.sip import Request, message
from spitguard.sip.message import DEFAULT_LIMITS, parse_python

CORPUS_DIR = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "legit"
SEED = 5060
CRLF = "\r\n"
# Every per-transaction identifier (tags, branches, Call-IDs) carries this placeholder;
# each pass over the mix replaces it with a fresh salt of the same length, so no two
# timed messages share a tag, branch or Call-ID, as on the wire. Values that really do
# repeat (a phone's AOR, Contact, User-Agent; the edge's Record-Route URI) still repeat.
SALT = "zzzzzz"
SALT_B = SALT.encode()
PHONES = 400  # phones behind the edge; each keeps its extension, address and UA

# Call-ID and CSeq of one message: what both sides must agree on.
Key = tuple[str, int, str]
FullParse = Callable[[bytes], Key]


# --- the two sides: identical "full parse" work ------------------------------------


def make_full_ours(sg_parse: Callable[[bytes], Request | message.Response]) -> FullParse:
    """Our full parse with a given parse function (the C path, or the Python reference):
    one Python frame per message, like full_theirs."""

    def full_ours(data: bytes) -> Key:
        msg = sg_parse(data)
        if isinstance(msg, Request):
            _uri = msg.uri  # parsed by parse() (Request-URI validation is eager)
        vias = msg.vias
        _branch = vias[0].branch
        frm = msg.from_
        _f = frm.uri, frm.tag
        to = msg.to
        _t = to.uri, to.tag
        call_id = msg.call_id
        cseq = msg.cseq
        _contacts = msg.contacts
        _len = msg.content_length
        _body = msg.body
        return call_id, cseq.number, cseq.method

    return full_ours


full_ours = make_full_ours(message.parse)  # the C fast path where it is built
full_ours_python = make_full_ours(parse_python)  # the reference parser alone


_aio_parse = aiosipua.SipMessage.parse
_aio_parse_uri = aiosipua.parse_uri
_AioRequest = aiosipua.SipRequest


def full_theirs(data: bytes) -> Key:
    msg = _aio_parse(data)
    if isinstance(msg, _AioRequest):
        _uri = _aio_parse_uri(msg.uri)
    vias = msg.via
    _branch = vias[0].branch
    frm = msg.from_addr
    assert frm is not None
    _f = frm.uri, frm.tag
    to = msg.to_addr
    assert to is not None
    _t = to.uri, to.tag
    call_id = msg.call_id
    cseq = msg.cseq
    assert call_id is not None and cseq is not None
    _contacts = msg.contact
    _len = msg.content_length
    _body = msg.body
    return call_id, cseq.seq, cseq.method


# --- generated traffic -----------------------------------------------------------------

DOMAIN = "pbx.example.com"
EDGE = "203.0.113.10"  # spitguard's public address
PBX = "10.20.0.5"
PBX_SERVER = "Asterisk PBX 18.20.2"

POLYCOM_UAS = (
    "PolycomVVX-VVX_411-UA/6.4.3.5018",
    "PolycomVVX-VVX_450-UA/6.3.1.8427",
    "PolycomVVX-VVX_350-UA/5.9.5.0614",
)
YEALINK_UAS = (
    "Yealink SIP-T46U 108.86.0.20",
    "Yealink SIP-T54W 96.86.0.100",
    "Yealink SIP-T33G 124.86.0.75",
)
GRANDSTREAM_UAS = (
    "Grandstream GXP2170 1.0.11.23",
    "Grandstream GRP2614 1.0.5.67",
    "Grandstream GXP1628 1.0.7.13",
)
ALLOW = "INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, INFO, SUBSCRIBE, UPDATE, MESSAGE"
PBX_ALLOW = "OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK"


def _build(start: str, headers: list[tuple[str, str]], body: str = "") -> bytes:
    raw_body = body.encode()
    lines = [start, *(f"{n}: {v}" for n, v in headers), f"Content-Length: {len(raw_body)}"]
    return (CRLF.join(lines) + CRLF + CRLF).encode() + raw_body


@dataclass
class Phone:
    vendor: str  # polycom | yealink | grandstream
    ua: str
    ext: int
    ip: str  # the phone's LAN address (it sits behind NAT)
    port: int
    mac: str


class Gen:
    """Random but well-formed identifiers in each vendor's own style."""

    def __init__(self, rng: random.Random) -> None:
        self.r = rng
        self.population = [self._new_phone() for _ in range(PHONES)]

    def hexs(self, n: int) -> str:
        return "".join(self.r.choice("0123456789abcdef") for _ in range(n))

    def upper_hex(self, n: int) -> str:
        return self.hexs(n).upper()

    def digits(self) -> str:
        return str(self.r.randrange(100_000_000, 4_294_967_295))

    def phone(self) -> Phone:
        return self.r.choice(self.population)

    def _new_phone(self) -> Phone:
        r = self.r
        vendor = r.choice(("polycom", "polycom", "yealink", "yealink", "grandstream"))
        uas = {"polycom": POLYCOM_UAS, "yealink": YEALINK_UAS, "grandstream": GRANDSTREAM_UAS}
        oui = {"polycom": "0004f2", "yealink": "805ec0", "grandstream": "000b82"}[vendor]
        return Phone(
            vendor,
            r.choice(uas[vendor]),
            r.randrange(1001, 1300),
            f"192.168.{r.randrange(1, 20)}.{r.randrange(10, 250)}",
            r.choice((5060, 5060, 5062, 11780)),
            oui + self.hexs(6),
        )

    def branch(self, p: Phone) -> str:
        if p.vendor == "polycom":
            return "z9hG4bK" + self.hexs(8) + self.upper_hex(7) + SALT
        return "z9hG4bK" + self.digits() + SALT

    def tag(self, p: Phone) -> str:
        if p.vendor == "polycom":
            return f"{self.upper_hex(8)}-{self.upper_hex(8)}{SALT}"
        return self.digits() + SALT

    def call_id(self, p: Phone) -> str:
        if p.vendor == "polycom":
            return f"{self.hexs(8)}-{self.hexs(2)}{SALT}-{self.hexs(8)}@{p.ip}"
        if p.vendor == "yealink":
            return f"0_{self.digits()}{SALT}@{p.ip}"
        return f"{self.digits()}{SALT}-{p.port}-1@BJC.BGI.B.{self.upper_hex(3)}"

    def pbx_call_id(self) -> str:
        return f"{self.hexs(8)}-{self.hexs(4)}-{self.hexs(4)}-{self.hexs(4)}-{self.hexs(6)}{SALT}"

    def pbx_branch(self) -> str:
        return f"z9hG4bKPj{self.pbx_call_id()}"

    def pbx_tag(self) -> str:
        return self.pbx_call_id()

    def cseq(self) -> int:
        return self.r.randrange(1, 3000)


def _via(p: Phone, branch: str) -> str:
    return f"SIP/2.0/UDP {p.ip}:{p.port};branch={branch};rport"


def _via_nat(p: Phone, branch: str, g: Gen) -> str:
    public = f"198.51.100.{g.r.randrange(2, 250)}"
    rport = g.r.randrange(1024, 65535)
    return f"SIP/2.0/UDP {p.ip}:{p.port};rport={rport};received={public};branch={branch}"


def _edge_via(g: Gen) -> str:
    return f"SIP/2.0/UDP {EDGE}:5060;branch=z9hG4bK{g.hexs(10)}{SALT}.0"


def _pbx_via(g: Gen) -> str:
    return f"SIP/2.0/UDP {PBX}:5060;rport;branch={g.pbx_branch()}"


def _from_phone(p: Phone, tag: str) -> str:
    if p.vendor == "polycom":
        return f'"Ext {p.ext}" <sip:{p.ext}@{DOMAIN}>;tag={tag}'
    return f'"{p.ext}" <sip:{p.ext}@{DOMAIN}>;tag={tag}'


def _contact_phone(p: Phone) -> str:
    if p.vendor == "polycom":
        return (
            f'<sip:{p.ext}@{p.ip}:{p.port}>;methods="INVITE, ACK, BYE, CANCEL, OPTIONS, '
            'INFO, MESSAGE, SUBSCRIBE, NOTIFY, PRACK, UPDATE, REFER"'
        )
    if p.vendor == "yealink":
        return f"<sip:{p.ext}@{p.ip}:{p.port}>"
    return (
        f'<sip:{p.ext}@{p.ip}:{p.port};transport=udp>;reg-id=1;+sip.instance="<urn:uuid:'
        f'00000000-0000-1000-8000-{p.mac}>"'
    )


def _digest(g: Gen, p: Phone, uri: str, method_nc: str = "00000001") -> str:
    nonce = f"{g.r.randrange(1_700_000_000, 1_800_000_000)}/{g.hexs(32)}"
    if p.vendor == "polycom":
        return (
            f'Digest username="{p.ext}", realm="{DOMAIN}", nonce="{nonce}", '
            f'qop=auth, cnonce="{g.hexs(16)}", nc={method_nc}, opaque="{g.hexs(16)}", '
            f'uri="{uri}", response="{g.hexs(32)}", algorithm=MD5'
        )
    if p.vendor == "yealink":
        return (
            f'Digest username="{p.ext}", realm="{DOMAIN}", nonce="{nonce}", uri="{uri}", '
            f'response="{g.hexs(32)}", algorithm=MD5, cnonce="{g.hexs(8)}", '
            f'opaque="{g.hexs(16)}", qop=auth, nc={method_nc}'
        )
    return (
        f'Digest username="{p.ext}", realm="{DOMAIN}", algorithm=MD5, uri="{uri}", '
        f'nonce="{nonce}", response="{g.hexs(32)}", opaque="{g.hexs(16)}", qop=auth, '
        f'cnonce="{g.hexs(16)}", nc={method_nc}'
    )


def _sdp(g: Gen, vendor: str, ip: str) -> str:
    sess = g.r.randrange(1, 2**31)
    port = g.r.randrange(10000, 20000, 2)
    if vendor == "polycom":
        name, fmts = "Polycom IP Phone", "9 102 0 8 18 127"
        attrs = [
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:102 G7221/16000",
            "a=fmtp:102 bitrate=32000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:18 G729/8000",
            "a=fmtp:18 annexb=no",
            "a=rtpmap:127 telephone-event/8000",
        ]
    elif vendor == "yealink":
        name, fmts = "SDP data", "0 8 9 18 101"
        attrs = [
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:18 G729/8000",
            "a=fmtp:18 annexb=no",
            "a=ptime:20",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
        ]
    elif vendor == "grandstream":
        name, fmts = "SIP Call", "0 8 9 18 101"
        attrs = [
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:18 G729/8000",
            "a=fmtp:18 annexb=no",
            "a=ptime:20",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-15",
        ]
    else:  # Asterisk answer / offer
        name, fmts = "Asterisk", "0 9 101"
        attrs = [
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:101 telephone-event/8000",
            "a=fmtp:101 0-16",
            "a=ptime:20",
            "a=maxptime:150",
        ]
    lines = [
        "v=0",
        f"o=- {sess} {sess} IN IP4 {ip}",
        f"s={name}",
        f"c=IN IP4 {ip}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {fmts}",
        *attrs,
        "a=sendrecv",
    ]
    return CRLF.join(lines) + CRLF


# Each template returns one message; all share one signature.
Template = Callable[[Gen], bytes]


def t_register_auth(g: Gen, vendor: str | None = None) -> bytes:
    p = g.phone()
    if vendor is not None:
        while p.vendor != vendor:
            p = g.phone()
    uri = f"sip:{DOMAIN}"
    cseq = g.cseq()
    h = [
        ("Via", _via(p, g.branch(p))),
        ("From", _from_phone(p, g.tag(p))),
        ("To", f"<sip:{p.ext}@{DOMAIN}>"),
        ("Call-ID", g.call_id(p)),
        ("CSeq", f"{cseq} REGISTER"),
        ("Contact", _contact_phone(p)),
        ("Authorization", _digest(g, p, uri)),
        ("User-Agent", p.ua),
        ("Accept-Language", "en"),
        ("Max-Forwards", "70"),
        ("Expires", g.r.choice(("3600", "600", "300"))),
    ]
    if p.vendor == "grandstream":
        h.insert(6, ("Supported", "path"))
        h.append(("Allow", ALLOW))
    elif p.vendor == "yealink":
        h.append(("Allow", ALLOW))
    return _build(f"REGISTER {uri} SIP/2.0", h)


def t_register_noauth(g: Gen) -> bytes:
    p = g.phone()
    uri = f"sip:{DOMAIN}"
    h = [
        ("Via", _via(p, g.branch(p))),
        ("From", _from_phone(p, g.tag(p))),
        ("To", f"<sip:{p.ext}@{DOMAIN}>"),
        ("Call-ID", g.call_id(p)),
        ("CSeq", f"{g.cseq()} REGISTER"),
        ("Contact", _contact_phone(p)),
        ("Max-Forwards", "70"),
        ("User-Agent", p.ua),
        ("Expires", "3600"),
        ("Allow", ALLOW),
    ]
    return _build(f"REGISTER {uri} SIP/2.0", h)


def t_401_register(g: Gen) -> bytes:
    p = g.phone()
    nonce = f"{g.r.randrange(1_700_000_000, 1_800_000_000)}/{g.hexs(32)}"
    h = [
        ("Via", _via_nat(p, g.branch(p), g)),
        ("Call-ID", g.call_id(p)),
        ("From", f"<sip:{p.ext}@{DOMAIN}>;tag={g.tag(p)}"),
        ("To", f"<sip:{p.ext}@{DOMAIN}>;tag=z9hG4bK{g.hexs(8)}{SALT}"),
        ("CSeq", f"{g.cseq()} REGISTER"),
        (
            "WWW-Authenticate",
            f'Digest realm="{DOMAIN}",nonce="{nonce}",opaque="{g.hexs(16)}",'
            f'algorithm=md5,qop="auth"',
        ),
        ("Server", PBX_SERVER),
    ]
    return _build("SIP/2.0 401 Unauthorized", h)


def t_200_register(g: Gen) -> bytes:
    p = g.phone()
    h = [
        ("Via", _via_nat(p, g.branch(p), g)),
        ("Call-ID", g.call_id(p)),
        ("From", f"<sip:{p.ext}@{DOMAIN}>;tag={g.tag(p)}"),
        ("To", f"<sip:{p.ext}@{DOMAIN}>;tag=z9hG4bK{g.hexs(8)}{SALT}"),
        ("CSeq", f"{g.cseq()} REGISTER"),
        ("Date", "Tue, 12 Nov 2024 09:14:07 GMT"),
        ("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>;expires={g.r.randrange(290, 3600)}"),
        ("Expires", "3600"),
        ("Server", PBX_SERVER),
    ]
    return _build("SIP/2.0 200 OK", h)


def t_options_qualify(g: Gen) -> bytes:
    p = g.phone()
    h = [
        ("Via", _pbx_via(g)),
        ("From", f"<sip:{DOMAIN}>;tag={g.pbx_tag()}"),
        ("To", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("Contact", f"<sip:{PBX}:5060>"),
        ("Call-ID", g.pbx_call_id()),
        ("CSeq", f"{g.cseq()} OPTIONS"),
        ("Max-Forwards", "70"),
        ("User-Agent", PBX_SERVER),
    ]
    return _build(f"OPTIONS sip:{p.ext}@{p.ip}:{p.port} SIP/2.0", h)


def t_200_options_phone(g: Gen) -> bytes:
    p = g.phone()
    h = [
        ("Via", _pbx_via(g)),
        ("From", f"<sip:{DOMAIN}>;tag={g.pbx_tag()}"),
        ("To", f"<sip:{p.ext}@{p.ip}:{p.port}>;tag={g.tag(p)}"),
        ("Call-ID", g.pbx_call_id()),
        ("CSeq", f"{g.cseq()} OPTIONS"),
        ("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("User-Agent", p.ua),
        ("Allow", ALLOW),
        ("Accept", "application/sdp, application/dtmf-relay"),
        ("Supported", "replaces, timer"),
    ]
    return _build("SIP/2.0 200 OK", h)


def t_options_keepalive(g: Gen) -> bytes:
    p = g.phone()
    h = [
        ("Via", _via(p, g.branch(p))),
        ("From", f"<sip:{p.ext}@{DOMAIN}>;tag={g.tag(p)}"),
        ("To", f"<sip:{DOMAIN}>"),
        ("Call-ID", g.call_id(p)),
        ("CSeq", f"{g.cseq()} OPTIONS"),
        ("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("Max-Forwards", "70"),
        ("User-Agent", p.ua),
        ("Accept", "application/sdp"),
    ]
    return _build(f"OPTIONS sip:{DOMAIN} SIP/2.0", h)


def t_200_options_pbx(g: Gen) -> bytes:
    p = g.phone()
    h = [
        ("Via", _via_nat(p, g.branch(p), g)),
        ("Call-ID", g.call_id(p)),
        ("From", f"<sip:{p.ext}@{DOMAIN}>;tag={g.tag(p)}"),
        ("To", f"<sip:{DOMAIN}>;tag=z9hG4bK{g.hexs(8)}{SALT}"),
        ("CSeq", f"{g.cseq()} OPTIONS"),
        ("Accept", "application/sdp, application/simple-message-summary"),
        ("Allow", PBX_ALLOW),
        ("Supported", "100rel, timer, replaces, norefersub"),
        ("Server", PBX_SERVER),
    ]
    return _build("SIP/2.0 200 OK", h)


def t_invite_phone(g: Gen, vendor: str) -> bytes:
    p = g.phone()
    while p.vendor != vendor:
        p = g.phone()
    callee = g.r.choice(
        (str(g.r.randrange(1001, 1300)), "+1415555" + str(g.r.randrange(1000, 9999)))
    )
    uri = f"sip:{callee}@{DOMAIN}"
    cseq = g.cseq()
    h = [
        ("Via", _via(p, g.branch(p))),
        ("From", _from_phone(p, g.tag(p))),
        ("To", f"<{uri};user=phone>"),
        ("CSeq", f"{cseq} INVITE"),
        ("Call-ID", g.call_id(p)),
        ("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("Allow", ALLOW),
        ("User-Agent", p.ua),
        ("Supported", "100rel,replaces,timer"),
        ("Allow-Events", "talk,hold,conference,refer,check-sync"),
        ("Max-Forwards", "70"),
        ("Content-Type", "application/sdp"),
    ]
    if g.r.random() < 0.5:  # the re-sent INVITE after a 401 carries credentials
        h.insert(6, ("Authorization", _digest(g, p, uri)))
    return _build(f"INVITE {uri} SIP/2.0", h, _sdp(g, vendor, p.ip))


def t_invite_pbx(g: Gen) -> bytes:
    p = g.phone()
    caller = "+1212555" + str(g.r.randrange(1000, 9999))
    h = [
        ("Via", _edge_via(g)),
        ("Via", _pbx_via(g)),
        ("Record-Route", f"<sip:{EDGE};lr;ftag={g.pbx_tag()}>"),
        ("From", f'"{caller}" <sip:{caller}@{DOMAIN}>;tag={g.pbx_tag()}'),
        ("To", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("Contact", f"<sip:asterisk@{PBX}:5060>"),
        ("Call-ID", g.pbx_call_id()),
        ("CSeq", f"{g.cseq()} INVITE"),
        ("Allow", PBX_ALLOW),
        ("Supported", "100rel, timer, replaces, norefersub"),
        ("Session-Expires", "1800"),
        ("Min-SE", "90"),
        ("P-Asserted-Identity", f'"{caller}" <sip:{caller}@{DOMAIN}>'),
        ("Max-Forwards", "69"),
        ("User-Agent", PBX_SERVER),
        ("Content-Type", "application/sdp"),
    ]
    return _build(f"INVITE sip:{p.ext}@{p.ip}:{p.port} SIP/2.0", h, _sdp(g, "asterisk", PBX))


def _dialog_response(
    g: Gen, status: str, *, sdp: bool = False, rr: bool = True, method: str = "INVITE"
) -> bytes:
    """A phone answering the PBX (through the edge): two Vias, Record-Route."""
    p = g.phone()
    h = [
        ("Via", _edge_via(g)),
        ("Via", _pbx_via(g)),
    ]
    if rr:
        h.append(("Record-Route", f"<sip:{EDGE};lr;ftag={g.pbx_tag()}>"))
    h += [
        ("From", f'"+12125550123" <sip:+12125550123@{DOMAIN}>;tag={g.pbx_tag()}'),
        ("To", f"<sip:{p.ext}@{p.ip}:{p.port}>;tag={g.tag(p)}"),
        ("Call-ID", g.pbx_call_id()),
        ("CSeq", f"{g.cseq()} {method}"),
    ]
    if status != "100 Trying":
        h.append(("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>"))
        h.append(("User-Agent", p.ua))
    if sdp:
        h.append(("Allow", ALLOW))
        h.append(("Content-Type", "application/sdp"))
    body = _sdp(g, p.vendor, p.ip) if sdp else ""
    return _build(f"SIP/2.0 {status}", h, body)


def t_100(g: Gen) -> bytes:
    return _dialog_response(g, "100 Trying", rr=False)


def t_180(g: Gen) -> bytes:
    return _dialog_response(g, "180 Ringing")


def t_200_invite(g: Gen) -> bytes:
    return _dialog_response(g, "200 OK", sdp=True)


def t_183(g: Gen) -> bytes:
    """Early media from the PBX (ringback) to a calling phone."""
    p = g.phone()
    h = [
        ("Via", _via_nat(p, g.branch(p), g)),
        ("Record-Route", f"<sip:{EDGE};lr>"),
        ("Call-ID", g.call_id(p)),
        ("From", _from_phone(p, g.tag(p))),
        ("To", f"<sip:+14155550{g.r.randrange(100, 999)}@{DOMAIN}>;tag={g.pbx_tag()}"),
        ("CSeq", f"{g.cseq()} INVITE"),
        ("Server", PBX_SERVER),
        ("Contact", f"<sip:{PBX}:5060>"),
        ("Allow", PBX_ALLOW),
        ("Content-Type", "application/sdp"),
    ]
    return _build("SIP/2.0 183 Session Progress", h, _sdp(g, "asterisk", PBX))


def _in_dialog(g: Gen, method: str) -> bytes:
    p = g.phone()
    cseq = g.cseq()
    h = [
        ("Via", _via(p, g.branch(p))),
        ("Route", f"<sip:{EDGE};lr;ftag={g.tag(p)}>"),
        ("From", _from_phone(p, g.tag(p))),
        ("To", f"<sip:+14155550{g.r.randrange(100, 999)}@{DOMAIN}>;tag={g.pbx_tag()}"),
        ("CSeq", f"{cseq} {method}"),
        ("Call-ID", g.call_id(p)),
        ("Contact", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("User-Agent", p.ua),
        ("Max-Forwards", "70"),
    ]
    return _build(f"{method} sip:{PBX}:5060 SIP/2.0", h)


def t_ack(g: Gen) -> bytes:
    return _in_dialog(g, "ACK")


def t_bye(g: Gen) -> bytes:
    return _in_dialog(g, "BYE")


def t_200_bye(g: Gen) -> bytes:
    return _dialog_response(g, "200 OK", rr=False, method="BYE")


def t_notify_mwi(g: Gen) -> bytes:
    p = g.phone()
    waiting = g.r.randrange(0, 4)
    body = (
        f"Messages-Waiting: {'yes' if waiting else 'no'}{CRLF}"
        f"Message-Account: sip:*97@{DOMAIN}{CRLF}"
        f"Voice-Message: {waiting}/{g.r.randrange(0, 20)} (0/0){CRLF}"
    )
    h = [
        ("Via", _edge_via(g)),
        ("Via", _pbx_via(g)),
        ("From", f"<sip:{p.ext}@{DOMAIN}>;tag={g.pbx_tag()}"),
        ("To", f"<sip:{p.ext}@{p.ip}:{p.port}>"),
        ("Contact", f"<sip:{PBX}:5060>"),
        ("Call-ID", g.pbx_call_id()),
        ("CSeq", f"{g.cseq()} NOTIFY"),
        ("Subscription-State", "active"),
        ("Event", "message-summary"),
        ("Max-Forwards", "69"),
        ("User-Agent", PBX_SERVER),
        ("Content-Type", "application/simple-message-summary"),
    ]
    return _build(f"NOTIFY sip:{p.ext}@{p.ip}:{p.port} SIP/2.0", h, body)


# (name, weight, template). Weights are shares of generated traffic: registration and
# keep-alives dominate, ~17% INVITEs; SDP bodies (INVITE, 183, 200-to-INVITE) ~30%.
TEMPLATES: list[tuple[str, int, Template]] = [
    ("REGISTER+digest polycom", 6, lambda g: t_register_auth(g, "polycom")),
    ("REGISTER+digest yealink", 6, lambda g: t_register_auth(g, "yealink")),
    ("REGISTER+digest grandstream", 4, lambda g: t_register_auth(g, "grandstream")),
    ("REGISTER (no auth)", 5, t_register_noauth),
    ("401 to REGISTER", 5, t_401_register),
    ("200 to REGISTER", 8, t_200_register),
    ("OPTIONS qualify PBX->phone", 8, t_options_qualify),
    ("200 to OPTIONS (phone)", 6, t_200_options_phone),
    ("OPTIONS keep-alive phone->PBX", 4, t_options_keepalive),
    ("200 to OPTIONS (PBX)", 4, t_200_options_pbx),
    ("INVITE+SDP polycom", 5, lambda g: t_invite_phone(g, "polycom")),
    ("INVITE+SDP yealink", 5, lambda g: t_invite_phone(g, "yealink")),
    ("INVITE+SDP grandstream", 3, lambda g: t_invite_phone(g, "grandstream")),
    ("INVITE+SDP PBX->phone (RR, 2 Vias)", 4, t_invite_pbx),
    ("100 Trying", 4, t_100),
    ("180 Ringing (RR)", 4, t_180),
    ("183 Session Progress+SDP (RR)", 4, t_183),
    ("200 to INVITE+SDP (RR)", 8, t_200_invite),
    ("ACK", 3, t_ack),
    ("BYE", 2, t_bye),
    ("200 to BYE", 2, t_200_bye),
    ("NOTIFY message-summary", 2, t_notify_mwi),
]


@dataclass
class Item:
    label: str
    data: bytes  # with SALT placeholders


# In corpus messages: tag and branch parameters and the Call-ID get the salt appended.
_CORPUS_IDS = re.compile(
    rb"(;[ \t]*(?:tag|branch)[ \t]*=[ \t]*[^;,>\s]+|^(?:call-id|i)[ \t]*:[ \t]*\S+)",
    re.IGNORECASE | re.MULTILINE,
)


def salt_corpus(data: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    return _CORPUS_IDS.sub(lambda m: m.group(0) + SALT_B, head) + sep + body


def build_mix(generated: int, corpus_copies: int) -> list[Item]:
    rng = random.Random(SEED)
    g = Gen(rng)
    total_w = sum(w for _, w, _ in TEMPLATES)
    items: list[Item] = []
    for name, w, fn in TEMPLATES:
        for _ in range(max(1, round(generated * w / total_w))):
            items.append(Item(name, fn(g)))
    corpus = sorted(CORPUS_DIR.glob("*.sip"))
    if not corpus:
        sys.exit(f"no .sip files in {CORPUS_DIR}")
    for path in corpus:
        data = salt_corpus(path.read_bytes())
        for i in range(corpus_copies):  # each copy its own transaction
            copy = data.replace(SALT_B, f"c{i}".encode() + SALT_B)
            items.append(Item(f"corpus:{path.name}", copy))
    rng.shuffle(items)
    return items


def screen(items: list[Item]) -> tuple[list[Item], list[Key], list[tuple[str, str]]]:
    """Drop messages either side raises on (from both sides); check Call-ID/CSeq agree.

    Returns the kept items, their Call-ID/CSeq keys and the exclusions with reasons.
    """
    kept: list[Item] = []
    keys: list[Key] = []
    excluded: dict[str, str] = {}
    for it in items:
        data = it.data  # the placeholder itself is a valid salt
        try:
            theirs = full_theirs(data)
        except Exception as exc:
            excluded.setdefault(it.label, f"aiosipua raised {type(exc).__name__}: {exc}")
            continue
        try:
            ours = full_ours(data)
        except Exception as exc:
            excluded.setdefault(it.label, f"spitguard raised {type(exc).__name__}: {exc}")
            continue
        if ours != theirs:
            sys.exit(f"Call-ID/CSeq differ on {it.label}: ours={ours} theirs={theirs}")
        kept.append(it)
        keys.append(ours)
    if excluded:  # a corpus file is excluded with all its copies
        kept_keys = [(it, k) for it, k in zip(kept, keys, strict=True) if it.label not in excluded]
        kept = [it for it, _ in kept_keys]
        keys = [k for _, k in kept_keys]
    return kept, keys, sorted(excluded.items())


def describe_mix(items: list[Item]) -> list[str]:
    n = len(items)
    counts = Counter(it.label for it in items)
    kinds: Counter[str] = Counter()
    sdp = 0
    size = 0
    for it in items:
        first = it.data.split(b" ", 2)
        kinds[(first[1] if first[0].startswith(b"SIP/") else first[0]).decode()] += 1
        sdp += b"\r\n\r\nv=0" in it.data
        size += len(it.data)
    corpus = sum(c for label, c in counts.items() if label.startswith("corpus:"))
    by_kind = ", ".join(f"{k} {100 * c / n:.1f}%" for k, c in kinds.most_common())
    return [
        f"mix: {n} messages: {n - corpus} generated from {len(TEMPLATES)} templates "
        f"({PHONES} Polycom/Yealink/Grandstream phones, an Asterisk PBX, the edge's "
        f"Record-Route) + {sum(1 for lb in counts if lb.startswith('corpus:'))} corpus "
        f"files x {corpus // max(1, len([lb for lb in counts if lb.startswith('corpus:')]))} "
        f"({corpus} msgs, {100 * corpus / n:.1f}%); mean {size // n} bytes; "
        f"SDP bodies {100 * sdp / n:.0f}%",
        f"  by method/status: {by_kind}",
    ]


class Stream:
    """Fresh passes over the mix: every pass gets its own salt (unless `repeat`)."""

    def __init__(self, mix: list[bytes], keys: list[Key], repeat: bool) -> None:
        self.mix = mix
        self.keys = keys
        self.repeat = repeat
        self.counter = itertools.count(1)

    def salt(self) -> str:
        return SALT if self.repeat else f"{next(self.counter):06x}"

    def passes(self, k: int) -> list[tuple[str, list[bytes]]]:
        out = []
        for _ in range(k):
            salt = self.salt()
            s = salt.encode()
            out.append((salt, [d.replace(SALT_B, s) for d in self.mix]))
        return out

    def expected(self, salt: str) -> list[Key]:
        return [(cid.replace(SALT, salt), num, method) for cid, num, method in self.keys]


def run_passes(full: FullParse, stream: Stream, k: int) -> tuple[list[Key], str, float]:
    """Parse k fresh passes over the mix. Each pass's messages are built just before
    it is parsed and only the parsing is timed: bytes a server parses were just
    written by recv(), so they are in cache; building a whole round's passes first
    would hand the faster side, which runs more passes per round, a larger and
    colder working set. Returns the last pass's keys, its salt, and the seconds."""
    out: list[Key] = []
    salt = ""
    spent = 0.0
    for _ in range(k):
        ((salt, msgs),) = stream.passes(1)
        t0 = time.perf_counter()
        out = [full(d) for d in msgs]
        spent += time.perf_counter() - t0
    return out, salt, spent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a few seconds, for CI smoke")
    ap.add_argument("--seconds", type=float, help="total timed seconds (default 36)")
    ap.add_argument("--rounds", type=int, help="timed rounds per side (default 15)")
    ap.add_argument("--profile", action="store_true", help="cProfile our side only")
    ap.add_argument("--sort", default="tottime", help="profile sort key (default tottime)")
    ap.add_argument(
        "--repeat-mix",
        action="store_true",
        help="replay identical bytes every pass (parser caches keyed on header text then "
        "hit on every message: unrealistic, for comparison only)",
    )
    args = ap.parse_args(argv)

    seconds = args.seconds if args.seconds is not None else (2.0 if args.quick else 36.0)
    rounds = args.rounds if args.rounds is not None else (3 if args.quick else 15)
    pinned = pin_to_one_cpu()

    items = build_mix(generated=400 if args.quick else 2000, corpus_copies=2 if args.quick else 5)
    mix, keys, excluded = screen(items)
    n = len(mix)
    stream = Stream([it.data for it in mix], keys, args.repeat_mix)

    def per_pass(full: FullParse) -> float:
        run_passes(full, stream, 3)  # warm-up: bytecode specialization, allocator, caches
        gc.collect()
        return run_passes(full, stream, 3)[2] / 3

    if args.profile:
        prof_passes = max(1, round(seconds / 10 / per_pass(full_ours)))
        print(f"cProfile of spitguard full parse: {prof_passes} pass(es) over {n} messages")
        print(f"machine: {machine_summary(pinned)}")
        print_profile(lambda: run_passes(full_ours, stream, prof_passes), top=25, sort=args.sort)
        return 0

    fulls: dict[str, FullParse] = {
        "spitguard": full_ours,
        "spitguard-python": full_ours_python,
        "aiosipua": full_theirs,
    }
    per_round = seconds / (len(fulls) * rounds)
    passes = {name: max(1, round(per_round / per_pass(full))) for name, full in fulls.items()}
    last: dict[str, tuple[list[Key], str]] = {}

    def make_round(name: str) -> Callable[[], tuple[int, float]]:
        full = fulls[name]

        def one_round() -> tuple[int, float]:
            keys, salt, spent = run_passes(full, stream, passes[name])
            last[name] = (keys, salt)
            return passes[name] * n, spent

        return one_round

    def check(name: str) -> None:  # untimed: every message's Call-ID/CSeq, last pass
        keys, salt = last.pop(name)
        if keys != stream.expected(salt):
            sys.exit(f"{name}: Call-ID/CSeq results differ from the reference")

    res = interleaved(
        {name: make_round(name) for name in fulls},
        rounds,
        after_round=check,
    )
    ours = res.median("spitguard")
    theirs = res.median("aiosipua")

    print("SIP parse throughput: spitguard.sip.parse vs aiosipua.SipMessage.parse")
    print(
        "full parse (identical work on both sides, per message): parse the bytes; the "
        "Request-URI as a URI object (aiosipua: aiosipua.parse_uri); every Via parsed, "
        "top branch read; From and To parsed, URI and tag read; Call-ID; CSeq number and "
        "method; Contact(s) parsed; Content-Length; body."
    )
    print(
        "  note: spitguard's parse() also validates eagerly (Max-Forwards, Expires, "
        "Route, Record-Route, Date, header-name and URI grammar, RFC 3261 defects); "
        "aiosipua does none of that. That extra work is counted against spitguard."
    )
    for line in describe_mix(mix):
        print(line)
    cparse = message._cparse
    if cparse is None:
        print("  WARNING: the C fast path is not built or is switched off: spitguard = Python")
    else:
        taken = sum(cparse.parse(it.data, DEFAULT_LIMITS) is not None for it in mix)
        print(
            f"  parser: {message.PARSER}; the C fast path took {taken} of {n} messages "
            f"({100 * taken / n:.1f}%), the rest went to the Python parser (counted as such)"
        )
    if args.repeat_mix:
        print(
            "  --repeat-mix: the same bytes every pass, so caches keyed on header text "
            "hit on every message. NOT representative of real traffic."
        )
    else:
        print(
            "  every pass re-salts tags, branches and Call-IDs (corpus files too), so no "
            "timed message repeats one seen before; AORs, Contacts, UAs repeat as on the wire"
        )
    if excluded:
        print(f"excluded from BOTH sides ({len(excluded)}):")
        for label, why in excluded:
            print(f"  {label}: {why}")
    else:
        print("excluded: none (aiosipua and spitguard parsed every message)")
    print(
        f"method: warm-up 3 passes per side; {rounds} timed rounds per side interleaved "
        f"A B C A B C; a round = {passes['spitguard']} pass(es) (spitguard) / "
        f"{passes['spitguard-python']} (spitguard-python) / "
        f"{passes['aiosipua']} (aiosipua) over the mix, ~{per_round:.1f} s; each pass's "
        "messages built just before it is parsed (fresh in cache, as after recv()), only "
        "the parsing timed; gc.collect() before each round, gc enabled; "
        "time.perf_counter(); median rate per side; Call-ID/CSeq of every message "
        "checked against the reference after each round"
    )
    print(f"machine: {machine_summary(pinned)}")
    for name in fulls:
        lo, hi = res.spread(name)
        print(
            f"  {name:<16} {res.median(name):>10,.0f} msg/s  "
            f"(min {lo:,.0f}, max {hi:,.0f}; {res.seconds[name]:.1f} s timed)"
        )
    print(f"  ratio            {ours / theirs:.2f}x (spitguard / aiosipua)")
    py = res.median("spitguard-python")
    print(
        f"  C path           {ours / py:.2f}x (spitguard / spitguard-python, the reference parser)"
    )
    print(result_line("parse", ours, "msg/s", "aiosipua", theirs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
