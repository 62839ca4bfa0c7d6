"""Hypothesis strategies for SIP messages, shared by the property and C-parser tests."""

from __future__ import annotations

from hypothesis import strategies as st

from corpus import CORPORA
from spitguard.sip.grammar import quote

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=16)
labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
hosts = st.one_of(
    st.lists(labels, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("[2001:db8::10]"),
)
users = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()&=+$,;?/", max_size=12)
ports = st.one_of(st.none(), st.integers(1, 65535))
displays = st.one_of(
    st.none(),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=0x3FF, exclude_characters="\x7f"),
        max_size=20,
    ),
)
uri_values = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.!~*'()", min_size=1, max_size=8
)
uri_params = st.dictionaries(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=8),
    st.one_of(st.none(), uri_values),
    max_size=3,
)


@st.composite
def sip_uris(draw: st.DrawFn) -> str:
    user = draw(users)
    text = "sip:" + (f"{user}@" if user else "") + draw(hosts)
    port = draw(ports)
    if port is not None:
        text += f":{port}"
    for k, v in draw(uri_params).items():
        text += f";{k}" if v is None else f";{k}={v}"
    return text


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "NOTIFY"]) | tokens)
    ruri = draw(sip_uris())
    via_host = draw(hosts)
    branch = "z9hG4bK" + draw(tokens)
    from_uri, to_uri = draw(sip_uris()), draw(sip_uris())
    display = draw(displays)
    ftag = draw(tokens)
    call_id = draw(tokens) + "@" + draw(hosts)
    cseq = draw(st.integers(0, 2**31 - 1))
    mf = draw(st.integers(0, 255))
    body = draw(st.binary(max_size=200))
    contacts = draw(st.lists(sip_uris(), max_size=3))
    compact = draw(st.booleans())
    from_value = (f"{quote(display)} " if display is not None else "") + f"<{from_uri}>"
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"{'v' if compact else 'Via'}: SIP/2.0/UDP {via_host};branch={branch};rport",
        f"{'f' if compact else 'From'}: {from_value};tag={ftag}",
        f"{'t' if compact else 'To'}: <{to_uri}>",
        f"{'i' if compact else 'Call-ID'}: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Max-Forwards: {mf}",
    ]
    if contacts:
        lines.append("Contact: " + ", ".join(f"<{c}>;expires=60" for c in contacts))
    lines.append(f"{'l' if compact else 'Content-Length'}: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    expect: dict[str, object] = {
        "method": method,
        "ruri": ruri,
        "branch": branch,
        "display": display,
        "ftag": ftag,
        "call_id": call_id,
        "cseq": cseq,
        "mf": mf,
        "body": body,
        "contacts": contacts,
        "to": to_uri,
    }
    return data, expect


CORPUS_SEEDS = [
    p.read_bytes()
    for folder in ("legit", "scanners", "rfc4475")
    for p in sorted((CORPORA / folder).iterdir())
    if p.suffix in (".sip", ".dat")
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(CORPUS_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.integers(0, 3))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == 1:
            data[pos:pos] = draw(
                st.sampled_from(
                    [
                        b";",
                        b",",
                        b'"',
                        b"<",
                        b">",
                        b"\r\n",
                        b" ",
                        b":",
                        b"%",
                        b"@",
                        b"\x00",
                        b"[",
                        b"=",
                        b"\r\n ",
                    ]
                )
            )
        elif op == 2 and data:
            del data[pos : pos + draw(st.integers(1, 20))]
        else:
            data = data[:pos]
    return bytes(data)
