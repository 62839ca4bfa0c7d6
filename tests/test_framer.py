"""The stream framer: chunking independence, pipelining, keep-alives, garbage and limits."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus import CORPORA, manifest, read
from spitguard.sip import Limits, SipParseError, parse
from spitguard.sip.framer import (
    PING,
    PONG,
    Close,
    Frame,
    FramerEvent,
    Ping,
    Pong,
    StreamFramer,
    content_length,
)

INVITE_WITH_BODY = read("legit", "polycom_spip650_invite.sip")
OK_WITH_BODY = read("legit", "patton_sn4634_200ok_record_route.sip")
REGISTER_DIGEST = read("legit", "polycom_vvx350_register_digest.sip")
NO_CONTENT_LENGTH = read("legit", "xlite_register_unbind_expires0.sip")


def _frameable() -> list[bytes]:
    """Corpus messages that parse, carry Content-Length and have no trailing octets."""
    out: list[bytes] = []
    for folder, column in (("legit", "name"), ("scanners", "name"), ("rfc4475", "name")):
        for row in manifest(folder):
            data = read(folder, row[column])
            try:
                msg = parse(data)
            except SipParseError:
                continue
            if msg.get("content-length") is not None and msg.to_bytes() == data:
                out.append(data)
    return out


FRAMEABLE = _frameable()


def feed_all(chunks: Iterable[bytes], framer: StreamFramer | None = None) -> list[FramerEvent]:
    framer = framer or StreamFramer()
    events: list[FramerEvent] = []
    for chunk in chunks:
        events.extend(framer.feed(chunk))
    return events


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def with_header(msg: bytes, line: bytes) -> bytes:
    """`msg` with its Content-Length line replaced by `line` (no CRLF)."""
    head, _, body = msg.partition(b"\r\n\r\n")
    lines = [ln for ln in head.split(b"\r\n") if not ln.lower().startswith(b"content-length")]
    return b"\r\n".join([*lines, line]) + b"\r\n\r\n" + body


def test_corpus_is_present() -> None:
    assert CORPORA.is_dir()
    assert len(FRAMEABLE) >= 40
    assert INVITE_WITH_BODY in FRAMEABLE and OK_WITH_BODY in FRAMEABLE


@pytest.mark.parametrize("data", FRAMEABLE, ids=lambda d: d.split(b"\r\n", 1)[0][:40].decode())
def test_each_corpus_message_is_one_frame(data: bytes) -> None:
    assert feed_all([data]) == [Frame(data)]
    assert len(parse(data).body) == content_length(data.partition(b"\r\n\r\n")[0])


@pytest.mark.parametrize(
    "name", ["polycom_spip650_invite.sip", "patton_sn4634_200ok_record_route.sip"]
)
def test_split_at_every_offset(name: str) -> None:
    data = read("legit", name)
    assert b"\r\n\r\nv=0" in data  # these carry an SDP body
    for i in range(len(data) + 1):
        framer = StreamFramer()
        first = framer.feed(data[:i])
        assert first == ([Frame(data)] if i == len(data) else []), i
        assert framer.buffered == (0 if i == len(data) else i)
        assert framer.in_message == (0 < i < len(data))
        rest = framer.feed(data[i:])
        assert first + rest == [Frame(data)], i
        assert framer.buffered == 0


def test_two_cuts_across_two_messages() -> None:
    stream = REGISTER_DIGEST + INVITE_WITH_BODY
    for i in range(0, len(stream), 7):
        for j in range(i, len(stream), 97):
            assert feed_all(split_at(stream, [i, j])) == [
                Frame(REGISTER_DIGEST),
                Frame(INVITE_WITH_BODY),
            ]


def test_one_byte_at_a_time() -> None:
    stream = b"".join(FRAMEABLE)
    assert feed_all(bytewise(stream)) == [Frame(m) for m in FRAMEABLE]


def test_pipelined_messages_in_one_feed() -> None:
    framer = StreamFramer()
    assert framer.feed(b"".join(FRAMEABLE)) == [Frame(m) for m in FRAMEABLE]
    assert framer.buffered == 0


def test_pipelined_with_partial_tail() -> None:
    framer = StreamFramer()
    events = framer.feed(OK_WITH_BODY + INVITE_WITH_BODY[:100])
    assert events == [Frame(OK_WITH_BODY)]
    assert framer.buffered == 100
    assert framer.feed(INVITE_WITH_BODY[100:]) == [Frame(INVITE_WITH_BODY)]


# --- keep-alives -------------------------------------------------------------------------


def test_ping() -> None:
    assert feed_all([PING]) == [Ping()]
    assert feed_all(bytewise(PING)) == [Ping()]
    assert feed_all([PING * 3]) == [Ping(), Ping(), Ping()]


def test_pings_between_messages() -> None:
    stream = PING + OK_WITH_BODY + PING + PING + INVITE_WITH_BODY + PING
    expected = [Ping(), Frame(OK_WITH_BODY), Ping(), Ping(), Frame(INVITE_WITH_BODY), Ping()]
    assert feed_all([stream]) == expected
    assert feed_all(bytewise(stream)) == expected


def test_single_crlf_without_ping_is_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.buffered == 2  # could still become a ping
    assert not framer.in_message
    assert framer.feed(OK_WITH_BODY) == [Frame(OK_WITH_BODY)]
    assert feed_all([b"\r\n" + OK_WITH_BODY + b"\r\n" + OK_WITH_BODY]) == [Frame(OK_WITH_BODY)] * 2


def test_crlf_crlf_crlf_is_one_ping_and_a_stray_crlf() -> None:
    assert feed_all([b"\r\n" * 3 + OK_WITH_BODY]) == [Ping(), Frame(OK_WITH_BODY)]


def test_pong_only_after_sent_ping() -> None:
    framer = StreamFramer()
    framer.sent_ping()
    assert framer.feed(PONG) == [Pong()]
    assert framer.buffered == 0
    # The ping is answered: a second lone CRLF is not another pong.
    assert framer.feed(PONG) == []
    assert framer.feed(OK_WITH_BODY) == [Frame(OK_WITH_BODY)]
    framer.sent_ping()
    assert framer.feed(b"\r") == []
    assert framer.feed(b"\n" + OK_WITH_BODY) == [Pong(), Frame(OK_WITH_BODY)]


def test_pong_and_ping_in_one_feed() -> None:
    framer = StreamFramer()
    framer.sent_ping()
    assert framer.feed(PONG + PING) == [Pong(), Ping()]


# --- garbage and limits ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello on the TCP port
        b"\x00\x00\x00\x00",
        b" INVITE sip:a@b SIP/2.0\r\n",
        b"\r\n\rINVITE",
        b"<xml/>",
    ],
)
def test_binary_garbage_closes_at_once(data: bytes) -> None:
    framer = StreamFramer()
    assert framer.feed(data) == [Close("garbage")]
    assert framer.closed and framer.buffered == 0
    assert feed_all(bytewise(data)) == [Close("garbage")]


def test_frames_before_garbage_come_out() -> None:
    assert feed_all([OK_WITH_BODY + PING + b"\xff\xfe"]) == [
        Frame(OK_WITH_BODY),
        Ping(),
        Close("garbage"),
    ]


def test_input_after_close_is_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\x00") == [Close("garbage")]
    assert framer.feed(OK_WITH_BODY) == []
    assert framer.feed(PING) == []
    assert framer.buffered == 0


def test_http_request_is_framed_not_garbage() -> None:
    http = b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n\r\nhi"
    assert feed_all([http]) == [Frame(http)]
    with pytest.raises(SipParseError):
        parse(http)  # the parser, not the framer, rejects it
    bare = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
    assert feed_all([bare]) == [Close("no_content_length")]


def test_missing_content_length() -> None:
    assert feed_all([NO_CONTENT_LENGTH]) == [Close("no_content_length")]
    assert feed_all([OK_WITH_BODY + NO_CONTENT_LENGTH + OK_WITH_BODY]) == [
        Frame(OK_WITH_BODY),
        Close("no_content_length"),
    ]


def test_huge_header_block_without_end() -> None:
    framer = StreamFramer()
    events: list[FramerEvent] = []
    chunk = b"X-Junk: " + b"a" * 1000 + b"\r\n"
    events += framer.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    for _ in range(100):
        events += framer.feed(chunk)
        assert framer.buffered <= Limits().max_message_size
    assert events == [Close("too_large")]
    assert framer.buffered == 0


def test_header_block_limit_is_exact() -> None:
    limits = Limits(max_message_size=200)
    head = b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\nX: "
    fits = head + b"a" * (200 - len(head) - 4) + b"\r\n\r\n"
    assert len(fits) == 200
    assert feed_all([fits], StreamFramer(limits)) == [Frame(fits)]
    over = head + b"a" * (201 - len(head) - 4) + b"\r\n\r\n"
    assert feed_all([over], StreamFramer(limits)) == [Close("too_large")]
    assert feed_all(bytewise(over), StreamFramer(limits)) == [Close("too_large")]


def test_body_over_limit() -> None:
    limits = Limits(max_message_size=400)
    head = b"MESSAGE sip:a@b SIP/2.0\r\nContent-Length: "
    ok_body = 400 - len(head + b"100\r\n\r\n")
    fits = head + str(ok_body).encode() + b"\r\n\r\n" + b"b" * ok_body
    assert len(fits) == 400
    assert feed_all([fits], StreamFramer(limits)) == [Frame(fits)]
    over = head + str(ok_body + 1).encode() + b"\r\n\r\n"
    # Closed as soon as the header block is known, without waiting for the body.
    assert feed_all([over], StreamFramer(limits)) == [Close("too_large")]
    huge = with_header(OK_WITH_BODY, b"Content-Length: 4294967295")
    assert feed_all([huge]) == [Close("too_large")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"Content-Length: -298", "bad_content_length"),
        (b"Content-Length: 29a", "bad_content_length"),
        (b"Content-Length:", "bad_content_length"),
        (b"Content-Length: 0x12", "bad_content_length"),
        (b"Content-Length: 99999999999999999999999", "bad_content_length"),
        (b"Content-Length: 298\r\nl: 297", "content_length_conflict"),
        (b"content-length: 1\r\nCONTENT-LENGTH: 298", "content_length_conflict"),
    ],
)
def test_bad_content_length(line: bytes, reason: str) -> None:
    data = with_header(OK_WITH_BODY, line)
    assert feed_all([data]) == [Close(reason)]
    with pytest.raises(SipParseError) as info:
        parse(data)
    assert info.value.reason == reason  # the framer and the parser agree


@pytest.mark.parametrize(
    "line",
    [
        b"l: 298",
        b"L:298",
        b"content-length: 298",
        b"CONTENT-LENGTH   :   298   ",
        b"Content-Length:\r\n  298",
        b"Content-Length: 298\r\nContent-Length: 298",
        b"Content-Length: 00298",
        b"Content-Length:\t298\t",
    ],
)
def test_content_length_spellings(line: bytes) -> None:
    data = with_header(OK_WITH_BODY, line)
    assert feed_all([data + PING]) == [Frame(data), Ping()]
    assert len(parse(data).body) == 298


def test_lookalike_headers_are_not_content_length() -> None:
    data = with_header(OK_WITH_BODY, b"X-Content-Length: 5\r\nContent-Lengthy: 7\r\nl: 298")
    assert feed_all([data]) == [Frame(data)]
    # The start line is never a header, even when it looks like one.
    odd = b"Content-Length: 5 sip:a@b SIP/2.0\r\nl: 0\r\n\r\n"
    assert feed_all([odd]) == [Frame(odd)]


def test_body_containing_crlfcrlf() -> None:
    body = b"\r\n\r\nINVITE x\r\n\r\n"
    head = OK_WITH_BODY.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
    data = with_header(head, b"l: %d" % len(body)) + body
    assert feed_all([data + data]) == [Frame(data), Frame(data)]
    assert parse(data).body == body


# --- properties ---------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_chunking_yields_the_messages(data: st.DataObject) -> None:
    picks = data.draw(st.lists(st.sampled_from(FRAMEABLE), min_size=1, max_size=6))
    gaps = data.draw(
        st.lists(st.sampled_from([b"", b"\r\n", PING]), min_size=len(picks), max_size=len(picks))
    )
    stream = b"".join(gap + msg for gap, msg in zip(gaps, picks, strict=True))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    events = feed_all(split_at(stream, cuts))
    assert [e for e in events if isinstance(e, Frame)] == [Frame(m) for m in picks]
    assert not any(isinstance(e, Close) for e in events)
    assert events.count(Ping()) == sum(gap == PING for gap in gaps)


def _check_invariants(data: bytes, cuts: list[int], limits: Limits) -> None:
    whole = StreamFramer(limits).feed(data)
    framer = StreamFramer(limits)
    chunked: list[FramerEvent] = []
    for chunk in split_at(data, cuts):
        chunked += framer.feed(chunk)
        assert framer.buffered <= limits.max_message_size
    assert chunked == whole
    assert all(isinstance(e, Frame | Ping | Close) for e in whole)
    assert sum(isinstance(e, Close) for e in whole) <= 1
    for e in whole:
        if isinstance(e, Frame):
            assert len(e.data) <= limits.max_message_size
            try:
                msg = parse(e.data, limits)
            except SipParseError:
                continue
            # Whenever the parser accepts a frame, it consumed exactly the frame.
            assert msg.to_bytes() == e.data


@settings(max_examples=500)
@given(
    st.binary(max_size=600),
    st.lists(st.integers(0, 600), max_size=10),
    st.integers(10, 700),
)
def test_arbitrary_bytes_only_produce_events(data: bytes, cuts: list[int], cap: int) -> None:
    _check_invariants(data, [c for c in cuts if c <= len(data)], Limits(max_message_size=cap))


sip_ish = st.lists(
    st.sampled_from(
        [
            b"\r\n",
            b"\r",
            b"\n",
            b" ",
            b"\t",
            b":",
            b"l",
            b"L: ",
            b"Content-Length",
            b"content-length:",
            b"0",
            b"3",
            b"12",
            b"-1",
            b"INVITE sip:a@b SIP/2.0",
            b"SIP/2.0 200 OK",
            b"Via: SIP/2.0/TCP h;branch=z9hG4bKx",
            b"abc",
            b"\x00",
        ]
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=1000)
@given(sip_ish, st.lists(st.integers(0, 400), max_size=8))
def test_sip_like_bytes_chunk_independently(data: bytes, cuts: list[int]) -> None:
    _check_invariants(data, [c for c in cuts if c <= len(data)], Limits(max_message_size=300))


@settings(max_examples=300)
@given(st.sampled_from(FRAMEABLE), st.data())
def test_mutated_corpus_messages(msg: bytes, data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, len(msg)))
    junk = data.draw(st.binary(max_size=8))
    mutated = msg[:pos] + junk + msg[pos + len(junk) // 2 :]
    cuts = data.draw(st.lists(st.integers(0, len(mutated)), max_size=6))
    _check_invariants(mutated + msg, cuts, Limits())


def test_protos_corpus() -> None:
    rows = [r for r in manifest("protos") if r["included"] == "yes"]
    assert len(rows) > 4000
    for i, row in enumerate(rows):
        data = read("protos", row["file"])
        cuts = list(range(0, len(data), 331)) if i % 10 == 0 else []
        _check_invariants(data, cuts, Limits())


# --- cost ---------------------------------------------------------------------------------


def _best_time(data: bytes, chunk: int, limits: Limits) -> float:
    best = float("inf")
    for _ in range(3):
        framer = StreamFramer(limits)
        start = time.perf_counter()
        for i in range(0, len(data), chunk):
            framer.feed(data[i : i + chunk])
        best = min(best, time.perf_counter() - start)
    return best


def test_cost_is_linear_in_input() -> None:
    limits = Limits(max_message_size=10_000_000)

    def slow_header(n: int) -> bytes:
        return b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * n + b"\r\nl: 0\r\n\r\n"

    # Trickled header block: a rescanning framer would be quadratic here.
    small = _best_time(slow_header(40_000), 16, limits)
    large = _best_time(slow_header(320_000), 16, limits)
    assert large < small * 24, (small, large)
    # Many pipelined messages in one feed: consumed bytes are dropped once per feed.
    msgs_small = b"".join(FRAMEABLE) * 20
    msgs_large = msgs_small * 8
    small = _best_time(msgs_small, len(msgs_small), limits)
    large = _best_time(msgs_large, len(msgs_large), limits)
    assert large < small * 24, (small, large)
