"""Property tests: generated messages round-trip; arbitrary and mutated bytes never crash."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sip_strategies import mutated, requests
from spitguard.sip import Request, SipParseError, SipUri, parse, parse_uri


def _check(msg: object, e: dict[str, object]) -> None:
    assert isinstance(msg, Request)
    assert msg.method == e["method"]
    assert isinstance(msg.uri, SipUri)
    assert msg.uri == parse_uri(str(e["ruri"]))
    assert msg.via.branch == e["branch"] and msg.via.wants_rport
    assert msg.from_.display == e["display"]
    assert msg.from_.tag == e["ftag"]
    assert msg.call_id == e["call_id"]
    assert msg.cseq.number == e["cseq"]
    assert msg.max_forwards == e["mf"]
    assert msg.body == e["body"]
    contacts = msg.contacts
    assert isinstance(contacts, list)
    assert [c.uri for c in contacts] == [parse_uri(c) for c in e["contacts"]]  # type: ignore[attr-defined]
    assert all(c.expires == 60 for c in contacts)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_generated_requests_round_trip(case: tuple[bytes, dict[str, object]]) -> None:
    data, expect = case
    msg = parse(data)
    _check(msg, expect)
    assert msg.to_bytes() == data  # unmodified: byte-exact
    # Modified: written canonically, and reads back to the same values.
    msg.set("Max-Forwards", str(expect["mf"]))
    canonical = msg.to_bytes()
    assert msg.modified
    again = parse(canonical)
    _check(again, expect)
    assert again.to_bytes() == canonical


def _parse_calmly(data: bytes) -> None:
    try:
        msg = parse(data)
    except SipParseError as exc:
        assert exc.reason != "malformed", exc  # an unforeseen exception was converted
        return
    # Everything a parsed message offers must be safe to read.
    for attr in ("vias", "contacts", "routes", "record_routes", "paths", "content_type", "event"):
        with contextlib.suppress(SipParseError):
            getattr(msg, attr)
    msg.to_bytes()


@settings(max_examples=500)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash(data: bytes) -> None:
    _parse_calmly(data)


@settings(max_examples=1500)
@given(mutated())
def test_mutated_corpus_never_crashes(data: bytes) -> None:
    _parse_calmly(data)
