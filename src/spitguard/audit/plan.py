"""`--dry-run`: what an audit would send, listed without sending anything (no DNS either)."""

from __future__ import annotations

from collections.abc import Sequence

from .http_probe import scheme_for
from .runner import AuditOptions
from .targets import Target, uri_host

__all__ = ["plan"]


def plan(targets: Sequence[Target], options: AuditOptions) -> list[str]:
    """One line per request the audit would send (retransmissions not listed)."""
    lines: list[str] = []
    user = options.user
    for target in targets:
        host = uri_host(target.host)
        port = "" if target.port == 5060 else f":{target.port}"
        ruri = f"sip:{user}@{host}{port}"
        for transport in options.transports:
            where = f"sip/{transport} {target.label}"
            lines.append(f"{where}  OPTIONS {ruri}")
            if options.invite:
                lines.append(
                    f"{where}  INVITE {ruri} (To = From = {user}; CANCEL at the first "
                    "provisional response; ACK and BYE if answered)"
                )
        for web in options.web_ports:
            base = f"{scheme_for(web, options.tls_ports)}://{host}:{web}"
            lines.append(f"{base}  GET /")
            lines.extend(
                f"{base}  GET {path} (only if port {web} answered)" for path in options.config_paths
            )
    return lines
