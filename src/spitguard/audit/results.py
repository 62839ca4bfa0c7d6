"""What an audit found, per target: SIP verdicts per transport, web UI and configuration.

Verdicts, worst first:

- ``rings``: the INVITE got 180/183 (or any 18x) or 200: a stranger can make the phone
  ring, the ghost-call exposure.
- ``answers``: some response (an error such as 400/403/404, a 100 Trying, a 200 to
  OPTIONS): the phone or server is there and says so, which is what a scanner maps.
- ``silent``: no response at all: the best a phone or edge can do.

Nothing here holds what a target sent beyond status lines and the Server/User-Agent
header: a configuration file handed out without authentication may hold passwords, so
only its size and which markers identified it are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

from .targets import Target

__all__ = [
    "VERDICTS",
    "HttpFinding",
    "SeenResponse",
    "SipVerdict",
    "TargetResult",
    "TransportResult",
    "worst_first",
]

SipVerdict: TypeAlias = Literal["rings", "answers", "silent"]
VERDICTS: Final[tuple[SipVerdict, ...]] = ("rings", "answers", "silent")  # worst first
_RANK: Final = {"rings": 2, "answers": 1, "silent": 0}

HttpKind: TypeAlias = Literal["login", "page", "config", "other", "none"]


@dataclass(frozen=True, slots=True)
class SeenResponse:
    """One response a target sent: to which request, status line, who said it."""

    method: str  # the request it answers (CSeq method)
    status: int
    reason: str
    agent: str | None = None  # Server or User-Agent header, untrusted text

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "status": self.status,
            "reason": self.reason,
            "agent": self.agent,
        }


@dataclass(frozen=True, slots=True)
class TransportResult:
    """The SIP probe over one transport."""

    transport: str  # "udp" or "tcp"
    verdict: SipVerdict
    responses: tuple[SeenResponse, ...] = ()
    trace: tuple[str, ...] = ()  # "> INVITE", "< 180 Ringing", "> CANCEL", ...
    note: str | None = None  # e.g. "connection refused"

    def to_json(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "verdict": self.verdict,
            "responses": [r.to_json() for r in self.responses],
            "trace": list(self.trace),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class HttpFinding:
    """One HTTP GET: the web UI's front page or a provisioning path."""

    port: int
    scheme: str  # "http" or "https"
    path: str
    status: int | None  # None: no connection or no HTTP answer (`note` says which)
    kind: HttpKind
    server: str | None = None  # Server header, untrusted text
    size: int = 0
    markers: tuple[str, ...] = ()  # what identified a login page or a configuration
    note: str | None = None

    @property
    def exposed(self) -> bool:
        """A login page, a page served without authentication, or a configuration."""
        return self.kind in ("login", "page", "config")

    def to_json(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "scheme": self.scheme,
            "path": self.path,
            "status": self.status,
            "kind": self.kind,
            "exposed": self.exposed,
            "server": self.server,
            "size": self.size,
            "markers": list(self.markers),
            "note": self.note,
        }


@dataclass(frozen=True, slots=True)
class TargetResult:
    """Everything found at one target."""

    target: Target
    address: str | None  # the IP address probed (a host name resolved); None: unresolved
    sip: tuple[TransportResult, ...] = ()
    http: tuple[HttpFinding, ...] = ()
    error: str | None = None  # the target could not be probed at all (e.g. unresolvable)
    started_at: float = 0.0  # epoch seconds
    finished_at: float = 0.0

    @property
    def verdict(self) -> SipVerdict:
        """The worst SIP verdict over the transports."""
        best: SipVerdict = "silent"
        for result in self.sip:
            if _RANK[result.verdict] > _RANK[best]:
                best = result.verdict
        return best

    @property
    def web_ui(self) -> bool:
        return any(f.exposed and f.kind != "config" for f in self.http)

    @property
    def config(self) -> bool:
        return any(f.kind == "config" for f in self.http)

    @property
    def exposed(self) -> bool:
        return self.verdict != "silent" or self.web_ui or self.config

    @property
    def severity(self) -> tuple[int, int, int]:
        """Sort key, larger is worse: SIP verdict, then configuration, then web UI."""
        return (_RANK[self.verdict], int(self.config), int(self.web_ui))

    def to_json(self) -> dict[str, Any]:
        t = self.target
        return {
            "target": t.label,
            "host": t.host,
            "port": t.port,
            "address": self.address,
            "aor": t.aor,
            "device": t.device,
            "tenant": t.tenant,
            "verdict": self.verdict,
            "exposed": self.exposed,
            "web_ui": self.web_ui,
            "config": self.config,
            "sip": [r.to_json() for r in self.sip],
            "http": [f.to_json() for f in self.http],
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def worst_first(results: list[TargetResult]) -> list[TargetResult]:
    """Worst first; equal ones in the order they were given."""
    return sorted(results, key=lambda r: r.severity, reverse=True)
