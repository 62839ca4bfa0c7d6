"""Digest authentication: RFC vectors, server/client behaviour, header value parsing."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spitguard.sip.auth import (
    MAX_PARAMS,
    AuthChallenge,
    AuthCredentials,
    format_challenge,
    format_credentials,
    parse_challenge,
    parse_credentials,
)
from spitguard.sip.digest import (
    DigestClient,
    DigestResult,
    DigestServer,
    compute_ha1,
    compute_response,
    ha1_from_passwords,
    response_matches,
    select_challenge,
)
from spitguard.sip.errors import SipParseError

SECRET = b"0123456789abcdef-test-secret"
REALM = "pbx.example.com"
T0 = 1_700_000_000.0
USERS = {"1001": "s3cret-1001", "1002": "other"}
LOOKUP = ha1_from_passwords(lambda user, realm: USERS.get(user) if realm == REALM else None)

# RFC 7616 §3.9.1
R7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "uri": "/dir/index.html",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
}
R7616_PASSWORD = "Circle of Life"
R7616_EXPECTED = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def _server(**kw: object) -> DigestServer:
    return DigestServer(SECRET, REALM, **kw)  # type: ignore[arg-type]


def _answer(
    server: DigestServer,
    *,
    user: str = "1001",
    password: str | None = None,
    now: float = T0,
    alg: str = "SHA-256",
    binding: str = "",
) -> AuthCredentials:
    chs = server.challenge(now, binding=binding)
    ch = next(c for c in chs if c.algorithm == alg)
    client = DigestClient(user, USERS.get(user, "x") if password is None else password)
    return client.authorize(ch, method="REGISTER", uri=f"sip:{REALM}")


def _with(cr: AuthCredentials, **changes: str) -> AuthCredentials:
    return AuthCredentials(cr.scheme, {**cr.params, **changes})


# --------------------------------------------------------------------------- RFC vectors


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_vectors_lowlevel(alg: str) -> None:
    ha1 = compute_ha1(alg, R7616["username"], R7616["realm"], R7616_PASSWORD)
    got = compute_response(
        algorithm=alg,
        ha1=ha1,
        nonce=R7616["nonce"],
        method="GET",
        uri=R7616["uri"],
        qop="auth",
        nc="00000001",
        cnonce=R7616["cnonce"],
    )
    assert got == R7616_EXPECTED[alg]


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_vectors_client(alg: str) -> None:
    ch = parse_challenge(
        f'Digest realm="{R7616["realm"]}", qop="auth, auth-int", algorithm={alg}, '
        f'nonce="{R7616["nonce"]}", opaque="{R7616["opaque"]}"'
    )
    client = DigestClient("Mufasa", R7616_PASSWORD)
    cr = client.authorize(ch, method="GET", uri=R7616["uri"], cnonce=R7616["cnonce"])
    assert cr.response == R7616_EXPECTED[alg]
    assert cr.nc == "00000001" and cr.qop == "auth" and cr.opaque == R7616["opaque"]
    # Wire form survives a round trip through the parser.
    assert parse_credentials(format_credentials(cr)) == cr
    # A second request on the same nonce advances nc (and so changes the response).
    again = client.authorize(ch, method="GET", uri=R7616["uri"], cnonce=R7616["cnonce"])
    assert again.nc == "00000002" and again.response != cr.response


@pytest.mark.parametrize("alg", ["MD5", "SHA-256"])
def test_rfc7616_vectors_server_side(alg: str) -> None:
    cr = AuthCredentials(
        "Digest",
        {
            **R7616,
            "algorithm": alg,
            "qop": "auth",
            "nc": "00000001",
            "response": R7616_EXPECTED[alg],
        },
    )
    ha1 = compute_ha1(alg, "Mufasa", R7616["realm"], R7616_PASSWORD)
    assert response_matches(cr, method="GET", ha1=ha1)
    assert response_matches(cr, method="GET", ha1=ha1.upper())
    assert not response_matches(cr, method="POST", ha1=ha1)
    assert not response_matches(_with(cr, nc="00000002"), method="GET", ha1=ha1)
    # The full verifier must refuse the RFC's nonce: this server never issued it.
    server = DigestServer(SECRET, R7616["realm"])
    lookup = ha1_from_passwords(lambda u, r: R7616_PASSWORD)
    assert server.verify(cr, method="GET", ha1=lookup, now=T0) is DigestResult.INVALID


def test_rfc2617_vector() -> None:
    ha1 = compute_ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    got = compute_response(
        algorithm=None,
        ha1=ha1,
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"
    ch = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    cr = DigestClient("Mufasa", "Circle Of Life").authorize(
        ch, method="GET", uri="/dir/index.html", cnonce="0a4f113b"
    )
    assert cr.response == "6629fae49393a05397450978507c4ef1"


# --------------------------------------------------------------------------- server behaviour


@pytest.mark.parametrize("alg", ["SHA-256", "MD5"])
def test_round_trip_ok(alg: str) -> None:
    server = _server()
    cr = _answer(server, alg=alg)
    wire = parse_credentials(format_credentials(cr))
    assert server.verify(wire, method="REGISTER", ha1=LOOKUP, now=T0 + 1) is DigestResult.OK


def test_challenges_in_configured_order_and_well_formed() -> None:
    assert [c.algorithm for c in _server(algorithms=("SHA-256", "MD5")).challenge(T0)] == [
        "SHA-256",
        "MD5",
    ]
    server = _server(algorithms=("MD5", "SHA-256"))
    chs = server.challenge(T0)
    assert [c.algorithm for c in chs] == ["MD5", "SHA-256"]
    for ch in chs:
        assert ch.realm == REALM and ch.qop_options == ("auth",) and not ch.stale
        assert parse_challenge(format_challenge(ch)) == ch
    assert select_challenge(chs) is chs[1]  # the client still prefers SHA-256


def test_wrong_password_and_unknown_user_are_both_bad() -> None:
    server = _server()
    wrong = _answer(server, password="guess")
    unknown = _answer(server, user="9999", password="guess")
    assert server.verify(wrong, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.BAD
    assert server.verify(unknown, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.BAD


def test_wrong_method_is_bad() -> None:
    server = _server()
    cr = _answer(server)
    assert server.verify(cr, method="INVITE", ha1=LOOKUP, now=T0) is DigestResult.BAD


def test_stored_ha1_lookup() -> None:
    server = _server()
    store = {
        ("1001", alg): compute_ha1(alg, "1001", REALM, USERS["1001"]) for alg in ("MD5", "SHA-256")
    }
    cr = _answer(server, alg="MD5")
    result = server.verify(cr, method="REGISTER", now=T0, ha1=lambda u, r, a: store.get((u, a)))
    assert result is DigestResult.OK


def test_expired_nonce_is_stale_and_rechallenge_says_so() -> None:
    server = _server(nonce_ttl=30)
    cr = _answer(server)
    assert server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0 + 31) is DigestResult.STALE
    # Stale is only for the right password; a wrong one on an old nonce is just BAD.
    bad = _answer(server, password="guess")
    assert server.verify(bad, method="REGISTER", ha1=LOOKUP, now=T0 + 31) is DigestResult.BAD
    chs = server.challenge(T0 + 31, stale=True)
    assert all(c.stale for c in chs)
    assert "stale=true" in format_challenge(chs[0])
    fresh = DigestClient("1001", USERS["1001"]).authorize(
        chs[0], method="REGISTER", uri=f"sip:{REALM}"
    )
    assert server.verify(fresh, method="REGISTER", ha1=LOOKUP, now=T0 + 32) is DigestResult.OK


def test_nonce_from_the_future_is_invalid() -> None:
    server = _server()
    cr = _answer(server, now=T0 + 3600)
    assert server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_tampered_nonce_is_invalid() -> None:
    server = _server()
    cr = _answer(server)
    nonce = cr.nonce or ""
    for i in (0, 10, len(nonce) - 2):
        flipped = nonce[:i] + ("A" if nonce[i] != "A" else "B") + nonce[i + 1 :]
        forged = _with(cr, nonce=flipped)
        assert server.verify(forged, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID
    for junk in ("", "abc", nonce + "A", nonce[:-1] + "!", "é" * len(nonce)):
        assert (
            server.verify(_with(cr, nonce=junk), method="REGISTER", ha1=LOOKUP, now=T0)
            is DigestResult.INVALID
        )


def test_nonce_bound_to_source() -> None:
    server = _server()
    cr = _answer(server, binding="192.0.2.10:5060")
    assert (
        server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0, binding="198.51.100.7:5060")
        is DigestResult.INVALID
    )
    assert (
        server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0, binding="") is DigestResult.INVALID
    )
    assert (
        server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0, binding="192.0.2.10:5060")
        is DigestResult.OK
    )


def test_nonce_from_other_secret_is_invalid() -> None:
    other = DigestServer(b"another-secret-of-16+bytes", REALM)
    cr = _answer(other)
    assert _server().verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_wrong_realm_is_invalid() -> None:
    server = _server()
    other_realm = DigestServer(SECRET, "elsewhere.example.com")
    cr = _answer(other_realm)  # same secret, different realm
    assert server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID
    cr2 = _with(_answer(server), realm="elsewhere.example.com")
    assert server.verify(cr2, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_nonce_count_replay_window() -> None:
    server = _server(nc_window=8)
    chs = server.challenge(T0)
    client = DigestClient("1001", USERS["1001"])
    creds = [client.authorize(chs[0], method="REGISTER", uri=f"sip:{REALM}") for _ in range(12)]

    def verify(cr: AuthCredentials) -> DigestResult:
        return server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0 + 1)

    assert verify(creds[0]) is DigestResult.OK  # nc=1
    assert verify(creds[0]) is DigestResult.INVALID  # replay
    assert verify(creds[4]) is DigestResult.OK  # nc=5: higher is fine
    assert verify(creds[2]) is DigestResult.OK  # nc=3: late but inside the window, once
    assert verify(creds[2]) is DigestResult.INVALID
    assert verify(creds[4]) is DigestResult.INVALID
    assert verify(creds[11]) is DigestResult.OK  # nc=12 slides the window past nc=4
    assert verify(creds[3]) is DigestResult.INVALID  # nc=4 is now too old to tell
    assert verify(creds[5]) is DigestResult.OK  # nc=6 still inside
    assert server.tracked_nonces == 1


def test_nc_zero_and_malformed_fields_are_invalid() -> None:
    server = _server()
    cr = _answer(server)
    for changes in (
        {"nc": "00000000"},
        {"nc": "1"},
        {"nc": "zzzzzzzz"},
        {"qop": "auth-int"},
        {"algorithm": "SHA-512"},
        {"response": "00"},
        {"uri": ""},
        {"userhash": "true"},
        {"cnonce": ""},
    ):
        assert (
            server.verify(_with(cr, **changes), method="REGISTER", ha1=LOOKUP, now=T0)
            is DigestResult.INVALID
        ), changes
    missing = AuthCredentials("Digest", {k: v for k, v in cr.params.items() if k != "uri"})
    assert server.verify(missing, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID
    basic = parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    assert server.verify(basic, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_algorithm_not_configured_is_invalid() -> None:
    server = _server(algorithms=("SHA-256",))
    other = _server()  # same secret & realm, but offers MD5
    cr = _answer(other, alg="MD5")
    assert server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_legacy_no_qop_only_when_allowed() -> None:
    strict, legacy = _server(), _server(allow_no_qop=True)
    ch = next(c for c in legacy.challenge(T0) if c.algorithm == "MD5")
    old_phone = AuthChallenge("Digest", {k: v for k, v in ch.params.items() if k != "qop"})
    cr = DigestClient("1001", USERS["1001"]).authorize(
        old_phone, method="REGISTER", uri=f"sip:{REALM}"
    )
    assert cr.qop is None and cr.nc is None and cr.cnonce is None
    assert legacy.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.OK
    assert strict.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0) is DigestResult.INVALID


def test_sess_variants_round_trip() -> None:
    server = _server(algorithms=("SHA-256-sess", "MD5-sess"))
    for i, alg in enumerate(server.algorithms):
        # Each challenge set shares one nonce, so take a fresh set per algorithm.
        ch = next(c for c in server.challenge(T0 + i) if c.algorithm == alg)
        cr = DigestClient("1001", USERS["1001"]).authorize(
            ch, method="INVITE", uri="sip:1002@pbx.example.com"
        )
        assert server.verify(cr, method="INVITE", ha1=LOOKUP, now=T0 + i) is DigestResult.OK


def test_replay_table_is_bounded_and_fails_safe() -> None:
    server = _server(max_tracked_nonces=3)
    creds = [_answer(server, now=T0 + i) for i in range(5)]
    for cr in creds:
        assert server.verify(cr, method="REGISTER", ha1=LOOKUP, now=T0 + 10) is DigestResult.OK
    assert server.tracked_nonces == 3
    # The first nonces' history was evicted: replaying them must not succeed.
    assert server.verify(creds[0], method="REGISTER", ha1=LOOKUP, now=T0 + 10) is DigestResult.STALE
    # Expired entries are dropped before live ones.
    later = _answer(server, now=T0 + 400)
    assert server.verify(later, method="REGISTER", ha1=LOOKUP, now=T0 + 400) is DigestResult.OK
    assert server.tracked_nonces == 1


def test_server_rejects_weak_config() -> None:
    with pytest.raises(ValueError):
        DigestServer(b"short", REALM)
    with pytest.raises(ValueError):
        DigestServer(SECRET, REALM, algorithms=("SHA-1",))
    with pytest.raises(ValueError):
        DigestServer(SECRET, "bad\r\nrealm")


def test_client_select_and_refusals() -> None:
    md5 = parse_challenge('Digest realm="r", nonce="n", algorithm=MD5, qop="auth"')
    sha = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"')
    intonly = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth-int"')
    weird = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512-256')
    other = parse_challenge("NoOneKnowsThisScheme opaque-data=here")
    assert select_challenge([md5, other, sha]) is sha
    assert select_challenge([intonly, md5]) is md5
    assert select_challenge([intonly, weird, other]) is None
    client = DigestClient("a", "pw")
    for bad in (intonly, weird, other):
        with pytest.raises(ValueError):
            client.authorize(bad, method="INVITE", uri="sip:x")


def test_client_userhash() -> None:
    ch = parse_challenge(
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth", userhash=true'
    )
    cr = DigestClient("Mufasa", "pw").authorize(ch, method="GET", uri="/")
    assert cr.userhash and cr.username != "Mufasa" and len(cr.username or "") == 64


def test_secrets_not_in_repr() -> None:
    server = _server()
    cr = _answer(server)
    assert cr.response is not None and cr.response not in repr(cr)
    assert "1001" in repr(cr)
    client = DigestClient("1001", "hunter2-password")
    assert "hunter2" not in repr(client)
    assert "secret" not in repr(server)
    basic = parse_credentials("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
    assert "QWxh" not in repr(basic)


# --------------------------------------------------------------------------- parsing


def test_phone_header_compact() -> None:
    cr = parse_credentials(
        'Digest username="1001",realm="pbx.example.com",nonce="abc",'
        'uri="sip:pbx.example.com",'
        'response="0123456789abcdef0123456789abcdef",algorithm=MD5'
    )
    assert cr.is_digest and cr.username == "1001" and cr.realm == "pbx.example.com"
    assert cr.nonce == "abc" and cr.uri == "sip:pbx.example.com" and cr.algorithm == "MD5"
    assert cr.response == "0123456789abcdef0123456789abcdef"
    assert cr.qop is None and cr.nc is None


def test_phone_header_polycom_cisco_style() -> None:
    value = (
        'Digest username="1001", realm="pbx.example.com", nonce="Xy/1+2==", '
        'uri="sip:pbx.example.com;transport=tls", '
        'response="0123456789abcdef0123456789abcdef", algorithm=MD5, '
        'cnonce="6b8b4567", opaque="", qop=auth, nc=00000001'
    )
    cr = parse_credentials(value)
    assert cr.qop == "auth" and cr.nc == "00000001" and cr.cnonce == "6b8b4567"
    assert cr.opaque == "" and cr.nonce == "Xy/1+2=="
    assert list(cr.params)[:3] == ["username", "realm", "nonce"]
    again = parse_credentials(format_credentials(cr))
    assert again == cr
    assert "qop=auth, nc=00000001" in format_credentials(cr)


def test_case_lws_and_folding() -> None:
    ch = parse_challenge('  digest  REALM = "a b" ,\tNonce=x ,\r\n  QOP = "auth , auth-int"  ')
    assert ch.is_digest and ch.scheme == "digest"
    assert dict(ch.params) == {"realm": "a b", "nonce": "x", "qop": "auth , auth-int"}
    assert ch.qop_options == ("auth", "auth-int")


def test_escapes_and_commas_in_quotes() -> None:
    value = r'Digest realm="say \"hi\", then \\ leave", nonce="a,b,c", opaque="\x"'
    ch = parse_challenge(value)
    assert ch.realm == 'say "hi", then \\ leave'
    assert ch.nonce == "a,b,c" and ch.opaque == "x"
    wire = format_challenge(ch)
    assert r'realm="say \"hi\", then \\ leave"' in wire
    assert parse_challenge(wire) == ch


def test_unknown_scheme_kept() -> None:
    ch = parse_challenge("NoOneKnowsThisScheme opaque-data=here")
    assert not ch.is_digest and ch.scheme == "NoOneKnowsThisScheme"
    assert dict(ch.params) == {"opaque-data": "here"}
    assert format_challenge(ch) == "NoOneKnowsThisScheme opaque-data=here"
    raw = parse_credentials("Bearer mF_9.B5f-4.1JqM==")
    assert raw.params == {} and raw.raw == "mF_9.B5f-4.1JqM=="
    assert format_credentials(raw) == "Bearer mF_9.B5f-4.1JqM=="
    bare = parse_challenge("Negotiate")
    assert bare.params == {} and format_challenge(bare) == "Negotiate"


def test_empty_list_elements_tolerated() -> None:
    cr = parse_credentials('Digest username="a",, realm="b",')
    assert dict(cr.params) == {"username": "a", "realm": "b"}


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "Digest",
        "Digest ",
        'Digest realm="unterminated',
        'Digest realm="a" nonce="b"',
        "Digest realm=",
        "Digest =x",
        "Digest realm",
        'Digest realm="a", realm="b"',
        'Digest REALM="a", realm="b"',
        'Digest realm="a\r\nX-Injected: 1"',
        'Digest realm="a"\r\nX-Injected: 1',
        'Digest realm="a\x00"',
        'Digest realm="a\\\n"',
        'Digest realm=a"b',
        ",Digest realm=a",
        "Di(gest realm=a",
        "Digest, realm=a",
        "Basic \x01abc",
    ],
)
def test_malformed_raises_sip_parse_error(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_credentials(value)
    with pytest.raises(SipParseError):
        parse_challenge(value)


def test_limits() -> None:
    many = ", ".join(f"p{i}=v" for i in range(MAX_PARAMS + 1))
    with pytest.raises(SipParseError) as exc:
        parse_challenge("Digest " + many)
    assert exc.value.reason == "auth_header_limit"
    with pytest.raises(SipParseError):
        parse_challenge(f'Digest nonce="{"a" * 1025}"')
    with pytest.raises(SipParseError):
        parse_challenge(f"Digest nonce={'a' * 1025}")
    with pytest.raises(SipParseError):
        parse_challenge("Digest " + "x" * 10_000)
    assert parse_challenge(f'Digest nonce="{"a" * 1024}"').nonce == "a" * 1024


def test_error_detail_does_not_echo_values() -> None:
    with pytest.raises(SipParseError) as exc:
        parse_credentials('Digest response="topsecretvalue", response="topsecretvalue"')
    assert "topsecretvalue" not in str(exc.value)


def test_constructed_values_cannot_inject_headers() -> None:
    with pytest.raises(SipParseError):
        AuthChallenge("Digest", {"realm": "a\r\nVia: evil"})
    with pytest.raises(SipParseError):
        AuthChallenge("Digest", {"bad name": "x"})
    with pytest.raises(SipParseError):
        AuthChallenge("Dig est", {"realm": "x"})
    ch = AuthChallenge("Digest", {"Realm": "x", "custom": "needs quoting"})
    assert format_challenge(ch) == 'Digest realm="x", custom="needs quoting"'
    assert hash(ch) == hash(parse_challenge(format_challenge(ch)))


# --------------------------------------------------------------------------- property tests

_AUTHISH = st.text(
    alphabet=st.sampled_from(list('Digest realm="\\, =\t\r\nabcAUTH-_.:/+*%\x00é')),
    max_size=80,
)


@settings(max_examples=400)
@given(st.one_of(st.text(max_size=200), _AUTHISH))
def test_parsers_only_raise_sip_parse_error(value: str) -> None:
    for parse in (parse_credentials, parse_challenge):
        with contextlib.suppress(SipParseError):
            parse(value)


_TOKENS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=12)
_VALUES = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=40)


@settings(max_examples=200)
@given(st.dictionaries(_TOKENS, _VALUES, min_size=1, max_size=10))
def test_format_parse_round_trip(params: dict[str, str]) -> None:
    ch = AuthChallenge("Digest", params)
    assert parse_challenge(format_challenge(ch)) == ch
    cr = AuthCredentials("Digest", params)
    assert parse_credentials(format_credentials(cr)) == cr


def test_round_trip_many_requests_on_one_nonce() -> None:
    server = _server()
    ch = server.challenge(T0)[0]
    client = DigestClient("1002", USERS["1002"])
    for i in range(100):
        cr = client.authorize(ch, method="OPTIONS", uri="sip:x@pbx.example.com")
        assert server.verify(cr, method="OPTIONS", ha1=LOOKUP, now=T0 + i) is DigestResult.OK
