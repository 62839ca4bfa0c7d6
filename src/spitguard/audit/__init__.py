"""The exposure auditor: probes phones and fleets from outside the way a scanner would.

    results = await run_audit(expand_targets(["192.0.2.10", "192.0.2.32/28"]), AuditOptions())

Per target: SIP over UDP and TCP (an OPTIONS, then a scanner-shaped INVITE cancelled at
its first provisional response), classified `rings`, `answers` or `silent`; plus whether a
web UI answers and whether a provisioning path hands out a configuration without
authentication. The probes are sans-I/O (`sip_probe`, `http_probe`, `pacing`); `runner`
does the sockets; `storage` reads registrations from and records results in the store.
See docs/audit.md.
"""

from .http_probe import DEFAULT_CONFIG_PATHS, DEFAULT_WEB_PORTS
from .pacing import DEFAULT_BURST, DEFAULT_RATE, Pacer
from .plan import plan
from .results import VERDICTS, HttpFinding, SeenResponse, SipVerdict, TargetResult, TransportResult
from .runner import DEFAULT_USER_AGENT, AuditError, AuditOptions, run_audit
from .service import AuditBusyError, AuditService
from .sip_probe import SipProbe, Timing
from .storage import record_results, registered_targets
from .targets import DEFAULT_MAX_TARGETS, Target, TargetError, expand_targets, parse_target

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_CONFIG_PATHS",
    "DEFAULT_MAX_TARGETS",
    "DEFAULT_RATE",
    "DEFAULT_USER_AGENT",
    "DEFAULT_WEB_PORTS",
    "VERDICTS",
    "AuditBusyError",
    "AuditError",
    "AuditOptions",
    "AuditService",
    "HttpFinding",
    "Pacer",
    "SeenResponse",
    "SipProbe",
    "SipVerdict",
    "Target",
    "TargetError",
    "TargetResult",
    "Timing",
    "TransportResult",
    "expand_targets",
    "parse_target",
    "plan",
    "record_results",
    "registered_targets",
    "run_audit",
]
