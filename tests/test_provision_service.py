"""`ProvisionService` without I/O: request facts in, decisions out, time injected."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

from spitguard.provision.catalog import Catalog, CatalogEntry
from spitguard.provision.polycom import PolycomDriver
from spitguard.provision.profile import DeviceConfig, HardeningProfile, Line
from spitguard.provision.service import (
    Admitted,
    Decision,
    ProvisionPolicy,
    ProvisionRequest,
    ProvisionService,
)
from spitguard.sip.auth import format_credentials, parse_challenge
from spitguard.sip.digest import DigestClient
from spitguard.store.repos import DeviceInfo, DeviceLineInfo

MAC_A, MAC_B = "0004f2000001", "0004f2000002"
PASSWORDS = {MAC_A: "prov-pass-a", MAC_B: "prov-pass-b"}
UA = "FileTransport PolycomVVX-VVX_450-UA/6.4.3.5018 Type/Application"
SIP_SECRET = "line-secret-123"
T0 = 1_000_000.0


@dataclass
class Hooks:
    banned: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, str, str]] = field(default_factory=list)

    def is_banned(self, source: str, now: float) -> bool:
        return source in self.banned

    def ban(self, source: str, reason: str, now: float) -> None:
        self.banned[source] = reason

    def event(self, source: str, reason: str, now: float, **kw: object) -> None:
        self.events.append((source, reason, str(kw["action"])))


def entry(mac: str, model: str = "VVX_450") -> CatalogEntry:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    info = DeviceInfo(
        1,
        mac,
        "acme",
        "polycom",
        model,
        None,
        (DeviceLineInfo(1, "sip:a@acme.test"),),
        MappingProxyType({}),
        now,
        now,
    )
    profile = HardeningProfile(edge_host="127.0.0.1", admin_password="Adm1nPassw0rd")
    line = Line(key=1, aor="a@acme.test", auth_user="a", password=SIP_SECRET)
    config = DeviceConfig(mac=mac, vendor="polycom", lines=(line,), profile=profile)
    return CatalogEntry(info, PolycomDriver(), config, None, PASSWORDS[mac])


def service(**policy: object) -> tuple[ProvisionService, Hooks]:
    hooks = Hooks()
    catalog = Catalog(1, {MAC_A: entry(MAC_A), MAC_B: entry(MAC_B)})
    svc = ProvisionService(
        [PolycomDriver()],
        lambda: catalog,
        hooks,
        secret=b"s" * 32,
        policy=ProvisionPolicy(**policy),  # type: ignore[arg-type]
    )
    return svc, hooks


def get(
    svc: ProvisionService,
    name: str,
    *,
    source: str = "127.0.1.5",
    user: str | None = None,
    password: str = "",
    now: float = T0,
    method: str = "GET",
    ua: str = UA,
) -> Decision | Admitted:
    target = f"/provision/{name}"
    req = ProvisionRequest(method, name, target, source, ua)
    first = svc.check(req, now)
    if user is None or not isinstance(first, Decision) or first.status != 401:
        return first
    challenge = parse_challenge(dict(first.headers)["WWW-Authenticate"])
    creds = DigestClient(user, password).authorize(challenge, method=method, uri=target)
    authed = ProvisionRequest(method, name, target, source, ua, format_credentials(creds))
    return svc.check(authed, now)


def test_only_the_device_itself_gets_its_file() -> None:
    svc, hooks = service()
    name = f"spitguard-{MAC_A}.cfg"
    ok = get(svc, name, user=MAC_A, password=PASSWORDS[MAC_A])
    assert isinstance(ok, Decision) and ok.status == 200
    assert SIP_SECRET.encode() in ok.body
    assert ok.log is not None and ok.log.version is not None and ok.log.model == "VVX_450"
    for user, password in [(None, ""), (MAC_A, "wrong"), (MAC_B, PASSWORDS[MAC_B])]:
        denied = get(svc, name, user=user, password=password)
        assert isinstance(denied, Decision) and denied.status == 401
        assert SIP_SECRET.encode() not in denied.body
    # Unknown MAC and wrong password: the same challenge, parameter for parameter.
    unknown = get(svc, "spitguard-0004f2999999.cfg", user="0004f2999999", password="x")
    wrong = get(svc, name, user=MAC_A, password="wrong")
    assert isinstance(unknown, Decision) and isinstance(wrong, Decision)
    params = [
        sorted(k for k in parse_challenge(v).params if k != "nonce")
        for d in (unknown, wrong)
        for n, v in d.headers
        if n == "WWW-Authenticate"
    ]
    assert params[0] == params[1]
    assert ("127.0.1.5", "provision:auth_failed", "reject") in hooks.events


def test_master_files_are_public_and_identical_for_unknown_macs() -> None:
    svc, _ = service()
    known = get(svc, f"{MAC_A}.cfg")
    unknown = get(svc, "0004f2999999.cfg")
    assert isinstance(known, Decision) and isinstance(unknown, Decision)
    assert known.status == unknown.status == 200
    assert known.body.replace(MAC_A.encode(), b"M") == unknown.body.replace(b"0004f2999999", b"M")
    firmware = get(svc, "3111-46135-002.sip.ld")
    assert isinstance(firmware, Decision) and firmware.status == 404


def test_a_sweep_of_unknown_macs_is_banned_and_then_gets_nothing() -> None:
    svc, hooks = service(sweep_unknown_macs=3)
    scanner = "127.0.66.4"
    statuses = []
    for n in range(5):
        d = get(svc, f"spitguard-0004f2ee{n:04x}.cfg", source=scanner)
        assert isinstance(d, Decision)
        statuses.append(d.status)
    assert statuses[:3] == [401, 401, 401] and statuses[3] == 404
    assert hooks.banned == {scanner: "provision:mac_sweep"}
    assert (scanner, "provision:mac_sweep", "ban") in hooks.events
    after = get(svc, f"spitguard-{MAC_A}.cfg", source=scanner, user=MAC_A, password="prov-pass-a")
    assert isinstance(after, Decision) and after.status == 404 and not after.body
    # Known MACs never count: an office of phones behind one address is safe.
    office, _ = service(sweep_unknown_macs=1)
    for mac in (MAC_A, MAC_B, MAC_A, MAC_B):
        d = get(office, f"spitguard-{mac}.cfg", user=mac, password=PASSWORDS[mac])
        assert isinstance(d, Decision) and d.status == 200


def test_password_guessing_is_banned_and_a_success_clears_the_count() -> None:
    svc, hooks = service(auth_failures=3)
    name = f"spitguard-{MAC_A}.cfg"
    for _ in range(2):
        get(svc, name, user=MAC_A, password="guess")
    ok = get(svc, name, user=MAC_A, password=PASSWORDS[MAC_A])
    assert isinstance(ok, Decision) and ok.status == 200
    for _ in range(2):
        get(svc, name, user=MAC_A, password="guess")
    assert hooks.banned == {}
    third = get(svc, name, user=MAC_A, password="guess")
    assert isinstance(third, Decision) and third.status == 404
    assert hooks.banned == {"127.0.1.5": "provision:auth"}


def test_rate_limit_answers_429() -> None:
    svc, hooks = service(rate_limit=2, rate_window=10.0)
    codes = [getattr(get(svc, f"{MAC_A}.cfg", source="127.0.66.9"), "status", 0) for _ in range(3)]
    assert codes == [200, 200, 429]
    assert ("127.0.66.9", "provision:rate", "drop") in hooks.events
    later = get(svc, f"{MAC_A}.cfg", source="127.0.66.9", now=T0 + 11)
    assert isinstance(later, Decision) and later.status == 200


def test_uploads_are_admitted_for_the_device_and_weakening_is_noted() -> None:
    svc, _ = service(max_upload_bytes=2048)
    name = f"{MAC_A}-phone.cfg"
    admitted = get(svc, name, user=MAC_A, password=PASSWORDS[MAC_A], method="PUT")
    assert isinstance(admitted, Admitted) and admitted.limit == 2048
    body = b'<PHONE_CONFIG><x httpd.enabled="1"/></PHONE_CONFIG>'
    decision, finding = svc.keep_upload(admitted, body)
    assert decision.status == 204 and finding is not None
    assert [w.parameter for w in finding.weakening] == ["httpd.enabled"]
    assert decision.log is not None and "httpd.enabled" in (decision.log.note or "")
    too_big, nothing = svc.keep_upload(admitted, None)
    assert too_big.status == 413 and nothing is None
    # Another phone's upload name with this phone's credentials: 401.
    other = get(svc, f"{MAC_B}-phone.cfg", user=MAC_A, password=PASSWORDS[MAC_A], method="PUT")
    assert isinstance(other, Decision) and other.status == 401


def test_a_user_agent_contradicting_the_inventory_is_noted() -> None:
    svc, _ = service()
    ua = "FileTransport PolycomVVX-VVX_410-UA/5.9.5.0614 Type/Application"
    d = get(svc, f"spitguard-{MAC_A}.cfg", user=MAC_A, password=PASSWORDS[MAC_A], ua=ua)
    assert isinstance(d, Decision) and d.status == 200 and d.log is not None
    assert d.log.note == "User-Agent says model VVX_410, inventory says VVX_450"
    assert (d.log.model, d.log.firmware) == ("VVX_410", "5.9.5.0614")
    curl = get(svc, f"spitguard-{MAC_A}.cfg", user=MAC_A, password=PASSWORDS[MAC_A], ua="curl/8")
    assert isinstance(curl, Decision) and curl.log is not None
    assert curl.log.note == "User-Agent is not a polycom phone's"


def test_other_methods_and_odd_paths() -> None:
    svc, _ = service()
    post = get(svc, f"{MAC_A}.cfg", method="POST")
    assert isinstance(post, Decision) and post.status == 405
    for name in ("../etc/passwd", "a/b.cfg", ".hidden", "x" * 300):
        d = get(svc, name)
        assert isinstance(d, Decision) and d.status == 404, name
