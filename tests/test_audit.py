"""The auditor's sans-I/O parts: the SIP probe fed bytes and times, HTTP classification,
the pacer, target parsing and caps, and audit results in the store. Nothing here touches
the network; the loopback tests are in test_audit_live.py."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from spitguard.audit import (
    Pacer,
    SipProbe,
    Target,
    TargetError,
    Timing,
    expand_targets,
    parse_target,
)
from spitguard.audit.http_probe import build_get, classify, parse_answer
from spitguard.audit.sip_probe import Outgoing
from spitguard.config import Settings
from spitguard.guard.fingerprints import Fingerprints
from spitguard.sip.message import Request, make_response, parse
from spitguard.sip.uri import SipUri
from spitguard.store import Store, open_store
from spitguard.store.repos import AuditResultInput, BindingRecord

T = TypeVar("T")
TARGET = "127.0.1.40"
LOCAL = "127.0.66.40"


def probe(**kw: object) -> SipProbe:
    counter = itertools.count(1)
    defaults: dict[str, object] = {
        "transport": "udp",
        "target_host": TARGET,
        "target_port": 5060,
        "local_host": LOCAL,
        "local_port": 40000,
        "timing": Timing(t1=0.5, t2=4.0, retries=2, timeout=2.0),
        "token": lambda n: f"{next(counter):0{2 * n}x}",
    }
    defaults.update(kw)
    return SipProbe(**defaults)  # type: ignore[arg-type]


def request_of(out: Outgoing) -> Request:
    msg = parse(out.data)
    assert isinstance(msg, Request)
    return msg


def reply(req: Request, status: int, *, to_tag: str | None = "ph1", **kw: object) -> bytes:
    fields = [("Contact", f"<sip:alice@{TARGET}:5060>")] if status < 300 else []
    return make_response(req, status, to_tag=to_tag, fields=fields, **kw).to_bytes()  # type: ignore[arg-type]


def run_to_invite(p: SipProbe, options: Outgoing | None = None) -> Request:
    """Start (unless started: pass its OPTIONS), answer the OPTIONS with 200, return the
    INVITE the probe sends next."""
    if options is None:
        (options,) = p.start(0.0)
    out = p.receive(reply(request_of(options), 200), 0.01)
    (invite,) = out
    return request_of(invite)


# --- the SIP probe ------------------------------------------------------------------------


def test_probe_sends_options_then_a_scanner_shaped_invite() -> None:
    p = probe()
    (first,) = p.start(0.0)
    options = request_of(first)
    assert options.method == "OPTIONS" and not first.urgent
    invite = run_to_invite(p, first)
    assert invite.method == "INVITE"
    uri = invite.uri
    assert isinstance(uri, SipUri) and uri.user == "100" and uri.host == TARGET
    assert str(invite.to.uri) == str(invite.from_.uri) == f"sip:100@{TARGET}"
    assert invite.to.tag is None and invite.from_.tag
    assert invite.get("Content-Type") == "application/sdp"
    assert b"a=inactive" in invite.body and f"c=IN IP4 {LOCAL}".encode() in invite.body
    assert invite.call_id != options.call_id
    # Shaped like a scanner by our own edge's measure: the fingerprints call it one.
    assert Fingerprints.load().match(invite, trusted=False).is_scanner


def test_first_provisional_is_cancelled_at_once_and_a_200_gets_ack_and_bye() -> None:
    p = probe()
    invite = run_to_invite(p)
    out = p.receive(reply(invite, 100, to_tag=None), 0.1)
    (cancel_out,) = out
    cancel = request_of(cancel_out)
    assert cancel_out.urgent and cancel.method == "CANCEL"
    assert cancel.via.branch == invite.via.branch and cancel.cseq.number == invite.cseq.number
    assert p.receive(reply(invite, 180), 0.11) == []  # one CANCEL, not one per provisional
    out = p.receive(reply(invite, 200, body=b"v=0\r\n"), 0.12)
    ack, bye = (request_of(o) for o in out)
    assert ack.method == "ACK" and ack.to.tag == "ph1" and ack.cseq.number == invite.cseq.number
    assert bye.method == "BYE" and bye.to.tag == "ph1" and bye.cseq.number == invite.cseq.number + 1
    assert str(bye.uri) == f"sip:alice@{TARGET}:5060"  # the Contact; still sent to the target
    assert not p.done
    p.receive(reply(bye, 200), 0.13)
    assert p.done
    result = p.result()
    assert result.verdict == "rings"
    assert [(r.method, r.status) for r in result.responses] == [
        ("OPTIONS", 200),
        ("INVITE", 100),
        ("INVITE", 180),
        ("INVITE", 200),
        ("BYE", 200),
    ]
    trace = list(result.trace)
    assert trace.index("> CANCEL") == trace.index("< 100 Trying (INVITE)") + 1


def test_an_error_final_is_acked_and_means_answers() -> None:
    p = probe()
    invite = run_to_invite(p)
    (ack_out,) = p.receive(reply(invite, 400), 0.1)
    ack = request_of(ack_out)
    assert ack.method == "ACK" and ack.via.branch == invite.via.branch
    assert p.done and p.result().verdict == "answers"
    # A retransmitted final (our ACK was lost) gets the same ACK again.
    assert p.receive(reply(invite, 400), 0.2) == []  # done: the probe is finished


def test_udp_retransmits_t1_doubling_capped_then_gives_up_silent() -> None:
    p = probe(timing=Timing(t1=0.5, t2=1.0, retries=3, timeout=2.0))
    sent: list[tuple[float, str]] = [(0.0, request_of(p.start(0.0)[0]).method)]
    now = 0.0
    while not p.done:
        deadline = p.next_deadline()
        assert deadline is not None
        now = deadline
        sent.extend((now, request_of(o).method) for o in p.on_timer(now))
    # OPTIONS at 0, +0.5, +1.0 (capped at T2), +1.0; gives up 2 s after the last one.
    assert sent[:4] == [(0.0, "OPTIONS"), (0.5, "OPTIONS"), (1.5, "OPTIONS"), (2.5, "OPTIONS")]
    assert sent[4] == (4.5, "INVITE")
    assert [m for _, m in sent] == ["OPTIONS"] * 4 + ["INVITE"] * 4
    assert now == pytest.approx(4.5 + 2.5 + 2.0)
    assert p.result().verdict == "silent"


def test_tcp_does_not_retransmit_and_no_invite_sends_options_only() -> None:
    p = probe(transport="tcp", invite=False)
    (first,) = p.start(0.0)
    assert request_of(first).via.transport == "TCP"
    assert p.next_deadline() == pytest.approx(2.0)
    assert p.on_timer(2.0) == []
    assert p.done and p.result().verdict == "silent"
    assert p.result().trace == ("> OPTIONS", "- no answer to OPTIONS")


def test_responses_from_elsewhere_and_garbage_are_ignored() -> None:
    p = probe()
    (first,) = p.start(0.0)
    options = request_of(first)
    assert p.receive(b"\x00garbage", 0.1) == []
    other = make_response(options, 200)
    other.set("Via", f"SIP/2.0/UDP {LOCAL}:40000;branch=z9hG4bKother")
    assert p.receive(other.to_bytes(), 0.1) == []
    assert p.result().verdict == "silent"


# --- HTTP classification ------------------------------------------------------------------


def http(status: int, body: bytes = b"", *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status} X", *headers, f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(head).encode() + body


def test_http_classification() -> None:
    login = b'<html><title>Phone</title><input name="p" type="password"></html>'
    assert classify(80, "/", http(200, login), config_probe=False).kind == "login"
    challenge = http(401, b"", 'WWW-Authenticate: Basic realm="x"')
    found = classify(8080, "/", challenge, config_probe=False)
    assert (found.kind, found.markers, found.exposed) == ("login", ("auth-challenge",), True)
    assert classify(80, "/", http(200, b"<p>status</p>"), config_probe=False).kind == "page"
    assert not classify(80, "/", http(404), config_probe=False).exposed
    config = (
        b'<PHONE_CONFIG><ALL reg.1.address="1001" reg.1.auth.password="s3cret"/></PHONE_CONFIG>'
    )
    found = classify(80, "/000000000000.cfg", http(200, config), config_probe=True)
    assert found.kind == "config" and "polycom-reg" in found.markers
    assert "s3cret" not in repr(found.to_json())  # the content is never kept
    assert classify(80, "/x.cfg", http(200, b"<html/>"), config_probe=True).kind == "other"
    master = b'<APPLICATION APP_FILE_PATH="x.ld" CONFIG_FILES="phone-[PHONE_MAC_ADDRESS].cfg"/>'
    found = classify(80, "/000000000000.cfg", http(200, master), config_probe=True)
    assert (found.kind, found.markers) == ("other", ("polycom-config-files",))  # bootstrap only
    assert classify(443, "/", None, config_probe=False, note="connection refused").kind == "none"
    assert classify(80, "/", b"SSH-2.0-OpenSSH\r\n", config_probe=False).status is None
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"6\r\n#!vers\r\n5\r\nion:1\r\n0\r\n\r\n"
    answer = parse_answer(chunked)
    assert answer is not None and answer.body == b"#!version:1"
    get = build_get("::1", 8080, "/", "ua")
    assert b"Host: [::1]:8080\r\n" in get and b"Authorization" not in get


# --- pacing -------------------------------------------------------------------------------


def test_pacer_holds_the_rate_counting_sends_on_a_manual_clock() -> None:
    pacer = Pacer(rate=10.0, burst=3)
    now, sends = 0.0, []
    while len(sends) < 50:
        wait = pacer.delay(now)
        if wait == 0:
            sends.append(now)
        else:
            now += wait
    assert pacer.sent == 50
    for start in range(6):  # every one-second window: the burst plus one second's worth
        in_window = [t for t in sends if start <= t < start + 1]
        assert len(in_window) <= 3 + 10
    assert sends[-1] >= (50 - 3) / 10 - 1e-9
    # Urgent sends go at once but are paid for: the next one waits longer.
    pacer.take_now(now)
    pacer.take_now(now)
    assert pacer.delay(now) == pytest.approx(0.3)
    with pytest.raises(ValueError):
        Pacer(rate=0)


# --- targets --------------------------------------------------------------------------------


def test_targets_parse_and_ranges_are_capped() -> None:
    assert parse_target("127.0.1.5") == [Target("127.0.1.5", 5060)]
    assert parse_target("127.0.1.5:5080") == [Target("127.0.1.5", 5080)]
    assert parse_target("[::1]:5062") == [Target("::1", 5062)]
    assert parse_target("phone.Example.test") == [Target("phone.example.test", 5060)]
    assert [t.host for t in parse_target("127.0.1.0/30")] == ["127.0.1.1", "127.0.1.2"]
    assert parse_target("127.0.1.0/30:5070")[0].port == 5070
    assert len(parse_target("127.0.1.0/24")) == 254
    with pytest.raises(TargetError, match=r"holds 65536 addresses.*--max-targets 65536"):
        parse_target("127.0.0.0/16")
    assert len(parse_target("127.0.0.0/22", max_targets=1022)) == 1022
    with pytest.raises(TargetError, match="cap of 2"):
        expand_targets(["127.0.1.1", "127.0.1.2", "127.0.1.3"], max_targets=2)
    assert expand_targets(["127.0.1.1", "127.0.1.1:5060"]) == [Target("127.0.1.1", 5060)]
    for bad in ("127.0.1.1:0", "127.0.1.1:x", "bad_name!", "10.0.0.0/33", "[::1"):
        with pytest.raises(TargetError):
            parse_target(bad)


# --- the store ------------------------------------------------------------------------------


def with_store(tmp_path: Path, body: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = await open_store(Settings(data_dir=tmp_path / "var"))
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(run())


def binding(aor: str, host: str, port: int, expires_at: float) -> BindingRecord:
    return BindingRecord(
        tenant_id=1,
        aor=aor,
        contact=f"sip:{aor.split(':')[1].split('@')[0]}@{host}:{port}",
        call_id="c1",
        cseq=1,
        expires_at=expires_at,
        transport="udp",
        local_host="127.0.0.1",
        local_port=5060,
        remote_host=host,
        remote_port=port,
        conn_id=0,
        received_at=0.0,
    )


def test_store_lists_registered_addresses_and_keeps_results_per_device(tmp_path: Path) -> None:
    mac = "0004f2000001"

    async def body(store: Store) -> None:
        await store.tenants.add("acme", ["acme.test"])
        for user in ("1001", "1002"):
            await store.lines.add(f"{user}@acme.test", tenant="acme", password="Passw0rd-1234")
        await store.devices.add(mac, tenant="acme", lines=[(1, "1001@acme.test")])
        await store.bindings.upsert(binding("sip:1001@acme.test", "127.0.1.41", 40001, 2e9))
        await store.bindings.upsert(binding("sip:1002@acme.test", "127.0.1.42", 40002, 2e9))
        await store.bindings.upsert(binding("sip:1002@acme.test", "127.0.1.43", 1, 1.0))
        found = await store.audits.registered_addresses(1.7e9)
        assert [(a.host, a.port, a.device, a.tenant) for a in found] == [
            ("127.0.1.41", 40001, mac, "acme"),
            ("127.0.1.42", 40002, None, "acme"),
        ]  # the expired binding is left out
        from spitguard.store import UnknownTenantError

        with pytest.raises(UnknownTenantError):
            await store.audits.registered_addresses(1.7e9, "nobody")
        run = await store.audits.record(
            started_at=1.7e9,
            finished_at=1.7e9 + 5,
            options={"rate": 20.0},
            results=[
                AuditResultInput(
                    "127.0.1.41", 40001, "answers", True, False, False, {"k": 1},
                    aor="sip:1001@acme.test", device=mac,
                ),
                AuditResultInput("127.0.1.42", 40002, "silent", False, False, False),
            ],
        )  # fmt: skip
        assert (run.targets, run.exposed) == (2, 1)
        latest = await store.audits.latest_for_device(mac)
        assert latest is not None and latest.verdict == "answers" and latest.details == {"k": 1}
        host = await store.audits.latest_for_host("127.0.1.42")
        assert host is not None and host.verdict == "silent" and host.device is None
        assert [r.host for r in await store.audits.results(run.id)] == ["127.0.1.41", "127.0.1.42"]
        assert [r.id for r in await store.audits.runs()] == [run.id]

    with_store(tmp_path, body)


def test_service_audits_registered_phones_once_at_a_time_scoped_per_tenant(
    tmp_path: Path,
) -> None:
    from spitguard.audit import AuditBusyError, AuditOptions, AuditService

    mac = "0004f2000002"
    fast = AuditOptions(
        web_ports=(), timing=Timing(t1=0.05, t2=0.2, retries=1, timeout=0.3), rate=500.0
    )

    async def body(store: Store) -> None:
        acme = await store.tenants.add("acme", ["acme.test"])
        beta = await store.tenants.add("beta", ["beta.test"])
        await store.lines.add("1001@acme.test", tenant="acme", password="Passw0rd-1234")
        await store.lines.add("2001@beta.test", tenant="beta", password="Passw0rd-1234")
        await store.devices.add(mac, tenant="acme", lines=[(1, "1001@acme.test")])
        await store.bindings.upsert(binding("sip:1001@acme.test", "127.0.1.45", 40005, 4e9))
        service = AuditService(store, fast)
        run = await service.start(tenant="ACME", invite=False)
        assert service.running == run.id and run.state == "running" and run.tenant == "acme"
        with pytest.raises(AuditBusyError, match="already running"):
            await service.start()
        await service.wait()
        assert service.running is None
        done = await store.audits.run(run.id)
        assert done is not None and done.state == "done" and done.targets == 1
        assert done.options["invite"] is False
        (result,) = await store.audits.results(run.id)
        assert (result.host, result.port, result.device) == ("127.0.1.45", 40005, mac)
        # Tenant scope: acme sees its run and result; beta sees neither.
        assert [r.id for r in await store.audits.runs(scope=acme.id)] == [run.id]
        assert await store.audits.runs(scope=beta.id) == []
        assert await store.audits.run(run.id, scope=beta.id) is None
        assert await store.audits.results(run.id, scope=beta.id) == []
        # Latest per address and per device, in bulk and scoped.
        hosts = await store.audits.latest_for_hosts([("127.0.1.45", 40005), ("127.0.1.9", 1)])
        assert list(hosts) == [("127.0.1.45", 40005)]
        assert await store.audits.latest_for_hosts([("127.0.1.45", 40005)], scope=beta.id) == {}
        devices = await store.audits.latest_for_devices([mac, "0004f2ffffff"], scope=acme.id)
        assert devices[mac].verdict == result.verdict
        # A tenant with no live registration: done at once, nothing probed.
        empty = await service.start(tenant="beta")
        await service.wait()
        again = await store.audits.run(empty.id, scope=beta.id)
        assert again is not None and again.state == "done" and again.targets == 0
        await service.close()

    with_store(tmp_path, body)


def test_progress_bar_redraws_one_line() -> None:
    import io

    from spitguard.cli_audit import _ProgressBar

    stream = io.StringIO()
    bar = _ProgressBar(stream)
    bar.update(1, 4)
    bar.update(4, 4)
    bar.clear()
    text = stream.getvalue()
    assert "\n" not in text  # redrawn in place with carriage returns
    assert "audit [#######" in text and "] 1/4 targets" in text and "] 4/4 targets" in text
    assert text.endswith("\r")
