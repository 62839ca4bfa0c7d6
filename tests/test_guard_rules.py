"""The guard's two pure checks: the sanity gate and the scanner fingerprints.

Corpora are externally authored (../shared/corpora): scanners must be classified as
scanners by named rules, legit phone/PBX traffic must pass both checks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from corpus import manifest, read
from spitguard.guard.fingerprints import Fingerprints, is_ip_literal
from spitguard.guard.sanity import NO_BRANCH_COOKIE, SOFT_REASONS, sanity_check
from spitguard.sip import Request, SipParseError, parse

FP = Fingerprints.load()
MAX_SIZE = 16_384  # Kamailio's MSG_MAX_SIZE default

SCANNERS = [row["name"] for row in manifest("scanners")]
LEGIT = [row["name"] for row in manifest("legit")]

SV = ("ua-scanner-tool", "ip-literal-host", "sipvicious-tag", "sipvicious-callid-branch")
# What fires for each scanner message from an untrusted source (order = file order).
EXPECTED_RULES: dict[str, tuple[str, ...]] = {
    "svmap_v02_options_honeynet2010.sip": (
        "ua-scanner-tool",
        "to-equals-from-numeric",
        "ip-literal-host",
        "placeholder-host-1111",
        "sipvicious-tag",
        "sipvicious-callid-branch",
    ),
    "svmap_v03_options.sip": (
        "ua-scanner-tool",
        "to-equals-from-numeric",
        "ip-literal-host",
        "placeholder-host-1111",
        "sipvicious-tag",
        "sipvicious-callid-branch",
    ),
    # svcrack 0.2 sent its first REGISTER without a From tag.
    "svcrack_v02_register_noauth_honeynet2010.sip": (
        "ua-scanner-tool",
        "ip-literal-host",
        "placeholder-host-1111",
        "sipvicious-callid-branch",
    ),
    "svcrack_v02_register_auth_honeynet2010.sip": (
        "ua-scanner-tool",
        "ip-literal-host",
        "placeholder-host-1111",
        "sipvicious-tag",
        "sipvicious-callid-branch",
    ),
    "svcrack_v03_register_auth.sip": SV,
    "svwar_v03_register.sip": SV,
    "svwar_v03_invite.sip": (
        "ua-scanner-tool",
        "to-equals-from-numeric",
        "ip-literal-host",
        "sipvicious-tag",
        "sipvicious-callid-branch",
        "sdp-tool-name",
    ),
    "nmap_sipoptions_tcp.sip": ("nmap-probe-host", "nmap-fixed-tag"),
    "nmap_sipoptions_udp.sip": ("nmap-probe-host", "nmap-fixed-tag"),
    "sipcli_v18_invite.sip": ("ua-scanner-tool", "ip-literal-host", "sdp-tool-name"),
    "pplsip_invite_glutton.sip": ("ua-scanner-tool", "ip-literal-host", "sdp-tool-name"),
    # These two rest on their User-Agent plus one weak tell: exactly the threshold.
    "voip_ua_register_glutton.sip": ("ua-scanner-tool", "ip-literal-host"),
    "sipsak_096_options.sip": ("ua-scanner-tool", "ip-literal-host"),
}

SPOOFED_UA = b"Yealink SIP-T46S 66.86.0.15"
# With a real phone's User-Agent, which scanner messages are still caught on structure.
STILL_SCANNER_WITH_SPOOFED_UA = {
    name: not name.startswith(("voip_", "sipsak_")) for name in EXPECTED_RULES
}


def _msg(folder: str, name: str) -> Request:
    msg = parse(read(folder, name))
    assert isinstance(msg, Request)
    return msg


def _spoof_ua(data: bytes) -> bytes:
    out, n = re.subn(rb"(?m)^User-Agent:[^\r\n]*", b"User-Agent: " + SPOOFED_UA, data)
    assert n == 1
    return out


# --- scanners -------------------------------------------------------------------------


def test_expectations_cover_the_whole_scanner_corpus() -> None:
    assert sorted(EXPECTED_RULES) == sorted(SCANNERS)


@pytest.mark.parametrize("name", SCANNERS)
def test_scanner_corpus_is_classified_by_the_expected_rules(name: str) -> None:
    result = FP.match(_msg("scanners", name), trusted=False)
    assert result.rules == EXPECTED_RULES[name]
    assert result.is_scanner
    weights = {r.id: r.weight for r in FP.rules}
    assert result.score == pytest.approx(sum(weights[r] for r in result.rules))


@pytest.mark.parametrize("name", [n for n in SCANNERS if not n.startswith("nmap_")])
def test_scanner_decision_does_not_rest_on_the_user_agent(name: str) -> None:
    data = _spoof_ua(read("scanners", name))
    msg = parse(data)
    assert msg.user_agent == SPOOFED_UA.decode()
    result = FP.match(msg, trusted=False)
    assert "ua-scanner-tool" not in result.rules
    # Every other rule still fires: the UA was the only thing changed.
    assert result.rules == tuple(r for r in EXPECTED_RULES[name] if r != "ua-scanner-tool")
    assert result.is_scanner is STILL_SCANNER_WITH_SPOOFED_UA[name]


def test_every_sipvicious_message_survives_a_spoofed_user_agent() -> None:
    sv = [n for n in SCANNERS if n.startswith(("svmap", "svwar", "svcrack"))]
    assert len(sv) == 7
    for name in sv:
        result = FP.match(parse(_spoof_ua(read("scanners", name))), trusted=False)
        assert result.is_scanner, name
        assert result.score >= 2.0, name  # structural tells alone, twice the threshold


# --- legit traffic --------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("name", LEGIT)
def test_legit_corpus_is_not_a_scanner(name: str, trusted: bool) -> None:
    result = FP.match(parse(read("legit", name)), trusted=trusted)
    assert not result.is_scanner
    # Only the weak IP-literal hint may show, and only for strangers.
    assert set(result.rules) <= (set() if trusted else {"ip-literal-host"})


# RFC 2543 phones: no branch, or one without the z9hG4bK cookie. Legal (RFC 3261 §8.2.2.2
# / §17.2.3 fallback matching); the gate flags it softly and the caller weighs the source.
LEGIT_RFC2543 = {
    "3com_phone_register_compact_headers.sip",
    "3com_vcx_subscribe_mac_query.sip",
    "cisco_csco4_register_proxy_authorization.sip",
}


@pytest.mark.parametrize("name", LEGIT)
def test_legit_corpus_passes_sanity(name: str) -> None:
    data = read("legit", name)
    reason = sanity_check(parse(data), max_size=MAX_SIZE, size=len(data))
    if name in LEGIT_RFC2543:
        assert reason == NO_BRANCH_COOKIE
        assert reason in SOFT_REASONS  # not a refusal
    else:
        assert reason is None


def test_legit_corpus_without_max_forwards_passes() -> None:
    missing = [n for n in LEGIT if "missing:max-forwards" in parse(read("legit", n)).defects]
    assert len(missing) == 3  # CSCO/4, CSCO/7, Polycom VVX 500 after a Kamailio hop
    for name in missing:
        data = read("legit", name)
        assert sanity_check(parse(data), max_size=MAX_SIZE, size=len(data)) in (
            None,
            NO_BRANCH_COOKIE,
        )


# --- sanity: RFC 4475 -------------------------------------------------------------------

# Every RFC 4475 message that parses, and what the gate says about it.
RFC4475_SANITY: dict[str, str | None] = {
    "insuf.dat": "sanity:missing:from",  # no Call-ID, From or To (§3.3.1: 400)
    "multi01.dat": "sanity:duplicate:from",  # two From/To/Call-ID/CSeq (§3.3.8: 400)
    "unkscm.dat": "sanity:ruri_scheme",  # §3.3.2: 416
    "novelsc.dat": "sanity:ruri_scheme",  # soap.beep (§3.3.3: 416)
    "badbranch.dat": "sanity:empty_branch",  # branch is the bare cookie (§3.2.1: 400 ok)
    "inv2543.dat": NO_BRANCH_COOKIE,  # RFC 2543 INVITE (§3.4.1: accept)
    "wsinv.dat": NO_BRANCH_COOKIE,  # branch=390skdjuw
    "longreq.dat": NO_BRANCH_COOKIE,  # top Via has no branch
    "intmeth.dat": None,
    "esc01.dat": None,
    "escnull.dat": None,
    "esc02.dat": None,
    "lwsdisp.dat": None,
    "dblreq.dat": None,
    "semiuri.dat": None,
    "transports.dat": None,
    "mpart01.dat": None,
    "unreason.dat": None,
    "noreason.dat": None,
    "unksm2.dat": None,  # unknown schemes in To/From/Contact only
    "bext01.dat": None,  # Proxy-Require is the proxy's 420
    "invut.dat": None,
    "regaut01.dat": None,
    "bcast.dat": None,
    "zeromf.dat": None,  # Max-Forwards 0 is the proxy's 483
    "cparam01.dat": None,
    "cparam02.dat": None,
    "regescrt.dat": None,
    "sdp01.dat": None,
}


def _parses(name: str) -> bool:
    try:
        parse(read("rfc4475", name))
    except SipParseError:
        return False
    return True


def test_rfc4475_expectations_cover_every_parseable_message() -> None:
    parseable = {row["name"] for row in manifest("rfc4475") if _parses(row["name"])}
    assert parseable == set(RFC4475_SANITY)


@pytest.mark.parametrize("name", sorted(RFC4475_SANITY))
def test_rfc4475_sanity(name: str) -> None:
    data = read("rfc4475", name)
    msg = parse(data)
    assert sanity_check(msg, max_size=MAX_SIZE, size=len(data)) == RFC4475_SANITY[name]
    FP.match(msg, trusted=False)  # must not raise on missing headers either


def test_hard_reason_wins_over_the_soft_branch_reason() -> None:
    data = read("rfc4475", "inv2543.dat").replace(b"\r\nTo:", b"\r\nX-To:")
    msg = parse(data)
    assert sanity_check(msg, max_size=MAX_SIZE, size=len(data)) == "sanity:missing:to"


def test_duplicate_to_is_refused() -> None:  # CVE-2018-14767
    data = read("legit", "polycom_vvx350_register_digest.sip")
    data = data.replace(b"\r\nCSeq:", b"\r\nTo: <sip:evil@example.com>\r\nCSeq:", 1)
    msg = parse(data)
    assert sanity_check(msg, max_size=MAX_SIZE, size=len(data)) == "sanity:duplicate:to"


def test_scanner_corpus_is_well_formed() -> None:
    # Scanners send valid SIP: the sanity gate is not what catches them.
    for name in SCANNERS:
        data = read("scanners", name)
        reason = sanity_check(parse(data), max_size=MAX_SIZE, size=len(data))
        assert reason == (NO_BRANCH_COOKIE if name.startswith("nmap_") else None), name


# --- sanity: size caps ----------------------------------------------------------------------


def _request(ruri: str, body: bytes = b"") -> bytes:
    head = (
        f"OPTIONS {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
        "From: <sip:1001@pbx.example.com>;tag=1928301774\r\n"
        "To: <sip:1002@pbx.example.com>\r\n"
        "Call-ID: a84b4c76e66710@192.0.2.1\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_message_size_cap() -> None:
    data = _request("sip:1002@pbx.example.com", b"x" * 500)
    msg = parse(data)
    assert sanity_check(msg, max_size=len(data), size=len(data)) is None
    assert sanity_check(msg, max_size=len(data) - 1, size=len(data)) == "sanity:too_large"
    assert sanity_check(msg, max_size=MAX_SIZE, size=MAX_SIZE + 1) == "sanity:too_large"


def test_request_uri_length_cap() -> None:
    prefix = "sip:@pbx.example.com"
    at_cap = "sip:" + "1" * (512 - len(prefix)) + "@pbx.example.com"
    assert len(at_cap) == 512
    for ruri, expected in ((at_cap, None), (at_cap.replace("sip:", "sip:1"), "ruri_too_long")):
        data = _request(ruri)
        reason = sanity_check(parse(data), max_size=MAX_SIZE, size=len(data))
        assert reason == (None if expected is None else f"sanity:{expected}")
    data = _request(at_cap)
    assert sanity_check(parse(data), max_size=MAX_SIZE, max_ruri=100, size=len(data)) == (
        "sanity:ruri_too_long"
    )


# --- fingerprint rules not covered by the corpus ----------------------------------------------


def _invite(
    *,
    from_: str = "<sip:1001@pbx.example.com>;tag=a73kszlfl",
    to: str = "<sip:1002@pbx.example.com>",
    ruri: str = "sip:1002@pbx.example.com",
    method: str = "INVITE",
    extra: str = "",
    body: str = "",
) -> Request:
    data = (
        f"{method} {ruri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
        f"From: {from_}\r\nTo: {to}\r\n"
        "Call-ID: a84b4c76e66710@192.0.2.1\r\n"
        f"CSeq: 1 {method}\r\nMax-Forwards: 70\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    msg = parse(data)
    assert isinstance(msg, Request)
    return msg


def test_a_plain_phone_call_matches_nothing() -> None:
    result = FP.match(_invite(), trusted=False)
    assert (result.score, result.rules, result.is_scanner) == (0.0, (), False)


def test_sippts_defaults() -> None:
    sdp = "v=0\r\no=anonymous 1312841870 1312841870 IN IP4 1.1.1.1\r\ns=session\r\n"
    msg = _invite(
        from_="<sip:100@203.0.113.10>;tag=0c26cd11",
        to="<sip:100@203.0.113.10>",
        ruri="sip:100@203.0.113.10",
        extra="Contact: <sip:100@1.1.1.1:5070>\r\nContent-Type: application/sdp\r\n",
        body=sdp,
    )
    result = FP.match(msg, trusted=False)
    assert result.rules == (
        "to-equals-from-numeric",
        "ip-literal-host",
        "placeholder-host-1111",
        "sippts-fixed-tag",
        "sdp-sippts",
    )
    assert result.is_scanner


def test_portsip_sdp_catches_a_rotated_user_agent() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=portsip.com\r\nt=0 0\r\n"
    msg = _invite(
        extra="User-Agent: Grandstream GXP2170 1.0.11.23\r\nContent-Type: application/sdp\r\n",
        body=sdp,
    )
    assert FP.match(msg, trusted=False).rules == ("sdp-portsip",)
    assert FP.match(msg, trusted=False).is_scanner


def test_rfc3261_example_hosts() -> None:
    msg = _invite(extra="Contact: <sip:alice@pc33.atlanta.com>\r\n")
    assert FP.match(msg, trusted=True).rules == ("rfc3261-example-host",)


def test_user_agent_rule_is_a_case_insensitive_prefix_and_weak_alone() -> None:
    for ua in ("FRIENDLY-SCANNER", "sipcli/v1.8", "PortSIP VoIP SDK 11.2", "voip", "VOIP"):
        result = FP.match(_invite(extra=f"User-Agent: {ua}\r\n"), trusted=False)
        assert result.rules == ("ua-scanner-tool",), ua
        assert not result.is_scanner  # 0.5 < 1.0
    for ua in ("X-Lite release 1006e", "eyeBeam 1.5", "Z 3.3.25608 r25552", "VoIP SIP Phone"):
        assert FP.match(_invite(extra=f"User-Agent: {ua}\r\n"), trusted=False).rules == ()


def test_server_rule_applies_to_responses_and_structural_rules_do_not() -> None:
    data = (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 1.1.1.1:5060;branch=z9hG4bK-123\r\n"
        b'From: "100"<sip:100@1.1.1.1>;tag=0c26cd11\r\nTo: "100"<sip:100@1.1.1.1>;tag=x\r\n'
        b"Call-ID: 123\r\nCSeq: 1 OPTIONS\r\nServer: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
    assert FP.match(parse(data), trusted=False).rules == ("server-scanner-tool",)


def test_to_equals_from_ignores_own_aor_requests() -> None:
    aor = "<sip:1001@pbx.example.com>"
    for method, expected in (("OPTIONS", True), ("REGISTER", False), ("SUBSCRIBE", False)):
        msg = _invite(method=method, from_=aor + ";tag=1", to=aor, ruri="sip:pbx.example.com")
        assert ("to-equals-from-numeric" in FP.match(msg, trusted=False).rules) is expected
    named = _invite(from_="<sip:alice@example.com>;tag=1", to="<sip:alice@example.com>")
    assert FP.match(named, trusted=False).rules == ()


def test_ip_literal_host_counts_only_for_untrusted_sources() -> None:
    msg = _invite(ruri="sip:1002@203.0.113.10", to="<sip:1002@[2001:db8::1]>")
    assert FP.match(msg, trusted=False).rules == ("ip-literal-host",)
    assert FP.match(msg, trusted=True).rules == ()
    assert is_ip_literal("192.0.2.1") and is_ip_literal("[2001:db8::1]")
    assert not is_ip_literal("pbx.example.com") and not is_ip_literal("nm")


def test_sipvicious_tag_shape_not_any_hex_tag_with_a_01_byte() -> None:
    tag = (b"1001" + b"\x01" + b"4242").hex()
    assert FP.match(_invite(from_=f"<sip:a@example.com>;tag={tag}"), trusted=False).rules == (
        "sipvicious-tag",
    )
    # Random hex tags contain a 0x01 byte 1 time in 16; they are not createTag() output.
    for tag in ("a001b2c3d4e5f607", "3130303101ff", "31303031", "01"):
        msg = _invite(from_=f"<sip:a@example.com>;tag={tag}")
        assert FP.match(msg, trusted=False).rules == (), tag


def test_decimal_call_id_needs_the_digit_branch() -> None:
    data = bytes(_invite()).replace(b"a84b4c76e66710@192.0.2.1", b"845752980453913316694142")
    assert FP.match(parse(data), trusted=False).rules == ()  # branch z9hG4bK776asdhds
    data = data.replace(b"z9hG4bK776asdhds", b"z9hG4bK-2159139916")
    assert FP.match(parse(data), trusted=False).rules == ("sipvicious-callid-branch",)


# --- the rule file ---------------------------------------------------------------------------


def test_packaged_rule_file_loads() -> None:
    assert FP.origin.endswith("fingerprints.toml")
    assert FP.threshold == 1.0
    ids = [r.id for r in FP.rules]
    assert len(ids) == len(set(ids))
    for rule in FP.rules:
        assert rule.source.strip() and rule.description.strip(), rule.id
        assert 0 <= rule.weight <= FP.threshold, rule.id
    # A User-Agent match alone never decides.
    ua = [r for r in FP.rules if r.kind in ("user_agent_prefix", "server_prefix")]
    assert ua and all(r.weight < FP.threshold for r in ua)


def test_load_from_an_explicit_path(tmp_path: Path) -> None:
    path = tmp_path / "fp.toml"
    path.write_text(
        'threshold = 0.5\n[[rule]]\nid = "t"\nkind = "fixed_tag"\nweight = 0.5\n'
        'description = "d"\nsource = "s"\ntags = ["a73kszlfl"]\n',
        encoding="utf-8",
    )
    fp = Fingerprints.load(path)
    assert fp.match(_invite(), trusted=True).is_scanner


GOOD_RULE = (
    '[[rule]]\nid = "r1"\nkind = "fixed_tag"\nweight = 1.0\n'
    'description = "d"\nsource = "s"\ntags = ["x"]\n'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("threshold = 1.0\n[[rule]\n", r"not valid TOML"),
        (GOOD_RULE, r"'threshold' must be a number > 0"),
        ("threshold = 1.0\n", r"no rules"),
        ("threshold = 1.0\nthreshhold = 2\n" + GOOD_RULE, r"unknown top-level key 'threshhold'"),
        ("threshold = 1.0\n" + GOOD_RULE + GOOD_RULE, r"rule 'r1': field 'id': duplicate"),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('"fixed_tag"', '"ua_regex"'),
            r"rule 'r1': field 'kind': unknown kind 'ua_regex'",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('source = "s"\n', ""),
            r"rule 'r1': field 'source': must be a non-empty string",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace("weight = 1.0", 'weight = "heavy"'),
            r"rule 'r1': field 'weight': must be a number",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace("weight = 1.0", "weight = -1"),
            r"rule 'r1': field 'weight': must be a finite number >= 0",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('tags = ["x"]', "tags = []"),
            r"rule 'r1': field 'tags': must be a non-empty list",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('tags = ["x"]', 'tag = ["x"]'),
            r"rule 'r1': field 'tag': not a parameter of kind 'fixed_tag'",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('tags = ["x"]\n', ""),
            r"rule 'r1': field 'tags': required by kind 'fixed_tag'",
        ),
        (
            "threshold = 1.0\n"
            + GOOD_RULE.replace('"fixed_tag"', '"ip_literal_host"').replace(
                'tags = ["x"]', 'fields = ["ruri", "body"]'
            ),
            r"rule 'r1': field 'fields': unknown field\(s\) \['body'\]",
        ),
        (
            "threshold = 1.0\n" + GOOD_RULE.replace('id = "r1"\n', ""),
            r"rule #1: field 'id'",
        ),
    ],
)
def test_malformed_rule_files_give_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Fingerprints.loads(text, origin="bad.toml")
    assert str(info.value).startswith("bad.toml: ")


def test_unreadable_rule_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read fingerprint rules"):
        Fingerprints.load(tmp_path / "missing.toml")
