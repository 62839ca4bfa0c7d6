"""Response bodies of the JSON API (what the OpenAPI document describes). Secrets have no
field here to leak through: line passwords, device passwords, hashes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ...proxy.nat import EVIDENCE_TEXT, EXPOSED, NatInfo
from ...store.repos import (
    COMPLIANCE_TEXT,
    AuditResultInfo,
    AuditRunInfo,
    BanInfo,
    Compliance,
    DeviceStatus,
    EventInfo,
    FetchInfo,
    LineInfo,
    Registration,
    TenantInfo,
)


class ErrorOut(BaseModel):
    error: str


class PageMeta(BaseModel):
    total: int
    limit: int
    offset: int


class TenantOut(BaseModel):
    name: str
    domains: list[str]
    created_at: float


class TenantPage(PageMeta):
    items: list[TenantOut]


class LineOut(BaseModel):
    aor: str
    tenant: str
    auth_user: str
    display_name: str | None


class LinePage(PageMeta):
    items: list[LineOut]


class FetchOut(BaseModel):
    mac: str
    path: str
    status: int
    version: str | None
    user_agent: str | None
    firmware: str | None
    model: str | None
    source: str
    at: float


class FetchPage(PageMeta):
    items: list[FetchOut]


class DeviceOut(BaseModel):
    mac: str
    tenant: str
    vendor: str
    model: str | None
    label: str | None
    lines: list[str]
    compliance: Compliance = Field(
        description="compliant: its latest fetch of its hardened file is the version it "
        "should run now; stale: it fetched an older one; never: it has not fetched it; "
        "invalid: its configuration cannot be rendered (see `problem`)"
    )
    compliance_text: str
    problem: str | None = Field(
        default=None, description="why the configuration cannot be rendered (invalid only)"
    )
    last_fetch: FetchOut | None = Field(description="its latest request, whatever its result")


class DevicePage(PageMeta):
    items: list[DeviceOut]


class ComplianceOut(BaseModel):
    """How many devices are in each compliance state."""

    compliant: int
    stale: int
    never: int
    invalid: int


class RegistrationOut(BaseModel):
    id: int
    tenant: str
    aor: str
    contact: str
    user_agent: str | None
    transport: str
    source: str = Field(description="address and port the phone's REGISTER came from")
    expires_at: float
    received_at: float
    verdict: str = Field(description='"behind NAT", "directly reachable from the Internet" …')
    exposed: bool
    evidence: list[str]
    explanation: list[str]


class RegistrationPage(PageMeta):
    items: list[RegistrationOut]


class EventOut(BaseModel):
    id: int
    source: str
    reason: str
    minute: int
    count: int
    first_seen: float
    last_seen: float
    action: str
    transport: str
    method: str | None
    user_agent: str | None
    target: str | None
    has_trace: bool


class EventPage(BaseModel):
    items: list[EventOut]
    limit: int
    offset: int
    more: bool


class TraceOut(BaseModel):
    event_id: int
    trace: str = Field(description="the sampled SIP request, redacted by the guard")


class CountOut(BaseModel):
    key: str
    requests: int


class HourOut(BaseModel):
    hour: float
    requests: int


class AggregatesOut(BaseModel):
    since: float
    by_hour: list[HourOut]
    by_reason: list[CountOut]
    by_source: list[CountOut]


class BanOut(BaseModel):
    source: str
    until: float
    level: int
    reason: str
    created_at: float
    manual: bool


class BanList(BaseModel):
    items: list[BanOut]


class ResyncOut(BaseModel):
    devices: list[str] = Field(description="the devices re-synced (MACs)")
    outcomes: dict[str, str] = Field(
        description='outcome per MAC: "ok" (the phone accepted check-sync), "ok-challenged" '
        '(it challenged the NOTIFY and accepted our answer), "not-registered", "timeout", '
        '"rejected:<code>", "unknown-device", "no-credentials" or "busy"'
    )
    summary: str = Field(description='how many got each outcome, e.g. "2 ok, 1 not-registered"')


class WebUiOut(BaseModel):
    tenant: str
    web_ui: bool


AuditVerdict = Literal["rings", "answers", "silent"]
AuditState = Literal["running", "done", "failed", "interrupted"]


class AuditResultOut(BaseModel):
    """What one audit found at one registered phone's public address."""

    run_id: int
    host: str
    port: int
    address: str | None = Field(description="the IP address probed")
    aor: str | None = Field(description="the registration's address of record")
    device: str | None = Field(description="MAC of the device carrying that line, if known")
    verdict: AuditVerdict = Field(
        description="rings: a stranger's INVITE made it ring; answers: it responded (e.g. "
        "400), so a scanner learns it is there; silent: no response (best)"
    )
    exposed: bool = Field(description="rings, answers, a web UI or a configuration")
    web_ui: bool = Field(description="a web UI (login page) answered on 80, 443 or 8080")
    config: bool = Field(description="a provisioning path handed out a configuration")
    at: float = Field(description="when the audit finished (epoch seconds)")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="per transport responses and trace, web findings: as `spitguard audit "
        "--json` prints them (never a configuration's content)",
    )


class AuditRunOut(BaseModel):
    id: int
    state: AuditState = Field(
        description="running; done; failed (see `error`); interrupted (the server stopped "
        "before it was done)"
    )
    tenant: str | None = Field(description="the tenant whose phones it audited (None: all)")
    invite: bool = Field(description="whether INVITEs were sent (False: OPTIONS only)")
    started_at: float
    finished_at: float | None = Field(description="None while running")
    targets: int
    exposed: int
    error: str | None = None


class AuditRunList(BaseModel):
    items: list[AuditRunOut]
    limit: int
    offset: int


class AuditRunDetail(AuditRunOut):
    results: list[AuditResultOut]


class MeOut(BaseModel):
    username: str
    role: str
    tenant: str | None


def tenant_out(t: TenantInfo) -> TenantOut:
    return TenantOut(name=t.name, domains=list(t.domains), created_at=t.created_at.timestamp())


def line_out(line: LineInfo) -> LineOut:
    return LineOut(
        aor=line.aor, tenant=line.tenant, auth_user=line.auth_user, display_name=line.display_name
    )


def fetch_out(f: FetchInfo) -> FetchOut:
    return FetchOut(
        mac=f.mac,
        path=f.path,
        status=f.status,
        version=f.version,
        user_agent=f.user_agent,
        firmware=f.firmware,
        model=f.model,
        source=f.source,
        at=f.at,
    )


def device_out(s: DeviceStatus, problem: str | None = None) -> DeviceOut:
    d = s.device
    return DeviceOut(
        mac=d.mac,
        tenant=d.tenant,
        vendor=d.vendor,
        model=d.model,
        label=d.label,
        lines=[line.aor for line in d.lines],
        compliance=s.compliance,
        compliance_text=COMPLIANCE_TEXT[s.compliance],
        problem=problem if s.compliance == "invalid" else None,
        last_fetch=None if s.last_fetch is None else fetch_out(s.last_fetch),
    )


def nat_of(r: Registration) -> NatInfo:
    return NatInfo.from_json(dict(r.binding.nat))


def registration_out(r: Registration) -> RegistrationOut:
    b = r.binding
    nat = nat_of(r)
    return RegistrationOut(
        id=r.id,
        tenant=r.tenant,
        aor=b.aor,
        contact=b.contact,
        user_agent=b.user_agent,
        transport=b.transport,
        source=f"{b.remote_host}:{b.remote_port}",
        expires_at=b.expires_at,
        received_at=b.received_at,
        verdict=nat.verdict,
        exposed=nat.verdict == EXPOSED,
        evidence=list(nat.evidence),
        explanation=[EVIDENCE_TEXT.get(e, e) for e in nat.evidence],
    )


def event_out(e: EventInfo) -> EventOut:
    return EventOut(
        id=e.id,
        source=e.source,
        reason=e.reason,
        minute=e.minute,
        count=e.count,
        first_seen=e.first_seen,
        last_seen=e.last_seen,
        action=e.action,
        transport=e.transport,
        method=e.method,
        user_agent=e.user_agent,
        target=e.target,
        has_trace=bool(e.sample),
    )


def trace_text(e: EventInfo) -> str:
    return e.sample.decode("utf-8", errors="replace")


def ban_out(b: BanInfo) -> BanOut:
    return BanOut(
        source=b.source,
        until=b.until,
        level=b.level,
        reason=b.reason,
        created_at=b.created_at,
        manual=b.manual,
    )


_STATES: dict[str, AuditState] = {"running": "running", "done": "done", "failed": "failed"}
_VERDICTS: dict[str, AuditVerdict] = {"rings": "rings", "answers": "answers", "silent": "silent"}


def audit_run_out(run: AuditRunInfo, running: int | None) -> AuditRunOut:
    """A run as the API shows it; `running` is the id of the run under way on this server."""
    state: AuditState = _STATES.get(run.state, "done")
    if state == "running" and run.id != running:
        state = "interrupted"
    error = run.options.get("error")
    return AuditRunOut(
        id=run.id,
        state=state,
        tenant=run.tenant,
        invite=bool(run.options.get("invite", True)),
        started_at=run.started_at,
        finished_at=None if state in ("running", "interrupted") else run.finished_at,
        targets=run.targets,
        exposed=run.exposed,
        error=error if isinstance(error, str) else None,
    )


def audit_result_out(r: AuditResultInfo) -> AuditResultOut:
    details = {k: v for k, v in r.details.items() if k in ("sip", "http", "error")}
    return AuditResultOut(
        run_id=r.run_id,
        host=r.host,
        port=r.port,
        address=r.address,
        aor=r.aor,
        device=r.device,
        verdict=_VERDICTS.get(r.verdict, "answers"),
        exposed=r.exposed,
        web_ui=r.web_ui,
        config=r.config,
        at=r.at,
        details=details,
    )
